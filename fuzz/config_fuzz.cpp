// SPDX-License-Identifier: Apache-2.0
// config.toml: the hub's parameters, resources and pilots.
#include <cstddef>
#include <cstdint>
#include <string>

#include "hub/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  sortie::hub::HubConfig config;
  (void)sortie::hub::parse_config(text, "config.toml", config);
  return 0;
}
