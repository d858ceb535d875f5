// SPDX-License-Identifier: Apache-2.0
// Job files (TOML) as given to `sortie submit --file`.
#include <cstddef>
#include <cstdint>
#include <string>

#include "sortie/job_files.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  (void)sortie::parse_job_file(text, "fuzz.toml", "/tmp");
  return 0;
}
