// SPDX-License-Identifier: Apache-2.0
// Framing (01-framing.md): length-prefixed protobuf envelopes, limits and decoding.
#include "protocol/frame.hpp"

#include <algorithm>

#include <cstring>

#include <fmt/format.h>

namespace sortie::protocol {

void encode_header(std::uint32_t size, std::string& out) {
  char h[kHeaderSize] = {static_cast<char>(size >> 24), static_cast<char>(size >> 16),
                         static_cast<char>(size >> 8), static_cast<char>(size)};
  out.append(h, kHeaderSize);
}

void encode_frame(const pb::Envelope& env, std::string& out) {
  std::size_t size = env.ByteSizeLong();
  encode_header(static_cast<std::uint32_t>(size), out);
  std::size_t at = out.size();
  out.resize(at + size);
  env.SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(out.data() + at));
}

FrameDecoder::FrameDecoder(std::uint32_t max_frame) : max_frame_(max_frame) {}

std::span<char> FrameDecoder::prepare(std::size_t min) {
  if (start_ == end_) {
    start_ = end_ = 0;
  } else if (start_ > 0 && (buf_.size() - end_ < min)) {
    // Move the undecoded tail to the front before growing.
    std::memmove(buf_.data(), buf_.data() + start_, end_ - start_);
    end_ -= start_;
    start_ = 0;
  }
  if (buf_.size() - end_ < min)
    buf_.resize(end_ + min);
  return {buf_.data() + end_, buf_.size() - end_};
}

void FrameDecoder::commit(std::size_t n) { end_ += n; }

FrameDecoder::Status FrameDecoder::next(pb::Envelope& out, Error& error) {
  if (failed_) {
    error = make_error(ErrorCode::FailedPrecondition, "the frame decoder already failed");
    return Status::Error;
  }
  if (end_ - start_ < kHeaderSize)
    return Status::NeedMore;
  const auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + start_);
  std::uint32_t size = (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) |
                       (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
  if (size > max_frame_) {
    failed_ = true;
    // Printable bytes are usually someone speaking another protocol to our port, or a login
    // script talking on an ssh session: show what arrived (up to 80 bytes, made printable).
    bool text = std::isprint(p[0]) && std::isprint(p[1]) && std::isprint(p[2]) && std::isprint(p[3]);
    std::string seen;
    if (text) {
      std::size_t n = std::min<std::size_t>(end_ - start_, 80);
      for (std::size_t i = 0; i < n; ++i)
        seen += std::isprint(p[i]) ? static_cast<char>(p[i]) : ' ';
    }
    error = make_error(ErrorCode::InvalidArgument,
                       fmt::format("frame of {} bytes exceeds the limit of {} bytes{}", size,
                                   max_frame_,
                                   text ? fmt::format(" (the peer sent text '{}': not a sortie "
                                                      "peer?)",
                                                      seen)
                                        : std::string()));
    return Status::Error;
  }
  if (end_ - start_ < kHeaderSize + size) {
    // Make sure the whole frame will fit without another round of growth.
    if (buf_.size() - start_ < kHeaderSize + size)
      buf_.reserve(start_ + kHeaderSize + size);
    return Status::NeedMore;
  }
  if (!out.ParseFromArray(buf_.data() + start_ + kHeaderSize, static_cast<int>(size))) {
    failed_ = true;
    error = make_error(ErrorCode::InvalidArgument,
                       fmt::format("frame of {} bytes is not a valid sortie message", size));
    return Status::Error;
  }
  start_ += kHeaderSize + size;
  return Status::Frame;
}

const char* body_name(const pb::Envelope& env) {
  switch (env.body_case()) {
  case pb::Envelope::BODY_NOT_SET:
    return "(empty)";
  default:
    break;
  }
  const auto* field = pb::Envelope::descriptor()->FindFieldByNumber(env.body_case());
  return field ? field->name().c_str() : "(unknown)";
}

} // namespace sortie::protocol
