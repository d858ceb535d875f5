// SPDX-License-Identifier: Apache-2.0
// Small text helpers shared by the CLI, config and protocol code: durations ("90s", "15m", "2h"),
// sizes ("4G"), id lists ("3,7-9"), splitting and trimming.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sortie/job.hpp"
#include "sortie/result.hpp"

namespace sortie {

/// Parses "250ms", "90s", "15m", "2h", "1d" or a bare number of seconds into milliseconds.
Result<std::int64_t> parse_duration_ms(std::string_view text);
/// "1h02m", "15m", "42s", "850ms".
std::string format_duration_ms(std::int64_t ms);
/// Parses "512", "64K", "4G", "1.5T" (binary units; a trailing "B" or "iB" is accepted).
Result<std::uint64_t> parse_size_bytes(std::string_view text);
/// `text` safe to print on a terminal: control characters (escape sequences among them) become
/// \xNN, so a job name or a reason cannot drive the terminal.
std::string printable(std::string_view text);
/// The candidate nearest to `word` in edit distance, if at most `max_distance` away ("" if none).
std::string closest(std::string_view word, const std::vector<std::string>& candidates,
                    std::size_t max_distance);
/// "2,000,000".
std::string with_thousands(std::uint64_t n);
/// "1 job", "3 jobs".
std::string count_of(std::uint64_t n, std::string_view noun);
/// Quotes a word for a POSIX shell: 'it'\''s' (only for the command line ssh hands to the remote
/// shell, and for batch scripts; never for anything run here).
std::string shell_quote(std::string_view word);
/// "1.5 GiB", "300 MiB", "12 KiB", "800 B".
std::string format_size_bytes(std::uint64_t bytes);
/// Parses a decimal integer; the whole text must be a number within [min, max].
Result<std::int64_t> parse_int(std::string_view text, std::int64_t min, std::int64_t max);

std::vector<std::string> split(std::string_view text, char sep);
std::string_view trim(std::string_view text);
std::string join(const std::vector<std::string>& parts, std::string_view sep);

/// Parses "FIRST-LAST", "FIRST-LAST:STEP" or a single index, e.g. "1-1000", "0-99:2".
Result<ArrayRange> parse_array_range(std::string_view text);

/// Formats Unix milliseconds as local "2026-11-23 14:05:07".
std::string format_time_ms(std::int64_t ms);

} // namespace sortie
