// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include "common/mapfile.hpp"

namespace sortie {
namespace {

std::vector<std::pair<std::string, std::string>> pairs(const std::vector<MapEntry>& es) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& e : es)
    out.emplace_back(e.host, e.file);
  return out;
}

TEST(MapFile, ParsesListsOverSeveralLines) {
  auto r = parse_mapfile("# data placement\n"
                         "node-a = [run1/in.dat, run2/in.dat,\n"
                         "          run3/in.dat]   # trailing comment\n"
                         "\n"
                         "node-b=[x]\n"
                         "node-a = [ \"with space.dat\" , 'comma,name.dat', ]\n"
                         "node-c = []\n",
                         "m.txt");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  using P = std::pair<std::string, std::string>;
  EXPECT_EQ(pairs(*r), (std::vector<P>{{"node-a", "run1/in.dat"},
                                       {"node-a", "run2/in.dat"},
                                       {"node-a", "run3/in.dat"},
                                       {"node-b", "x"},
                                       {"node-a", "with space.dat"},
                                       {"node-a", "comma,name.dat"}}));
  EXPECT_EQ((*r)[2].line, 3);
}

TEST(MapFile, OnlyCommasSeparateItems) {
  auto r = parse_mapfile("h=[ a b.dat ,c\n, d ]", "m");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  using P = std::pair<std::string, std::string>;
  EXPECT_EQ(pairs(*r), (std::vector<P>{{"h", "a b.dat"}, {"h", "c"}, {"h", "d"}}));
}

TEST(MapFile, AForgottenBracketIsAnErrorNotAFile) {
  // A forgotten ']' (and '=['): the next host's line must not become files of the first.
  auto r = parse_mapfile("lce001=[ /a, /b\nlce002 /c ]\n", "m");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message,
            "m:2:1: expected ',' or ']' after '/b' in the list of 'lce001' (opened on line 1); a "
            "file's name ends at the end of its line");
  r = parse_mapfile("a=[x,,y]", "m");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "m:1:6: an empty item in the list of files of 'a'");
}

TEST(MapFile, ErrorsNameTheLineAndColumn) {
  struct Case {
    const char* text;
    const char* error;
  };
  for (const auto& c : std::vector<Case>{
           {"a = [x]\nb [y]\n", "m:2:3: expected '=' after the host name 'b'"},
           {"a = x\n", "m:1:5: expected '[' to start the list of files of 'a'"},
           {"a = [x,\n y,\n", "m:1:5: the list of files of 'a' opened on line 1 has no ']'"},
           {"a = [\"x\n", "m:1:6: a quote (\") opened here is not closed"},
           {"= [x]\n", "m:1:1: expected a host name, found '='"},
           {"a = [x] b = [y]\n", "m:1:9: unexpected 'b' after the list of 'a': one host per line"},
           {"a = [x[y]]\n", "m:1:7: unexpected '[' in the list of files of 'a'"},
       }) {
    auto r = parse_mapfile(c.text, "m");
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.error().message, c.error);
  }
}

TEST(MapFile, EmptyFileHasNoEntries) {
  auto r = parse_mapfile("# nothing\n\n", "m");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty());
}

} // namespace
} // namespace sortie
