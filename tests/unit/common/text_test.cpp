// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include "common/text.hpp"

namespace sortie {
namespace {

TEST(Duration, ParsesUnits) {
  EXPECT_EQ(*parse_duration_ms("90s"), 90'000);
  EXPECT_EQ(*parse_duration_ms("15m"), 900'000);
  EXPECT_EQ(*parse_duration_ms("2h"), 7'200'000);
  EXPECT_EQ(*parse_duration_ms("250ms"), 250);
  EXPECT_EQ(*parse_duration_ms("1.5s"), 1500);
  EXPECT_EQ(*parse_duration_ms("7"), 7000);
  EXPECT_EQ(*parse_duration_ms("1d"), 86'400'000);
}

TEST(Duration, RejectsGarbageWithAHint) {
  for (const char* bad : {"", "s", "10x", "-5s", "1h30", "abc"}) {
    auto r = parse_duration_ms(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().message.find("90s"), std::string::npos) << r.error().message;
  }
}

TEST(Duration, Formats) {
  EXPECT_EQ(format_duration_ms(850), "850ms");
  EXPECT_EQ(format_duration_ms(42'000), "42s");
  EXPECT_EQ(format_duration_ms(1500), "1.5s");
  EXPECT_EQ(format_duration_ms(15 * 60'000), "15m");
  EXPECT_EQ(format_duration_ms(62 * 60'000), "1h02m");
}

TEST(Size, ParsesBinaryUnits) {
  EXPECT_EQ(*parse_size_bytes("512"), 512ull << 20); // a bare number is MiB, as in Slurm
  EXPECT_EQ(*parse_size_bytes("512B"), 512u);
  EXPECT_EQ(*parse_size_bytes("2P"), 2ull << 50);
  EXPECT_FALSE(parse_size_bytes("99999999T").ok()); // does not saturate
  EXPECT_FALSE(parse_size_bytes("1e400").ok());
  EXPECT_EQ(*parse_size_bytes("4G"), 4ull << 30);
  EXPECT_EQ(*parse_size_bytes("64KiB"), 64u << 10);
  EXPECT_EQ(*parse_size_bytes("1.5M"), 1536u * 1024);
  EXPECT_FALSE(parse_size_bytes("4Q").ok());
  EXPECT_FALSE(parse_size_bytes("").ok());
}

TEST(Int, ChecksRange) {
  EXPECT_EQ(*parse_int("12", 0, 100), 12);
  EXPECT_FALSE(parse_int("101", 0, 100).ok());
  EXPECT_FALSE(parse_int("1x", 0, 100).ok());
}

} // namespace
} // namespace sortie
