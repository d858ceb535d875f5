// SPDX-License-Identifier: Apache-2.0
// Text helpers: durations, sizes, numbers, shell quoting, escaping for terminals.
#include "common/text.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>

#include <fmt/format.h>

namespace sortie {

Result<std::int64_t> parse_int(std::string_view text, std::int64_t min, std::int64_t max) {
  text = trim(text);
  std::int64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size())
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("'{}' is not a whole number", text));
  if (v < min || v > max)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} is out of range: expected {}..{}", v, min, max));
  return v;
}

Result<std::int64_t> parse_duration_ms(std::string_view text) {
  std::string_view t = trim(text);
  size_t i = 0;
  while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '.'))
    ++i;
  std::string_view number = t.substr(0, i);
  std::string_view unit = t.substr(i);
  double value = 0;
  auto [ptr, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  auto bad = [&] {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("'{}' is not a duration: use a number with a unit, like 250ms, "
                                  "90s, 15m, 2h or 1d",
                                  text));
  };
  if (number.empty() || ec != std::errc() || ptr != number.data() + number.size() || value < 0)
    return bad();
  double scale = 0;
  if (unit.empty() || unit == "s")
    scale = 1000;
  else if (unit == "ms")
    scale = 1;
  else if (unit == "m" || unit == "min")
    scale = 60'000;
  else if (unit == "h")
    scale = 3'600'000;
  else if (unit == "d")
    scale = 86'400'000;
  else
    return bad();
  double ms = value * scale;
  if (ms > 9.0e15)
    return bad();
  return static_cast<std::int64_t>(std::llround(ms));
}

std::string format_duration_ms(std::int64_t ms) {
  if (ms < 0)
    return fmt::format("-{}", format_duration_ms(-ms));
  if (ms < 1000)
    return fmt::format("{}ms", ms);
  std::int64_t s = ms / 1000;
  if (s < 60)
    return ms % 1000 == 0 || s >= 10 ? fmt::format("{}s", s)
                                     : fmt::format("{:.1f}s", static_cast<double>(ms) / 1000);
  std::int64_t m = s / 60;
  if (m < 60)
    return s % 60 ? fmt::format("{}m{:02}s", m, s % 60) : fmt::format("{}m", m);
  std::int64_t h = m / 60;
  if (h < 48)
    return m % 60 ? fmt::format("{}h{:02}m", h, m % 60) : fmt::format("{}h", h);
  return fmt::format("{}d{:02}h", h / 24, h % 24);
}

std::string shell_quote(std::string_view word) {
  if (!word.empty() && word.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                              "0123456789-_./=:,@+%") == std::string_view::npos)
    return std::string(word);
  std::string out = "'";
  for (char c : word) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  out += "'";
  return out;
}

std::string closest(std::string_view word, const std::vector<std::string>& candidates,
                    std::size_t max_distance) {
  std::string best;
  std::size_t best_distance = max_distance + 1;
  std::vector<std::size_t> row, prev;
  for (const auto& c : candidates) {
    // Levenshtein distance, two rows.
    prev.resize(c.size() + 1);
    row.resize(c.size() + 1);
    for (std::size_t j = 0; j <= c.size(); ++j)
      prev[j] = j;
    for (std::size_t i = 1; i <= word.size(); ++i) {
      row[0] = i;
      for (std::size_t j = 1; j <= c.size(); ++j)
        row[j] = std::min({prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (word[i - 1] != c[j - 1])});
      std::swap(row, prev);
    }
    if (prev[c.size()] < best_distance) {
      best_distance = prev[c.size()];
      best = c;
    }
  }
  return best;
}

std::string with_thousands(std::uint64_t n) {
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0)
      out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string count_of(std::uint64_t n, std::string_view noun) {
  return fmt::format("{} {}{}", n, noun, n == 1 ? "" : "s");
}

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f)
      out += fmt::format("\\x{:02x}", u);
    else
      out.push_back(c);
  }
  return out;
}

Result<std::uint64_t> parse_size_bytes(std::string_view text) {
  std::string_view t = trim(text);
  size_t i = 0;
  while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '.'))
    ++i;
  std::string_view number = t.substr(0, i);
  std::string unit(trim(t.substr(i)));
  for (auto& c : unit)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() >= 2 && unit.ends_with("IB"))
    unit.resize(unit.size() - 2);
  else if (unit.size() >= 2 && unit.back() == 'B')
    unit.pop_back();
  double value = 0;
  auto [ptr, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  auto bad = [&] {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("'{}' is not a size: use a number with a unit B, K, M, G, T or P "
                                  "(binary), like 512M or 4G; a bare number means MiB",
                                  text));
  };
  if (number.empty() || ec != std::errc() || ptr != number.data() + number.size() || value < 0)
    return bad();
  double scale = 1;
  if (unit.empty()) // as in Slurm: --mem=100 is 100 MiB
    scale = 1024.0 * 1024;
  else if (unit == "B")
    scale = 1;
  else if (unit == "K")
    scale = 1024.0;
  else if (unit == "M")
    scale = 1024.0 * 1024;
  else if (unit == "G")
    scale = 1024.0 * 1024 * 1024;
  else if (unit == "T")
    scale = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "P")
    scale = 1024.0 * 1024 * 1024 * 1024 * 1024;
  else
    return bad();
  double bytes = value * scale;
  if (!(bytes < 9.0e18)) // llround would saturate
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("'{}' is too large a size (at most 8E)", text));
  return static_cast<std::uint64_t>(std::llround(bytes));
}

std::string format_size_bytes(std::uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  if (u == 0)
    return fmt::format("{} B", bytes);
  return v < 10 ? fmt::format("{:.1f} {}", v, units[u]) : fmt::format("{:.0f} {}", v, units[u]);
}

std::vector<std::string> split(std::string_view text, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t pos = text.find(sep, start);
    out.emplace_back(text.substr(start, pos == std::string_view::npos ? text.npos : pos - start));
    if (pos == std::string_view::npos)
      break;
    start = pos + 1;
  }
  return out;
}

std::string_view trim(std::string_view text) {
  const char* ws = " \t\r\n";
  size_t b = text.find_first_not_of(ws);
  if (b == std::string_view::npos)
    return {};
  size_t e = text.find_last_not_of(ws);
  return text.substr(b, e - b + 1);
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i)
      out += sep;
    out += parts[i];
  }
  return out;
}

Result<ArrayRange> parse_array_range(std::string_view text) {
  auto bad = [&] {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("'{}' is not an array range: use FIRST-LAST or FIRST-LAST:STEP, "
                                  "e.g. 1-1000 or 0-99:2",
                                  text));
  };
  ArrayRange r;
  std::string_view body = trim(text);
  if (auto colon = body.find(':'); colon != std::string_view::npos) {
    auto step = parse_int(body.substr(colon + 1), 1, INT64_MAX);
    if (!step.ok())
      return bad();
    r.step = *step;
    body = body.substr(0, colon);
  }
  auto dash = body.find('-', 1);
  if (dash == std::string_view::npos) {
    auto one = parse_int(body, INT64_MIN, INT64_MAX);
    if (!one.ok())
      return bad();
    r.first = r.last = *one;
    return r;
  }
  auto a = parse_int(body.substr(0, dash), INT64_MIN, INT64_MAX);
  auto b = parse_int(body.substr(dash + 1), INT64_MIN, INT64_MAX);
  if (!a.ok() || !b.ok() || *b < *a)
    return bad();
  r.first = *a;
  r.last = *b;
  return r;
}

std::string format_time_ms(std::int64_t ms) {
  if (ms <= 0)
    return "-";
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

} // namespace sortie
