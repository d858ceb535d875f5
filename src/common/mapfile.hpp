// SPDX-License-Identifier: Apache-2.0
// Map files: where data files live, one entry per host, for `sortie map --mapfile`:
//
//   # comments run to the end of the line
//   node-a = [run1/in.dat, run2/in.dat,
//             "name with spaces.dat"]
//   node-b=[run3/in.dat]
//
// Items are separated by commas only (a list may go on over several lines, after a comma); an
// unquoted name runs to the next ',' or ']' or the end of its line, inner spaces included,
// surrounding ones trimmed. Quote an item with "..." or '...' to put commas, brackets or a
// '#' in it. A host may appear more than once.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "sortie/result.hpp"

namespace sortie {

struct MapEntry {
  std::string host;
  std::string file;
  int line = 0; ///< where the file name starts
};

/// Parses a map file's text; `name` is used in errors ("map.txt:3:7: ...").
Result<std::vector<MapEntry>> parse_mapfile(std::string_view text, const std::string& name);

} // namespace sortie
