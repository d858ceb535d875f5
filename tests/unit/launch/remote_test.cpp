// SPDX-License-Identifier: Apache-2.0
// The pure parts of remote pilots: ssh destinations, machinefiles, the ssh command line, batch
// scripts and what squeue/qstat print. The real ssh, Slurm and Grid Engine runs are in
// tests/integration/test_resources.py.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fakes/temp_dir.hpp"

#include "launch/process.hpp"
#include "common/text.hpp"
#include "launch/remote.hpp"

namespace sortie::launch {
namespace {

TEST(Remote, SshTargets) {
  auto t = parse_ssh_target("alice@login.example.org:2222");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->user, "alice");
  EXPECT_EQ(t->host, "login.example.org");
  EXPECT_EQ(t->port, 2222);
  EXPECT_EQ(t->destination(), "alice@login.example.org");
  EXPECT_EQ(t->jump(), "alice@login.example.org:2222");
  auto list = parse_ssh_targets("a, b:22 ,c");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 3u);
  EXPECT_EQ((*list)[1].port, 22);
  EXPECT_FALSE(parse_ssh_target("-oProxyCommand=evil").ok()); // never an ssh option
  EXPECT_FALSE(parse_ssh_target("host;rm -rf /").ok());
  EXPECT_FALSE(parse_ssh_target("host:0").ok());
  EXPECT_FALSE(parse_ssh_targets(" , ").ok());
}

TEST(Remote, MachineFiles) {
  auto m = parse_machinefile("# nodes\nnode-a:4\nnode-b slots=8\n\nbob@node-c\n", "hosts");
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  ASSERT_EQ(m->size(), 3u);
  EXPECT_EQ((*m)[0].target.host, "node-a");
  EXPECT_EQ((*m)[0].slots, 4u);
  EXPECT_EQ((*m)[1].slots, 8u);
  EXPECT_EQ((*m)[2].target.user, "bob");
  EXPECT_EQ((*m)[2].slots, 0u);
  auto bad = parse_machinefile("node-a:4\nnode-b cores=2\n", "hosts");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("hosts:2:"), std::string::npos) << bad.error().message;
  EXPECT_FALSE(parse_machinefile("node:0\n", "hosts").ok());
  EXPECT_FALSE(parse_machinefile("# empty\n", "hosts").ok());
}

TEST(Remote, SshCommandQuotesEveryWordForTheRemoteShell) {
  SshTarget target{"", "compute", 0};
  std::vector<SshTarget> jumps = {{"u", "gw1", 2222}, {"", "gw2", 0}};
  auto argv = ssh_argv(target, jumps, {"-oIdentityFile=/k"},
                       {"/opt/sortie/bin/sortie", "agent", "--label", "it's $(bad)"});
  std::vector<std::string> want = {"ssh", "-T", "-o", "BatchMode=yes", "-o",
                                   "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-J",
                                   "u@gw1:2222,gw2", "-oIdentityFile=/k", "--", "compute",
                                   "/opt/sortie/bin/sortie agent --label 'it'\\''s $(bad)'"};
  EXPECT_EQ(argv, want);
}

TEST(Remote, ShellQuote) {
  EXPECT_EQ(shell_quote("plain-word_1.2"), "plain-word_1.2");
  EXPECT_EQ(shell_quote(""), "''");
  EXPECT_EQ(shell_quote("a b"), "'a b'");
  EXPECT_EQ(shell_quote("x'y"), "'x'\\''y'");
  EXPECT_EQ(shell_quote("$HOME;`id`"), "'$HOME;`id`'");
}

TEST(Remote, SlurmScript) {
  BatchJob job;
  job.name = "sortie-pilot-3";
  job.nodes = 2;
  job.slots_per_node = 4;
  job.walltime_ms = 90 * 60 * 1000 + 1;
  job.queue = "debug";
  job.output = "/tmp/p/pilot-3-%j.out";
  job.agent_argv = {"/usr/bin/sortie", "agent", "--profile-dir", "/home/a b/.sortie/default"};
  std::string s = slurm_script(job);
  EXPECT_NE(s.find("#SBATCH --nodes=2\n"), std::string::npos) << s;
  EXPECT_NE(s.find("#SBATCH --cpus-per-task=4\n"), std::string::npos);
  EXPECT_NE(s.find("#SBATCH --time=1:30:01\n"), std::string::npos);
  EXPECT_NE(s.find("#SBATCH --partition=debug\n"), std::string::npos);
  EXPECT_NE(s.find("exec srun --ntasks-per-node=1 --kill-on-bad-exit=0 /usr/bin/sortie agent "
                   "--profile-dir '/home/a b/.sortie/default'\n"),
            std::string::npos)
      << s;
  EXPECT_EQ(s.find("--output"), std::string::npos); // any path is safe as an argument
  EXPECT_EQ(sbatch_argv({"--qos=high"}, "", "/tmp/a b/p-%j.out"),
            (std::vector<std::string>{"sbatch", "--parsable", "--output=/tmp/a b/p-%j.out",
                                      "--qos=high"}));
  EXPECT_EQ(qsub_argv({}, "", "/tmp/o"), (std::vector<std::string>{"qsub", "-terse", "-o", "/tmp/o"}));
}

TEST(Remote, SgeScript) {
  BatchJob job;
  job.name = "sortie-pilot-4";
  job.nodes = 1;
  job.slots_per_node = 2;
  job.walltime_ms = 60'000;
  job.queue = "all.q";
  job.agent_argv = {"/usr/bin/sortie", "agent"};
  std::string s = sge_script(job, "smp");
  EXPECT_NE(s.find("#$ -pe smp 2\n"), std::string::npos) << s;
  EXPECT_NE(s.find("#$ -l h_rt=0:01:00\n"), std::string::npos);
  EXPECT_NE(s.find("#$ -q all.q\n"), std::string::npos);
  EXPECT_NE(s.find("exec /usr/bin/sortie agent\n"), std::string::npos);
  job.nodes = 3;
  s = sge_script(job, "mpi");
  EXPECT_NE(s.find("#$ -pe mpi 6\n"), std::string::npos);
  EXPECT_NE(s.find("qrsh -inherit -nostdin \"$host\" /usr/bin/sortie agent &"), std::string::npos)
      << s;
}

// Grid Engine's qrsh -inherit runs its words through a shell on the other host. Here a stand-in
// qrsh does the same (`sh -c "$*"`) on this host, since the test bed has one Grid Engine host; the
// script's own shell and that second shell must both give back each word exactly.
TEST(Remote, SgeScriptQuotesTheAgentsWordsForBothShells) {
  testing::TempDir dir;
  auto bin = dir.path() / "bin";
  std::filesystem::create_directories(bin);
  {
    std::ofstream q(bin / "qrsh");
    q << "#!/bin/sh\n# qrsh -inherit -nostdin HOST WORDS...\nshift 3\nexec sh -c \"$*\"\n";
  }
  std::filesystem::permissions(bin / "qrsh", std::filesystem::perms::owner_all);
  {
    std::ofstream h(dir.path() / "hosts");
    h << "other-host 1 all.q@other-host UNDEFINED\n";
  }
  BatchJob job;
  job.name = "sortie-pilot-9";
  job.nodes = 2;
  job.slots_per_node = 1;
  std::vector<std::string> words = {"it's $(touch pwned) `touch pwned2`", "a  b", "semi;colon",
                                    "\"dq\" \\ $HOME", "*"};
  job.agent_argv = {"printf", "[%s]\n"};
  job.agent_argv.insert(job.agent_argv.end(), words.begin(), words.end());
  {
    std::ofstream f(dir.path() / "pilot.sh");
    f << sge_script(job, "smp");
  }
  auto child = spawn_piped({"env", "PATH=" + bin.string() + ":/usr/bin:/bin",
                            "PE_HOSTFILE=" + (dir.path() / "hosts").string(), "sh", "-c",
                            "cd \"$0\" && exec sh pilot.sh", dir.path().string()},
                           false);
  ASSERT_TRUE(child.ok()) << child.error().to_string();
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(child->stdout_fd, buf, sizeof buf)) > 0)
    out.append(buf, static_cast<std::size_t>(n));
  ::close(child->stdout_fd);
  if (child->stderr_fd >= 0)
    ::close(child->stderr_fd);
  int status = 0;
  ::waitpid(child->pid, &status, 0);
  std::string once;
  for (const auto& w : words)
    once += "[" + w + "]\n";
  EXPECT_EQ(out, once + once) << "the agent on the other host and this one each print the words";
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "pwned"));
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "pwned2"));
}

TEST(Remote, BatchIdsAndStates) {
  EXPECT_EQ(*parse_sbatch_id("1234\n"), "1234");
  EXPECT_EQ(*parse_sbatch_id("sbatch: warning: something\n77;cluster\n"), "77");
  EXPECT_FALSE(parse_sbatch_id("Submitted batch job 5\n").ok());
  EXPECT_EQ(*parse_qsub_id("88\n"), "88");
  EXPECT_EQ(*parse_qsub_id("89.1-10:1\n"), "89");

  std::string reason;
  EXPECT_EQ(parse_squeue("PENDING|Resources\n", reason), BatchState::Pending);
  EXPECT_EQ(reason, "Resources");
  EXPECT_EQ(parse_squeue("RUNNING|None\n", reason), BatchState::Running);
  EXPECT_EQ(reason, "");
  EXPECT_EQ(parse_squeue("", reason), BatchState::Gone);
  EXPECT_EQ(parse_squeue("TIMEOUT|None", reason), BatchState::Gone);
  EXPECT_EQ(reason, "TIMEOUT");

  const char* qstat =
      "job-ID  prior   name       user         state submit/start at     queue    slots ja-task-ID\n"
      "-----------------------------------------------------------------------------------------\n"
      "     12 0.55500 sortie-pil root         r     11/23/2026 10:00:00 all.q@vm     2\n"
      "     13 0.00000 sortie-pil root         qw    11/23/2026 10:00:01              2\n";
  EXPECT_EQ(parse_qstat(qstat, "12", reason), BatchState::Running);
  EXPECT_EQ(parse_qstat(qstat, "13", reason), BatchState::Pending);
  EXPECT_EQ(parse_qstat(qstat, "14", reason), BatchState::Gone);
  EXPECT_EQ(hms(0), "0:00:00");
  EXPECT_EQ(hms(3'600'000), "1:00:00");
}

} // namespace
} // namespace sortie::launch
