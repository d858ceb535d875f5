// SPDX-License-Identifier: Apache-2.0
// Map files (`host=[a, b]`) as a user might write them, or mistype them.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/mapfile.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto entries = sortie::parse_mapfile(text, "fuzz.map");
  if (entries.ok())
    for (const auto& e : *entries)
      if (e.host.empty())
        __builtin_trap(); // an entry without a host must have been an error
  return 0;
}
