// SPDX-License-Identifier: Apache-2.0
// Reading TOML values safely. toml++'s value<std::int64_t>() converts a float to an integer,
// which is undefined behaviour when the float is out of range (found by fuzz/jobfile): integers
// are read only from integer nodes.
#pragma once

#include <cstdint>
#include <optional>

namespace sortie {

/// The node's value if it is a TOML integer (not a float, a string or anything else).
template <typename Node>
std::optional<std::int64_t> toml_integer(const Node& node) {
  if (const auto* i = node.as_integer())
    return i->get();
  return std::nullopt;
}

} // namespace sortie
