// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include "sortie/job_files.hpp"

namespace sortie {
namespace {

TEST(JobFile, OneJobAtTheTopLevel) {
  auto r = parse_job_file(R"(
command = ["python3", "sim.py", "--seed", "7"]
slots = 4
memory = "4G"
gpus = 1
label = "gpu"
hosts = "a, b"
prefer_hosts = ["c"]
max_per_node = 2
priority = 5
queue_timeout = "15m"
run_timeout = "2h"
time_request = "1h"
retries = 2
retry_on_failure = true
after = [3, 4]
env = { OMP_PROC_BIND = "true" }
cwd = "data"
array = "1-10:3"
)",
                          "job.toml", "/base");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  ASSERT_EQ(r->jobs.size(), 1u);
  const auto& j = r->jobs[0];
  EXPECT_EQ(j.spec.argv, (std::vector<std::string>{"python3", "sim.py", "--seed", "7"}));
  EXPECT_EQ(j.spec.slots, 4u);
  EXPECT_EQ(j.spec.memory_bytes, 4ull << 30);
  EXPECT_EQ(j.spec.gpus, 1u);
  EXPECT_EQ(j.spec.hosts, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(j.spec.prefer_hosts, (std::vector<std::string>{"c"}));
  EXPECT_EQ(j.spec.max_per_node, 2u);
  EXPECT_EQ(j.spec.priority, 5);
  EXPECT_EQ(j.spec.queue_timeout_ms, 15 * 60'000);
  EXPECT_EQ(j.spec.run_timeout_ms, 2 * 3'600'000);
  EXPECT_EQ(j.spec.time_request_ms, 3'600'000);
  EXPECT_EQ(j.spec.retries, 2u);
  EXPECT_TRUE(j.spec.retry_on_failure);
  EXPECT_EQ(j.spec.after, (std::vector<JobId>{JobId(3), JobId(4)}));
  EXPECT_EQ(j.spec.cwd, "/base/data");
  ASSERT_TRUE(j.array);
  EXPECT_EQ(j.array->count(), 4u);
}

TEST(JobFile, JobTablesOverrideTheTopLevel) {
  auto r = parse_job_file(R"(
group = "sims"
command = ["run"]
slots = 2
[[job]]
name = "a"
[[job]]
name = "b"
slots = 8
command = ["other"]
)",
                          "j", "/");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->group, "sims");
  ASSERT_EQ(r->jobs.size(), 2u);
  EXPECT_EQ(r->jobs[0].spec.slots, 2u);
  EXPECT_EQ(r->jobs[0].spec.argv, std::vector<std::string>{"run"});
  EXPECT_EQ(r->jobs[1].spec.slots, 8u);
  EXPECT_EQ(r->jobs[1].spec.argv, std::vector<std::string>{"other"});
}

TEST(JobFile, ErrorsNameTheLineAndKey) {
  struct Case {
    const char* text;
    const char* error;
  };
  for (const auto& c : std::vector<Case>{
           {"command = [\"x\"]\nslots = \"two\"\n", "j:2:9: slots: must be a whole number in 1..4096"},
           {"command = [\"x\"]\n\ncolour = 1\n", "j:3:10: colour: unknown key"},
           {"command = \"x y\"\n", "j:1:11: command: must be an array of strings"},
           {"command = [\"x\"]\nrun_timeout = \"soon\"\n", "j:2:15: run_timeout: 'soon' is not a duration"},
           {"slots = 1\n", "j: no command"},
           {"command = [\"x\"\n", "j:1:16: Error while parsing array"},
           {"command = [\"x\"]\n[[job]]\nafter = [0]\n", "j:3:10: after: job ids are whole numbers from 1"},
       }) {
    auto r = parse_job_file(c.text, "j", "/");
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.error().message.rfind(c.error, 0), 0u) << r.error().message;
  }
}

} // namespace
} // namespace sortie
