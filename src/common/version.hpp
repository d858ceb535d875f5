// SPDX-License-Identifier: Apache-2.0
#pragma once

namespace sortie {
inline constexpr const char* kSortieVersion = "0.1.0";
} // namespace sortie
