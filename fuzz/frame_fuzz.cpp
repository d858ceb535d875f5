// SPDX-License-Identifier: Apache-2.0
// Frames from an untrusted peer: the decoder before authentication (4 KiB frames) and after
// (the hub's limit), fed in pieces of every size. Anything may come out but a crash, a hang or
// an unbounded buffer; after an error the decoder stays failed.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "protocol/frame.hpp"
#include "sortie/result.hpp"

using sortie::protocol::FrameDecoder;

namespace {

void feed(const std::uint8_t* data, std::size_t size, std::uint32_t max_frame, std::size_t piece) {
  FrameDecoder decoder(max_frame);
  sortie::pb::Envelope env;
  sortie::Error error;
  std::size_t at = 0;
  while (true) {
    auto status = decoder.next(env, error);
    if (status == FrameDecoder::Status::Error)
      return;
    if (status == FrameDecoder::Status::Frame) {
      (void)sortie::protocol::body_name(env);
      if (env.ByteSizeLong() > max_frame + 64u)
        __builtin_trap(); // a frame over the limit got through
      continue;
    }
    if (at == size)
      return;
    auto span = decoder.prepare(1);
    std::size_t n = std::min({piece, span.size(), size - at});
    std::memcpy(span.data(), data + at, n);
    decoder.commit(n);
    at += n;
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0)
    return 0;
  std::size_t piece = 1 + data[0] % 64; // the first byte picks how the bytes arrive
  feed(data + 1, size - 1, sortie::protocol::kMaxFrameBeforeAuth, piece);
  feed(data + 1, size - 1, 1u << 20, size);
  return 0;
}
