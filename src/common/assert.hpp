// SPDX-License-Identifier: Apache-2.0
// Invariant checks (STYLE.md §4). SORTIE_ASSERT documents an invariant and is compiled only with
// SORTIE_ENABLE_ASSERTS; SORTIE_CHECK is always on and guards what would corrupt state. Both abort
// with the file, line and condition: the hub restarts from its store, so a crash is cheap.
#pragma once

namespace sortie::detail {
[[noreturn]] void check_failed(const char* file, int line, const char* condition, const char* why);
} // namespace sortie::detail

#define SORTIE_CHECK(cond, why)                                                                    \
  do {                                                                                             \
    if (!(cond)) [[unlikely]]                                                                      \
      ::sortie::detail::check_failed(__FILE__, __LINE__, #cond, why);                              \
  } while (0)

#ifdef SORTIE_ENABLE_ASSERTS
#define SORTIE_ASSERT(cond, why) SORTIE_CHECK(cond, why)
#else
#define SORTIE_ASSERT(cond, why)                                                                   \
  do {                                                                                             \
  } while (0)
#endif
