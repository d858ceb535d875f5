// SPDX-License-Identifier: Apache-2.0
// The few functions of the hub's data: names of pilot states and memory-limit kinds, label
// checks, GPU masks.
#include "hub/state.hpp"

#include <cctype>

namespace sortie::hub {
namespace {

constexpr const char* kPilotStates[] = {"submitting", "pending", "running",  "draining",
                                        "ended",      "failed",  "cancelled"};
constexpr const char* kLimitNames[] = {"", "cgroup v2", "cgroup v1", "rlimit"};

} // namespace

const char* pilot_state_name(PilotState s) { return kPilotStates[static_cast<int>(s)]; }

PilotState parse_pilot_state(std::string_view s) {
  for (int i = 0; i < 7; ++i)
    if (s == kPilotStates[i])
      return static_cast<PilotState>(i);
  return PilotState::Failed;
}

bool valid_label(const std::string& s) {
  if (s.size() > 64)
    return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
      return false;
  return true;
}

bool valid_node_name(const std::string& s) { return !s.empty() && valid_label(s); }

const char* limits_name(std::uint8_t code) { return code < 4 ? kLimitNames[code] : ""; }

std::uint8_t limits_code(const std::string& name) {
  for (std::uint8_t i = 1; i < 4; ++i)
    if (name == kLimitNames[i])
      return i;
  return 0;
}

std::uint64_t gpu_mask_of(const std::vector<std::uint32_t>& gpus) {
  std::uint64_t m = 0;
  for (auto g : gpus)
    if (g < 64)
      m |= 1ULL << g;
  return m;
}

std::vector<std::uint32_t> gpus_of(std::uint64_t mask) {
  std::vector<std::uint32_t> out;
  for (std::uint32_t g = 0; g < 64; ++g)
    if (mask & (1ULL << g))
      out.push_back(g);
  return out;
}

bool HubState::any_live_pilot() const {
  for (const auto& [id, p] : pilots)
    if (!is_over(p.state))
      return true;
  return false;
}

} // namespace sortie::hub
