// SPDX-License-Identifier: Apache-2.0
// Map files in the LOFAR format (`host=[file, file]`): parsed with errors at file:line:col.
#include "common/mapfile.hpp"

#include <cctype>

#include <fmt/format.h>

namespace sortie {
namespace {

bool host_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
}

class Parser {
public:
  Parser(std::string_view text, const std::string& name) : t_(text), name_(name) {}

  Result<std::vector<MapEntry>> run() {
    std::vector<MapEntry> out;
    while (true) {
      skip_space();
      if (at_end())
        return out;
      int host_line = line_, host_col = col();
      std::string host;
      while (!at_end() && host_char(peek()))
        host.push_back(next());
      if (host.empty())
        return error(fmt::format("expected a host name, found '{}'", show(peek())), host_line,
                     host_col);
      skip_blanks();
      if (at_end() || peek() != '=')
        return error(fmt::format("expected '=' after the host name '{}'", host));
      next();
      skip_blanks();
      if (at_end() || peek() != '[')
        return error(fmt::format("expected '[' to start the list of files of '{}'", host));
      int open_line = line_, open_col = col();
      next();
      // Items are separated by commas only: a name may hold spaces, and an item followed by
      // anything but ',' or ']' (a forgotten ']' before the next host's line) is an error.
      std::string last_item;
      bool need_separator = false;
      while (true) {
        skip_space();
        if (at_end())
          return error(fmt::format("the list of files of '{}' opened on line {} has no ']'", host,
                                   open_line),
                       open_line, open_col);
        if (peek() == ']') {
          next();
          break;
        }
        if (peek() == ',') {
          if (!need_separator)
            return error(fmt::format("an empty item in the list of files of '{}'", host));
          next();
          need_separator = false;
          continue;
        }
        if (need_separator)
          return error(fmt::format("expected ',' or ']' after '{}' in the list of '{}' (opened on "
                                   "line {}); a file's name ends at the end of its line",
                                   last_item, host, open_line));
        int item_line = line_, item_col = col();
        std::string file;
        if (peek() == '"' || peek() == '\'') {
          char quote = next();
          while (!at_end() && peek() != quote)
            file.push_back(next());
          if (at_end())
            return error(fmt::format("a quote ({}) opened here is not closed", quote), item_line,
                         item_col);
          next();
        } else {
          while (!at_end() && peek() != '\n' && peek() != ',' && peek() != ']' && peek() != '#') {
            if (peek() == '"' || peek() == '\'')
              return error("a quote in the middle of a file name: quote the whole name");
            if (peek() == '[')
              return error(fmt::format("unexpected '[' in the list of files of '{}'", host));
            file.push_back(next());
          }
          while (!file.empty() && (file.back() == ' ' || file.back() == '\t' || file.back() == '\r'))
            file.pop_back();
        }
        if (file.empty())
          return error("an empty file name", item_line, item_col);
        last_item = file;
        out.push_back({host, std::move(file), item_line});
        need_separator = true;
      }
      // After the list, only the end of the line (or a comment) may follow.
      skip_blanks();
      if (!at_end() && peek() != '\n' && peek() != '#')
        return error(fmt::format("unexpected '{}' after the list of '{}': one host per line",
                                 show(peek()), host));
    }
  }

private:
  bool at_end() const { return pos_ >= t_.size(); }
  char peek() const { return t_[pos_]; }
  char next() {
    char c = t_[pos_++];
    if (c == '\n') {
      ++line_;
      line_start_ = pos_;
    }
    return c;
  }
  int col() const { return static_cast<int>(pos_ - line_start_) + 1; }
  static std::string show(char c) { return c == '\n' ? "end of line" : std::string(1, c); }

  /// Spaces and tabs only.
  void skip_blanks() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\r'))
      next();
  }
  /// All white space and comments (and commas inside lists).
  void skip_space(bool commas = false) {
    while (!at_end()) {
      char c = peek();
      if (std::isspace(static_cast<unsigned char>(c)) || (commas && c == ',')) {
        next();
      } else if (c == '#') {
        while (!at_end() && peek() != '\n')
          next();
      } else {
        break;
      }
    }
  }

  Error error(const std::string& what) const { return error(what, line_, col()); }
  Error error(const std::string& what, int line, int column) const {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{}:{}:{}: {}", name_, line, column, what));
  }

  std::string_view t_;
  std::string name_;
  std::size_t pos_ = 0;
  std::size_t line_start_ = 0;
  int line_ = 1;
};

} // namespace

Result<std::vector<MapEntry>> parse_mapfile(std::string_view text, const std::string& name) {
  return Parser(text, name).run();
}

} // namespace sortie
