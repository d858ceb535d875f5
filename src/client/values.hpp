// SPDX-License-Identifier: Apache-2.0
// Internal to the client library: how task values travel (docs/protocol/05-tasks.md §5.5).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sortie {

// Values over kInlineValue travel in pieces of kValueChunk, at most kValueWindow bytes
// unacknowledged from an engine; none over kMaxValueBytes.
inline constexpr std::size_t kInlineValue = 4u << 20;
inline constexpr std::size_t kValueChunk = 1u << 20;
inline constexpr std::uint64_t kValueWindow = 4u << 20;
inline constexpr std::size_t kMaxValueBytes = std::size_t{4} << 30;

} // namespace sortie
