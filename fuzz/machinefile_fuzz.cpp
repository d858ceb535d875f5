// SPDX-License-Identifier: Apache-2.0
// Machinefiles (`host:N`, `host slots=N`) for ssh pilots.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "launch/remote.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto hosts = sortie::launch::parse_machinefile(text, "machines");
  if (hosts.ok())
    for (const auto& h : *hosts)
      if (h.target.host.empty())
        __builtin_trap(); // a line without a host must have been an error
  return 0;
}
