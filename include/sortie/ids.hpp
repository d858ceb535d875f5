// SPDX-License-Identifier: Apache-2.0
// Strong identifier types: a JobId is never confused with an AgentId or a plain integer.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <string>

namespace sortie {

template <typename Tag>
struct StrongId {
  std::uint64_t value = 0;

  constexpr StrongId() = default;
  constexpr explicit StrongId(std::uint64_t v) : value(v) {}
  constexpr bool valid() const { return value != 0; }
  constexpr auto operator<=>(const StrongId&) const = default;
  std::string to_string() const { return std::to_string(value); }
};

using JobId = StrongId<struct JobIdTag>;
using AgentId = StrongId<struct AgentIdTag>;
using PilotId = StrongId<struct PilotIdTag>;
using GroupId = StrongId<struct GroupIdTag>;

} // namespace sortie

template <typename Tag>
struct std::hash<sortie::StrongId<Tag>> {
  std::size_t operator()(const sortie::StrongId<Tag>& id) const noexcept {
    return std::hash<std::uint64_t>{}(id.value);
  }
};
