// SPDX-License-Identifier: Apache-2.0
// Length-prefixed framing (docs/protocol/01-framing.md): each frame is a 4-byte big-endian
// length followed by that many bytes of one serialized pb::Envelope. The decoder is pure (no
// I/O) so it can be unit-tested and fuzzed; links feed it whatever bytes arrive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "protocol/sortie.pb.h"
#include "sortie/result.hpp"

namespace sortie::protocol {

inline constexpr std::uint32_t kProtocolVersion = 1;
inline constexpr std::size_t kHeaderSize = 4;
/// Until the handshake is done a peer may send only small frames (Hello, Auth).
inline constexpr std::uint32_t kMaxFrameBeforeAuth = 4096;
/// The default limit after the handshake. Senders split larger batches.
inline constexpr std::uint32_t kDefaultMaxFrame = 64u << 20;

/// Appends one frame holding `env` to `out`.
void encode_frame(const pb::Envelope& env, std::string& out);
/// Appends a frame header for a payload of `size` bytes.
void encode_header(std::uint32_t size, std::string& out);

class FrameDecoder {
public:
  explicit FrameDecoder(std::uint32_t max_frame = kMaxFrameBeforeAuth);

  void set_max_frame(std::uint32_t max_frame) { max_frame_ = max_frame; }
  std::uint32_t max_frame() const { return max_frame_; }

  /// Memory to read the next bytes into: at least `min` bytes. Valid until the next call.
  std::span<char> prepare(std::size_t min = 64 * 1024);
  /// Marks `n` bytes of the span from prepare() as filled.
  void commit(std::size_t n);

  enum class Status { Frame, NeedMore, Error };
  /// Decodes the next complete frame into `out`. On Error, `error` says what was wrong; the
  /// decoder is then unusable and the link must be closed.
  Status next(pb::Envelope& out, Error& error);

  /// Bytes received but not yet decoded.
  std::size_t buffered() const { return end_ - start_; }

private:
  std::vector<char> buf_;
  std::size_t start_ = 0;
  std::size_t end_ = 0;
  std::uint32_t max_frame_;
  bool failed_ = false;
};

/// Names an Envelope's body for logs and errors, e.g. "submit".
const char* body_name(const pb::Envelope& env);

} // namespace sortie::protocol
