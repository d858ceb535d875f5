// SPDX-License-Identifier: Apache-2.0
// The hub's state machine: jobs, submissions, scheduling turns, agents, waiters, output and
// pilots (to be split into rooms, issue 10).
#include "hub/hub.hpp"
#include "protocol/auth.hpp"

#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <unordered_set>

#include <fmt/format.h>

#include "common/assert.hpp"
#include "common/log.hpp"
#include "common/files.hpp"
#include "common/text.hpp"
#include "common/version.hpp"
#include "protocol/link.hpp"

namespace sortie::hub {

bool valid_label(const std::string& s) {
  if (s.size() > 64)
    return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
      return false;
  return true;
}

bool valid_node_name(const std::string& s) { return !s.empty() && valid_label(s); }

namespace {

constexpr std::size_t kScheduleStep = 4096;     // assignments per loop turn
constexpr std::size_t kListChunk = 5000;        // jobs per JobList frame
constexpr std::size_t kLogsChunk = 1u << 20;    // bytes per output read
constexpr std::size_t kFollowerWindow = 4u << 20; // output queued for one follower at most
constexpr std::uint64_t kMaxJobsPerSubmit = 10'000'000;
// The exported environment of one submission (--export=ALL is typically a few KiB).
constexpr std::size_t kMaxExportedEnvBytes = 1u << 20;
// Ids reserved past the next one each time the reservation runs out (one file write).
constexpr std::uint64_t kIdReservation = 100'000;
constexpr std::int64_t kReconnectMarginMs = 5'000;
// A stopping hub waits this long past kill_grace for its agents to end their jobs and leave.
constexpr std::int64_t kShutdownMarginMs = 10'000;
// A failed output write (a full disk) is tried again this often, for output_retry (a minute by
// default), with its agent's credit held meanwhile; then its bytes are lost and the job says so.
constexpr std::int64_t kOutputRetryMs = 1'000;
constexpr std::int64_t kMaxDurationMs = 10LL * 366 * 24 * 3600 * 1000; // 10 years
constexpr std::uint64_t kMaxMemoryBytes = 1ULL << 50;                   // 1 PiB
// With launch_queue = auto, an agent holds about this much queued work per slot: enough to
// cover the hub's round trip (agent batching, group commit, network) for very short jobs, and
// one job at most for long ones, so queued work rarely waits on a busy node.
constexpr double kLaunchBufferMs = 50;
constexpr std::uint32_t kMaxLaunchRounds = 16;

bool is_final(JobState s) { return is_terminal(s); }

/// The keeper process `pid` still runs (not a zombie, and still a keeper: pids are reused).
bool keeper_running(int pid) {
  if (pid <= 0)
    return false;
  std::string stat;
  if (auto text = read_file(fmt::format("/proc/{}/stat", pid)); text.ok())
    stat = *text;
  auto open = stat.find('('), close = stat.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close + 2 >= stat.size())
    return false;
  char state = stat[close + 2];
  return stat.substr(open + 1, close - open - 1) == "sortie-keeper" && state != 'Z' &&
         state != 'X';
}


std::string signal_name(int sig) {
  const char* n = sigabbrev_np(sig);
  return n ? fmt::format("SIG{}", n) : fmt::format("signal {}", sig);
}

pb::JobState to_pb(JobState s) { return static_cast<pb::JobState>(s); }

// How an agent enforced a job's memory; stored as text, kept as a code per job.
constexpr const char* kLimitNames[] = {"", "cgroup v2", "cgroup v1", "rlimit"};

std::uint8_t limits_code(const std::string& name) {
  for (std::uint8_t i = 1; i < 4; ++i)
    if (name == kLimitNames[i])
      return i;
  return 0;
}

std::uint64_t gpu_mask_of(const std::vector<std::uint32_t>& gpus) {
  std::uint64_t m = 0;
  for (auto g : gpus)
    if (g < 64)
      m |= 1ULL << g;
  return m;
}

std::vector<std::uint32_t> gpus_of(std::uint64_t mask) {
  std::vector<std::uint32_t> out;
  for (std::uint32_t g = 0; g < 64; ++g)
    if (mask & (1ULL << g))
      out.push_back(g);
  return out;
}

/// Validates a spec from a client and fills in defaults; errors say which job and what to do.
/// A selector's id ranges: each first..last with 1 <= first <= last (last 0: just first).
Result<void> check_ranges(const pb::JobSelector& sel) {
  for (const auto& r : sel.ids()) {
    std::uint64_t last = r.last() ? r.last() : r.first();
    if (r.first() == 0 || last < r.first())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("invalid job range {}-{}", r.first(), last));
  }
  return ok_result();
}

/// A variable of a job's environment: a name without '=' or NUL, a value without NUL.
Result<void> check_env_var(const pb::EnvVar& e) {
  if (e.name().empty() || e.name().find('=') != std::string::npos ||
      e.name().find('\0') != std::string::npos || e.value().find('\0') != std::string::npos)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("environment variable '{}' is not valid: use NAME=VALUE with a "
                                  "name without '='",
                                  printable(e.name())));
  return ok_result();
}

Result<void> check_spec(pb::JobSpec& spec, std::size_t item) {
  auto ctx = fmt::format("job {} of the submission", item + 1);
  if (spec.argv_size() == 0 || spec.argv(0).empty())
    return make_error(ErrorCode::InvalidArgument,
                      "the command is empty: give the program and its arguments after --", ctx);
  for (const auto& a : spec.argv())
    if (a.find('\0') != std::string::npos)
      return make_error(ErrorCode::InvalidArgument, "an argument contains a NUL byte", ctx);
  if (spec.slots() == 0)
    spec.set_slots(1);
  if (spec.mpi_ranks() > 4096)
    return make_error(ErrorCode::InvalidArgument, "at most 4096 MPI ranks", ctx);
  if (spec.ranks_per_node() > 0 && spec.mpi_ranks() == 0)
    return make_error(ErrorCode::InvalidArgument,
                      "ranks per node is for MPI jobs: give the number of ranks with --mpi N", ctx);
  if (spec.mpi_ranks() > 0 && spec.ranks_per_node() >= spec.mpi_ranks())
    spec.set_ranks_per_node(0); // all on one node
  if (spec.ranks_per_node() > 0 &&
      (spec.memory_bytes() > 0 || spec.gpus() > 0 || spec.max_per_node() > 0))
    return make_error(ErrorCode::InvalidArgument,
                      "an MPI job across nodes (--ranks-per-node) cannot ask for memory, GPUs or "
                      "a max per node yet: leave those out, or run it on one node",
                      ctx);
  // In 64 bits: slots and ranks each fit 32 bits, their product may not.
  if (std::uint64_t{spec.slots()} * std::max<std::uint32_t>(1, spec.mpi_ranks()) > 4096)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} slots is more than any node has (at most 4096)", spec.slots()),
                      ctx);
  for (const auto& e : spec.env())
    if (auto r = check_env_var(e); !r.ok())
      return r.error().with_context(ctx);
  if (!spec.cwd().empty() && spec.cwd()[0] != '/')
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("working directory '{}' is not absolute", spec.cwd()), ctx);
  if (!valid_label(spec.label()))
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("label '{}' is not valid: use letters, digits, '-', '_' and '.' "
                                  "(at most 64)",
                                  spec.label()),
                      ctx);
  if (spec.name().size() > 256)
    return make_error(ErrorCode::InvalidArgument, "the job name is longer than 256 bytes", ctx);
  if (spec.gpus() > 64)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} GPUs is more than a node can have (at most 64)", spec.gpus()),
                      ctx);
  for (const auto* list : {&spec.hosts(), &spec.prefer_hosts()})
    for (const auto& h : *list)
      if (!valid_node_name(h))
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("host '{}' is not a valid node name: use letters, digits, "
                                      "'-', '_' and '.'",
                                      h),
                          ctx);
  if (spec.queue_timeout_ms() < 0 || spec.run_timeout_ms() < 0 || spec.time_request_ms() < 0)
    return make_error(ErrorCode::InvalidArgument, "timeouts and time requests cannot be negative",
                      ctx);
  for (auto ms : {spec.queue_timeout_ms(), spec.run_timeout_ms(), spec.time_request_ms()})
    if (ms > kMaxDurationMs)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("a timeout or time request of {} ms is more than 10 years", ms),
                        ctx);
  if (spec.memory_bytes() > kMaxMemoryBytes)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} bytes of memory is more than any node has (at most 1P)",
                                  spec.memory_bytes()),
                      ctx);
  if (spec.ranks_per_node() > 4096 || spec.max_per_node() > 1'000'000)
    return make_error(ErrorCode::InvalidArgument,
                      "ranks per node (at most 4096) or max per node (at most 1000000) is too large",
                      ctx);
  if (spec.has_retries() && spec.retries() > 1000)
    return make_error(ErrorCode::InvalidArgument, "at most 1000 retries", ctx);
  if (spec.retry_on_failure() && !spec.has_retries())
    return make_error(ErrorCode::InvalidArgument,
                      "retrying on failure needs a number of retries: add --retries N", ctx);
  // Sorted and unique, so that equal requirements compare equal.
  for (auto* list : {spec.mutable_hosts(), spec.mutable_prefer_hosts()}) {
    std::sort(list->begin(), list->end());
    list->erase(std::unique(list->begin(), list->end()), list->end());
  }
  return ok_result();
}

} // namespace

Hub::Hub(asio::any_io_executor executor,
         HubConfig config,
         store::Store& store,
         launch::Launcher& launcher,
         const Clock& clock)
    : executor_(executor), config_(std::move(config)), store_(store), launcher_(launcher),
      clock_(clock), tick_timer_(executor) {}

Hub::~Hub() { *alive_ = false; }

Spec Hub::make_spec(std::string bytes, const pb::JobSpec& p) {
  Spec s;
  s.bytes = std::move(bytes);
  s.name = p.name();
  auto& r = s.req;
  r.label = scheduler_.intern(p.label());
  // An MPI job holds a slot (or --slots) for each of its ranks.
  r.slots = std::max<std::uint32_t>(1, p.slots()) * std::max<std::uint32_t>(1, p.mpi_ranks());
  r.memory = p.memory_bytes();
  r.gpus = p.gpus();
  for (const auto& h : p.hosts())
    r.hosts.push_back(scheduler_.intern(h));
  for (const auto& h : p.prefer_hosts())
    r.prefer.push_back(scheduler_.intern(h));
  std::sort(r.hosts.begin(), r.hosts.end());
  std::sort(r.prefer.begin(), r.prefer.end());
  r.max_per_node = p.max_per_node();
  r.priority = p.priority();
  r.time_request_ms = p.time_request_ms();
  s.rank_slots = std::max<std::uint32_t>(1, p.slots());
  if (p.ranks_per_node() > 0) // across ceil(ranks / per node) nodes of one pilot
    r.per_node = s.rank_slots * p.ranks_per_node();
  s.queue_timeout_ms = p.queue_timeout_ms();
  s.retries = p.has_retries() ? static_cast<std::int32_t>(p.retries()) : -1;
  s.retry_on_failure = p.retry_on_failure();
  s.after.assign(p.after().begin(), p.after().end());
  return s;
}

void Hub::unqueue(Job& job) {
  if (job.deps_pending == 0)
    scheduler_.remove_queued(JobId(job.id));
}

std::int64_t Hub::run_timeout_of(const Spec& spec) {
  pb::JobSpec p;
  p.ParseFromString(spec.bytes);
  return p.run_timeout_ms();
}

store::AgentRow Hub::agent_row(const Agent& a, bool connected) const {
  return {a.id.value, a.pilot.value, a.node,        a.hostname,    a.pid,  a.slots,
          a.label,    connected,     a.registered_ms, a.session_key, a.epoch};
}

std::int64_t Hub::lease_ms(bool stdio) const {
  // An agent notices a silent link after 4 heartbeat intervals, then tries to reconnect for the
  // window (an ssh link cannot reconnect); its newest echoed heartbeat may be an interval older.
  std::int64_t detect = std::max(config_.heartbeat_deadline_ms, 4 * config_.heartbeat_interval_ms);
  return detect + config_.heartbeat_interval_ms + (stdio ? 0 : config_.agent_reconnect_window_ms);
}

bool Hub::may_retry(const Job& job, bool failure) const {
  const Spec& spec = specs_[job.spec - 1];
  std::uint32_t used = job.lost_count + job.fail_count;
  if (failure)
    return spec.retry_on_failure && spec.retries > 0 && used < static_cast<std::uint32_t>(spec.retries);
  std::uint32_t budget = spec.retries >= 0 ? static_cast<std::uint32_t>(spec.retries) : config_.lost_retries;
  return used < budget;
}

void Hub::make_ready(Job& job, bool at_load) {
  const Spec& spec = specs_[job.spec - 1];
  job.deps_pending = 0;
  for (auto dep : spec.after) {
    const Job* d = find_job(dep);
    if ((d && d->state == JobState::Succeeded) || (!d && at_load))
      continue;
    if (!d || is_final(d->state)) {
      std::int64_t now = clock_.now_ms();
      job.reason = d ? fmt::format("dependency {} {}", dep, job_state_name(d->state))
                     : fmt::format("dependency {} does not exist", dep);
      job.end_ms = now;
      transition(job, JobState::Cancelled, now);
      job_final(job);
      return;
    }
    dependents_[dep].push_back(job.id);
    ++job.deps_pending;
  }
  if (job.deps_pending == 0)
    scheduler_.enqueue(JobId(job.id), spec.req);
  else
    job.reason = fmt::format("waiting for {}", [&] {
      std::string ids;
      for (auto dep : spec.after)
        ids += (ids.empty() ? "" : ",") + std::to_string(dep);
      return ids;
    }());
}

void Hub::settle_dependents(const Job& done) {
  auto it = dependents_.find(done.id);
  if (it == dependents_.end())
    return;
  auto waiting = std::move(it->second);
  dependents_.erase(it);
  for (auto id : waiting) {
    Job* j = find_job(id);
    if (!j || j->state != JobState::Queued || j->deps_pending == 0)
      continue;
    if (done.state == JobState::Succeeded) {
      if (--j->deps_pending == 0) {
        j->reason.clear();
        scheduler_.enqueue(JobId(j->id), specs_[j->spec - 1].req);
        request_schedule();
      }
      continue;
    }
    // A dependency that will not succeed: the dependent never runs.
    j->deps_pending = 0;
    std::int64_t now = clock_.now_ms();
    j->reason = fmt::format("dependency {} {}", done.id, job_state_name(done.state));
    j->end_ms = now;
    transition(*j, JobState::Cancelled, now);
    job_final(*j);
  }
}

Result<void> Hub::check_after(const pb::JobSpec& spec, std::size_t item) const {
  for (auto dep : spec.after())
    if (!find_job(dep))
      return make_error(ErrorCode::NotFound,
                        fmt::format("--after {}: there is no job {}", dep, dep),
                        fmt::format("job {} of the submission", item + 1));
  return ok_result();
}

std::shared_ptr<const std::string> Hub::intern_env(std::string bytes) {
  if (bytes.empty())
    return nullptr;
  auto& same_hash = envs_[std::hash<std::string>{}(bytes)];
  std::erase_if(same_hash, [](const auto& w) { return w.expired(); });
  for (const auto& w : same_hash)
    if (auto env = w.lock(); *env == bytes)
      return env;
  auto env = std::make_shared<const std::string>(std::move(bytes));
  same_hash.push_back(env);
  return env;
}

Result<std::vector<std::uint64_t>> Hub::groups_named(const pb::JobSelector& sel) const {
  // Every command treats a group that does not exist the same way: an error naming it.
  for (auto g : sel.groups())
    if (g == 0 || g > groups_.size() || groups_[g - 1].id == 0)
      return make_error(ErrorCode::NotFound,
                        fmt::format("group {} does not exist: `sortie job list` shows the jobs "
                                    "and their groups",
                                    g));
  std::vector<std::uint64_t> out;
  for (const auto& name : sel.group_names()) {
    auto it = groups_by_name_.find(name);
    if (it == groups_by_name_.end())
      return make_error(ErrorCode::NotFound,
                        fmt::format("no group is named '{}': `sortie job list` shows the jobs and "
                                    "their groups",
                                    printable(name)));
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
  return out;
}

// -------------------------------------------------------------------------------------------
// Loading

Result<void> Hub::load(store::LoadedState state) {
  // Ids are never used twice, even those of rows forgotten since.
  next_job_id_ = std::max<std::uint64_t>(next_job_id_, state.next_job_id);
  next_spec_id_ = std::max<std::uint64_t>(next_spec_id_, state.next_spec_id);
  next_group_id_ = std::max<std::uint64_t>(next_group_id_, state.next_group_id);
  reserved_job_ids_ = state.reserved_job_ids;
  reserved_group_ids_ = state.reserved_group_ids;
  for (auto& s : state.specs) {
    pb::JobSpec spec;
    if (!spec.ParseFromString(s.body))
      return make_error(ErrorCode::Internal, fmt::format("spec {} in the store is corrupt", s.id));
    if (specs_.size() < s.id)
      specs_.resize(s.id);
    specs_[s.id - 1] = make_spec(std::move(s.body), spec);
    next_spec_id_ = std::max(next_spec_id_, s.id + 1);
  }
  for (auto& g : state.groups) {
    if (groups_.size() < g.id)
      groups_.resize(g.id);
    auto key = scheduler_.intern(g.name.empty() ? fmt::format("#{}", g.id) : g.name);
    groups_[g.id - 1] = Group{g.id, key, g.name, g.created_ms, g.first_job, g.count, 0,
                              intern_env(std::move(g.env))};
    if (!g.name.empty())
      groups_by_name_[g.name].push_back(g.id);
    next_group_id_ = std::max(next_group_id_, g.id + 1);
  }
  // Agents from before the restart last heard from the old hub: their leases end at the latest
  // one lease from now.
  std::int64_t now_mono = clock_.monotonic_ms();
  std::int64_t deadline = now_mono + lease_ms(false) + kReconnectMarginMs;
  for (auto& a : state.agents) {
    next_agent_id_ = std::max(next_agent_id_, a.id + 1);
    Agent agent;
    agent.id = AgentId(a.id);
    agent.pilot = PilotId(a.pilot_id);
    agent.node = a.node;
    agent.hostname = a.hostname;
    agent.pid = a.pid;
    agent.slots = a.slots;
    agent.label = a.label;
    agent.registered_ms = a.registered_ms;
    agent.session_key = a.session_key;
    agent.epoch = a.epoch;
    agent.reconnect_deadline = a.connected ? deadline : 0;
    agents_.emplace(agent.id, std::move(agent));
  }
  for (auto& p : state.pilots) {
    next_pilot_id_ = std::max(next_pilot_id_, p.id + 1);
    Pilot pilot;
    pilot.id = PilotId(p.id);
    pilot.spec.ParseFromString(p.spec);
    pilot.state = p.state;
    pilot.created_ms = p.created_ms;
    pilot.ended_ms = p.ended_ms;
    pilot.reason = p.reason;
    pilot.batch_id = p.batch_id;
    pilot.end_ms = pilot.spec.walltime_ms() ? p.created_ms + pilot.spec.walltime_ms() : 0;
    pilots_.emplace(pilot.id, std::move(pilot));
  }
  load_resources(state.resources);
  for (auto& a : agents_)
    if (a.second.reconnect_deadline > 0)
      if (auto p = pilots_.find(a.second.pilot); p != pilots_.end())
        p->second.agents.insert(a.first);

  std::size_t waiting = 0;
  std::vector<std::uint64_t> queued_later;
  for (auto& r : state.jobs) {
    jobs_.grow_to(r.id);
    Job& j = jobs_[r.id - 1];
    j.id = r.id;
    j.spec = static_cast<std::uint32_t>(r.spec_id);
    j.group = static_cast<std::uint32_t>(r.group_id);
    j.is_array = r.array_index.has_value();
    j.array_index = r.array_index.value_or(0);
    j.state = r.state;
    j.attempt = static_cast<std::uint16_t>(r.attempt);
    j.agent = r.agent_id;
    j.has_exit_code = r.exit_code.has_value();
    j.exit_code = r.exit_code.value_or(0);
    j.has_signal = r.signal.has_value();
    j.signal = static_cast<std::int16_t>(r.signal.value_or(0));
    j.submit_ms = r.submit_ms;
    j.start_ms = r.start_ms;
    j.end_ms = r.end_ms;
    j.history = std::move(r.history);
    j.usage = r.usage;
    j.reason = std::move(r.reason);
    j.limits = limits_code(r.limits);
    j.gpu_mask = gpu_mask_of(r.gpus);
    // Retries used so far, from the history (the current state does not count as one).
    for (const auto& h : j.history) {
      j.lost_count += h.state == JobState::Lost;
      j.fail_count += h.state == JobState::Failed;
    }
    j.lost_count -= j.state == JobState::Lost && j.lost_count;
    j.fail_count -= j.state == JobState::Failed && j.fail_count;
    j.started = j.state == JobState::Running;
    ++state_counts_[j.state];
    next_job_id_ = std::max(next_job_id_, r.id + 1);
    if (j.spec > 0 && j.spec <= specs_.size())
      ++specs_[j.spec - 1].jobs;
    if (j.group > 0 && j.group <= groups_.size())
      ++groups_[j.group - 1].live;
    if (j.spec == 0 || j.spec > specs_.size())
      return make_error(ErrorCode::Internal,
                        fmt::format("job {} refers to spec {} which is not in the store", j.id, j.spec));
    // A spec belongs to one submission, hence to one group: bind it for max_per_node.
    Spec& spec = specs_[j.spec - 1];
    if (spec.req.max_per_node && j.group && j.group <= groups_.size())
      spec.req.group = groups_[j.group - 1].key;
    if (j.state == JobState::Queued) {
      queued_later.push_back(j.id); // after every job is loaded: dependencies may come later
      if (spec.queue_timeout_ms > 0 && j.start_ms == 0)
        queue_deadlines_.emplace(j.submit_ms + spec.queue_timeout_ms, j.id);
    } else if (j.state == JobState::Assigned || j.state == JobState::Running) {
      auto it = agents_.find(AgentId(j.agent));
      if (it == agents_.end()) {
        job_lost(j, "its agent is unknown after a hub restart");
        continue;
      }
      if (spec.req.spans_nodes()) {
        // Which other nodes it held is not stored, so it cannot go on; but it runs again only
        // once its first node has killed it (told so when it reconnects) or its lease is over.
        span_lost_.emplace(j.id, "the hub restarted while it ran across nodes");
      }
      if (it->second.reconnect_deadline == 0)
        it->second.reconnect_deadline = deadline;
      it->second.jobs.insert(JobId(j.id));
      ++waiting;
    }
  }
  for (auto id : queued_later)
    make_ready(jobs_[id - 1], true);
  recovery_deadline_ = deadline;
  std::size_t agents_waiting = 0;
  for (const auto& [id, a] : agents_)
    agents_waiting += a.reconnect_deadline > 0;
  if (!state.jobs.empty())
    log::info("loaded {} jobs ({} queued, {} on {} agents expected to reconnect within {})",
              state.jobs.size(), scheduler_.queued(), waiting, agents_waiting,
              format_duration_ms(lease_ms(false) + kReconnectMarginMs));
  // Pilots that were still starting when the hub stopped have no agents coming back.
  for (auto& [id, p] : pilots_)
    update_pilot_state(p);
  // config.toml's pilots must name resources that exist: a start that would leave one out fails.
  for (const auto& spec : config_.pilots)
    if (!find_resource(spec.resource()))
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: [[pilots]] entry '{}' names resource '{}', which is not "
                                    "defined: add it as [resources.{}] or with `sortie resource "
                                    "add`, or fix the name",
                                    config_.profile.config_file().string(), spec.config_name(),
                                    spec.resource(), spec.resource()));
  return ok_result();
}

void Hub::start() {
  resume_pilots();
  start_configured_pilots();
  spawn_root(executor_, "the hub's tick loop", [this] { return tick_loop(); });
  request_schedule();
}

// -------------------------------------------------------------------------------------------
// Batching, scheduling, ticks

store::WriteBatch& Hub::batch() {
  if (!flush_posted_) {
    flush_posted_ = true;
    asio::post(executor_, [this, alive = alive_] {
      if (*alive)
        flush();
    });
  }
  return batch_;
}

void Hub::mark_dirty(Job& job) {
  if (!job.dirty) {
    job.dirty = true;
    dirty_.push_back(job.id);
    batch();
  }
}

void Hub::flush() {
  flush_posted_ = false;
  if (!dirty_.empty()) {
    batch_.job_updates.reserve(dirty_.size());
    for (auto id : dirty_) {
      Job* found = find_job(id);
      if (!found) // forgotten meanwhile
        continue;
      Job& j = *found;
      j.dirty = false;
      store::JobRow r;
      r.id = j.id;
      r.spec_id = j.spec;
      r.group_id = j.group;
      if (j.is_array)
        r.array_index = j.array_index;
      r.state = j.state;
      r.attempt = j.attempt;
      r.agent_id = j.agent;
      if (j.has_exit_code)
        r.exit_code = j.exit_code;
      if (j.has_signal)
        r.signal = j.signal;
      r.submit_ms = j.submit_ms;
      r.start_ms = j.start_ms;
      r.end_ms = j.end_ms;
      r.history = j.history;
      r.usage = j.usage;
      r.reason = j.reason;
      r.limits = kLimitNames[j.limits];
      r.gpus = gpus_of(j.gpu_mask);
      batch_.job_updates.push_back(std::move(r));
    }
    // If the transaction fails (disk full), the rows are written again later.
    batch_.on_commit.push_back([this, alive = alive_, ids = std::move(dirty_)](const Result<void>& r) {
      if (!*alive || r.ok())
        return;
      for (auto id : ids)
        if (Job* j = find_job(id))
          mark_dirty(*j);
    });
    dirty_.clear();
  }
  if (!batch_.empty()) {
    store_.submit(std::move(batch_));
    batch_ = store::WriteBatch();
  }
}

void Hub::request_schedule() {
  if (schedule_posted_ || stopping_)
    return;
  schedule_posted_ = true;
  asio::post(executor_, [this, alive = alive_] {
    if (*alive)
      schedule();
  });
}

void Hub::schedule() {
  schedule_posted_ = false;
  if (stopping_)
    return;
  std::int64_t now = clock_.now_ms();
  auto assignments = scheduler_.schedule(kScheduleStep, now);
  if (assignments.empty())
    return;
  std::unordered_map<AgentId, std::vector<std::pair<std::uint64_t, std::uint32_t>>> per_agent;
  for (const auto& a : assignments) {
    Job* job = find_job(a.job.value);
    auto agent_it = agents_.find(a.node);
    SORTIE_CHECK(job && agent_it != agents_.end(),
                 "the scheduler only knows jobs and nodes the hub gave it");
    ++job->attempt;
    job->agent = a.node.value;
    job->started = false;
    job->out_bytes[0] = job->out_bytes[1] = 0;
    job->out_lost = 0;
    job->has_exit_code = job->has_signal = false;
    job->gpu_mask = gpu_mask_of(a.gpus);
    job->limits = 0;
    transition(*job, JobState::Assigned, now);
    agent_it->second.jobs.insert(a.job);
    per_agent[a.node].emplace_back(job->id, job->attempt);
    if (!a.span.empty()) {
      for (std::size_t i = 1; i < a.span.size(); ++i)
        agents_.find(a.span[i].first)->second.held.insert(a.job);
      spans_[job->id] = a.span;
    }
  }
  // Assignments are committed before they are sent, so after a crash a job the store calls
  // queued was never handed to an agent.
  batch().on_commit.push_back([this, alive = alive_, per_agent = std::move(per_agent)](
                                  const Result<void>& r) {
    if (!*alive)
      return;
    for (const auto& [agent_id, list] : per_agent) {
      auto it = agents_.find(agent_id);
      pb::Envelope env;
      auto* assign = env.mutable_assign();
      for (auto [id, attempt] : list) {
        Job* job = find_job(id);
        if (!job || job->agent != agent_id.value || job->attempt != attempt ||
            job->state != JobState::Assigned)
          continue; // requeued or finished meanwhile
        if (job->cancel_requested) {
          // Cancelled before the assignment left the hub: it never reaches the agent.
          detach_from_agent(*job);
          transition(*job, JobState::Cancelled, clock_.now_ms());
          job->end_ms = clock_.now_ms();
          job_final(*job);
          continue;
        }
        if (!r.ok()) {
          requeue(*job, true);
          continue;
        }
        auto* a = assign->add_jobs();
        a->set_job_id(id);
        a->set_attempt(attempt);
        a->set_spec(specs_[job->spec - 1].bytes);
        if (job->group && job->group <= groups_.size() && groups_[job->group - 1].env)
          a->set_base_env(*groups_[job->group - 1].env);
        if (job->is_array)
          a->set_array_index(job->array_index);
        for (auto g : gpus_of(job->gpu_mask))
          a->add_gpus(g);
        if (auto span = spans_.find(id); span != spans_.end()) {
          a->set_slots(span->second[0].second);
          std::uint32_t rank_slots = specs_[job->spec - 1].rank_slots;
          for (auto [node, slots] : span->second) {
            auto* h = a->add_mpi_hosts();
            auto n = agents_.find(node);
            h->set_address(n == agents_.end() ? std::string() : n->second.address);
            h->set_ranks(slots / rank_slots);
          }
          // mpiexec's ssh between the nodes of an ssh pilot takes the resource's ssh options,
          // as the hub's own ssh to them did (-F config, -i key, ...).
          if (auto p = pilots_.find(it != agents_.end() ? it->second.pilot : PilotId()); p != pilots_.end())
            if (const auto* res = find_resource(p->second.spec.resource());
                res && res->type() == "ssh" && res->ssh_options_size() > 0)
              a->set_mpi_rsh_args(fmt::format("{}", fmt::join(res->ssh_options(), " ")));
        }
      }
      if (assign->jobs_size() > 0 && it != agents_.end() && it->second.peer)
        it->second.peer->send(env);
    }
    if (!r.ok())
      request_schedule();
  });
  if (assignments.size() == kScheduleStep)
    request_schedule();
}

Awaitable<void> Hub::tick_loop() {
  auto alive = alive_;
  while (*alive && !stopping_) {
    tick_timer_.expires_after(std::chrono::milliseconds(200));
    co_await tick_timer_.async_wait(use_nothrow);
    if (!*alive)
      break;
    tick();
  }
}

void Hub::tick() {
  // job_retention: a sweep every quarter of it, at least every second and at most every minute.
  if (std::int64_t mono = clock_.monotonic_ms(); mono >= next_retention_sweep_ms_) {
    if (next_retention_sweep_ms_ > 0)
      forget_expired();
    next_retention_sweep_ms_ =
        mono + std::clamp<std::int64_t>(config_.job_retention_ms / 4, 1'000, 60'000);
  }
  // Progress of waits, throttled to this tick.
  std::erase_if(waiters_, [](const std::shared_ptr<Waiter>& w) { return w->peer->closed(); });
  for (auto& w : waiters_)
    if (w->dirty && w->progress) {
      w->dirty = false;
      waiter_send(*w, false);
    }
  // Agents that did not come back in time.
  std::int64_t now = clock_.monotonic_ms();
  if (!output_retries_.empty())
    output_retries_due(now);
  std::vector<AgentId> expired;
  std::vector<AgentId> keepers_done;
  for (const auto& [id, a] : agents_) {
    if (!a.peer && a.reconnect_deadline > 0 && now >= a.reconnect_deadline)
      expired.push_back(id);
    else if (!a.peer && a.awaiting_keeper && !keeper_running(a.keeper_pid))
      keepers_done.push_back(id);
  }
  for (auto id : keepers_done) {
    std::string why = agents_.at(id).away_reason;
    agent_gone(id, why + "; its keeper has ended its jobs");
  }
  for (auto id : expired) {
    const Agent& a = agents_.at(id);
    agent_gone(id, fmt::format("{}{}it did not come back within its lease ({}), after which its "
                               "keeper has ended its jobs",
                               a.away_reason, a.away_reason.empty() ? "" : "; ",
                               format_duration_ms(lease_ms(a.stdio) + kReconnectMarginMs)));
  }
  // Queue timeouts.
  std::int64_t wall = clock_.now_ms();
  while (!queue_deadlines_.empty() && queue_deadlines_.top().first <= wall) {
    auto [deadline, id] = queue_deadlines_.top();
    queue_deadlines_.pop();
    Job* j = find_job(id);
    if (!j || j->state != JobState::Queued || j->start_ms != 0)
      continue; // started (or finished) in time
    unqueue(*j);
    j->deps_pending = 0;
    j->reason = fmt::format("not started within its queue timeout of {}",
                            format_duration_ms(specs_[j->spec - 1].queue_timeout_ms));
    j->end_ms = wall;
    transition(*j, JobState::TimedOut, wall);
    job_final(*j);
  }
  pilot_walltimes(wall);
}

// -------------------------------------------------------------------------------------------
// Jobs

Job* Hub::find_job(std::uint64_t id) {
  if (id == 0 || id > jobs_.size())
    return nullptr;
  Job* j = jobs_.find(id - 1); // null: its chunk of ids was forgotten
  return j && j->id ? j : nullptr;
}

Error Hub::missing_job(std::uint64_t id) const {
  if (id > 0 && id < next_job_id_)
    return make_error(ErrorCode::NotFound,
                      fmt::format("job {} does not exist (any more: ended jobs are forgotten after "
                                  "job_retention, {}, or by `sortie job forget`)",
                                  id, config_.job_retention_ms
                                          ? format_duration_ms(config_.job_retention_ms)
                                          : std::string("never")));
  return make_error(ErrorCode::NotFound, fmt::format("job {} does not exist", id));
}

const Job* Hub::find_job(std::uint64_t id) const {
  if (id == 0 || id > jobs_.size())
    return nullptr;
  const Job* j = jobs_.find(id - 1);
  return j && j->id ? j : nullptr;
}

void Hub::transition(Job& job, JobState to, std::int64_t now_ms) {
  if (job.state == to)
    return;
  --state_counts_[job.state];
  ++state_counts_[to];
  job.state = to;
  job.history.push_back({to, now_ms});
  mark_dirty(job);
}

void Hub::detach_from_agent(Job& job) {
  if (auto it = agents_.find(AgentId(job.agent)); it != agents_.end())
    it->second.jobs.erase(JobId(job.id));
  span_lost_.erase(job.id);
  if (auto span = spans_.find(job.id); span != spans_.end()) {
    for (auto [node, slots] : span->second)
      if (auto it = agents_.find(node); it != agents_.end())
        it->second.held.erase(JobId(job.id));
    spans_.erase(span);
  }
  scheduler_.release(JobId(job.id));
}

void Hub::send_kill(const Job& job, const std::string& reason) {
  auto it = agents_.find(AgentId(job.agent));
  if (it == agents_.end() || !it->second.peer)
    return;
  pb::Envelope env;
  auto* k = env.mutable_kill();
  auto* ref = k->add_jobs();
  ref->set_job_id(job.id);
  ref->set_attempt(job.attempt);
  k->set_reason(reason);
  k->set_grace_ms(config_.kill_grace_ms);
  it->second.peer->send(env);
}

void Hub::requeue(Job& job, bool front) {
  detach_from_agent(job);
  job.started = false;
  job.agent = 0;
  transition(job, JobState::Queued, clock_.now_ms());
  const auto& req = specs_[job.spec - 1].req;
  if (front)
    scheduler_.requeue_front(JobId(job.id), req);
  else
    scheduler_.enqueue(JobId(job.id), req);
  request_schedule();
}

void Hub::job_lost(Job& job, const std::string& why) {
  detach_from_agent(job);
  std::int64_t now = clock_.now_ms();
  job.end_ms = now;
  job.reason = why;
  transition(job, JobState::Lost, now);
  followers_attempt_ended(job);
  bool retry = may_retry(job, false);
  ++job.lost_count;
  if (job.cancel_requested) {
    transition(job, JobState::Cancelled, now);
    job_final(job);
  } else if (retry) {
    log::warn("job {} lost ({}); requeued (retry {})", job.id, why, job.lost_count + job.fail_count);
    requeue(job, true);
  } else {
    job.reason = fmt::format("{}; its node was lost {} time{}, and it has no retries left", why,
                             job.lost_count, job.lost_count == 1 ? "" : "s");
    log::warn("job {} lost ({}); no retries left", job.id, why);
    job_final(job);
  }
}

void Hub::job_final(Job& job) {
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    Waiter& w = **it;
    if (job.id <= w.max_id && selected(w.selector, w.named, job)) {
      waiter_count(w, job);
      if (w.succeeded + w.failed + w.cancelled >= w.total) {
        waiter_send(w, true);
        it = waiters_.erase(it);
        continue;
      }
    }
    ++it;
  }
  followers_attempt_ended(job);
  settle_dependents(job);
}

void Hub::cancel_job(Job& job, const std::string& reason) {
  std::int64_t now = clock_.now_ms();
  switch (job.state) {
  case JobState::Queued:
    unqueue(job);
    job.reason = reason;
    job.end_ms = now;
    transition(job, JobState::Cancelled, now);
    job_final(job);
    return;
  case JobState::Assigned:
  case JobState::Running: {
    if (job.cancel_requested)
      return;
    job.cancel_requested = true;
    job.reason = reason;
    send_kill(job, reason);
    // A disconnected agent is told when it reconnects; if it never does, the job ends cancelled.
    return;
  }
  default:
    return;
  }
}

std::string Hub::node_of(const Job& job) const {
  if (auto it = agents_.find(AgentId(job.agent)); it != agents_.end())
    return it->second.node;
  return {};
}

std::string Hub::why_waiting(const scheduler::Requirements& r) const {
  // Like squeue's REASON: first whether any node the hub knows could ever run it, and if none
  // could, which requirement rules them all out.
  const Agent* any = nullptr;
  std::uint32_t most_slots = 0;
  std::uint64_t most_memory = 0;
  std::size_t most_gpus = 0;
  std::int64_t most_time = 0;
  bool label_seen = r.label == 0, host_seen = r.hosts.empty();
  std::int64_t now = clock_.now_ms();
  for (const auto& [id, a] : agents_) {
    if (!a.peer)
      continue;
    any = &a;
    if (r.label != 0 && a.label != scheduler_.name(r.label))
      continue;
    label_seen = true;
    if (!r.hosts.empty() && std::none_of(r.hosts.begin(), r.hosts.end(), [&](scheduler::Symbol h) {
          return scheduler_.name(h) == a.node;
        }))
      continue;
    host_seen = true;
    std::int64_t left = a.walltime_end_ms ? a.walltime_end_ms - now : kMaxDurationMs;
    most_slots = std::max(most_slots, a.slots);
    most_memory = std::max(most_memory, a.memory);
    most_gpus = std::max(most_gpus, a.gpus.size());
    most_time = std::max(most_time, left);
    std::uint32_t per_node = r.spans_nodes() ? r.per_node : r.slots;
    if (per_node <= a.slots && r.memory <= a.memory && r.gpus <= a.gpus.size() &&
        r.time_request_ms <= left)
      return "waiting for free resources"; // it fits a node: when one has room
  }
  if (!any)
    return "no pilot is running: add one (sortie pilot add)";
  if (!label_seen)
    return fmt::format("no running pilot has label '{}'", scheduler_.name(r.label));
  if (!host_seen) {
    std::string hosts;
    for (auto h : r.hosts)
      hosts += (hosts.empty() ? "" : ", ") + scheduler_.name(h);
    return fmt::format("it must run on {}, which no running pilot has", hosts);
  }
  std::uint32_t per_node = r.spans_nodes() ? r.per_node : r.slots;
  if (per_node > most_slots)
    return fmt::format("it needs {} slots on one node; the largest node it may use has {}",
                       per_node, most_slots);
  if (r.memory > most_memory)
    return fmt::format("it needs {} of memory; the most any node it may use offers is {}",
                       format_size_bytes(r.memory), format_size_bytes(most_memory));
  if (r.gpus > most_gpus)
    return fmt::format("it needs {} GPUs; the most any node it may use has is {}", r.gpus,
                       most_gpus);
  return fmt::format("it asks for {} of walltime; the most any pilot it may use has left is {}",
                     format_duration_ms(r.time_request_ms), format_duration_ms(most_time));
}

void Hub::fill_info(const Job& job, pb::JobInfo& info, bool detail) const {
  info.set_id(job.id);
  info.set_state(to_pb(job.state));
  if (job.has_exit_code)
    info.set_exit_code(job.exit_code);
  if (job.has_signal)
    info.set_signal(job.signal);
  info.set_node(node_of(job));
  if (auto span = spans_.find(job.id); span != spans_.end())
    for (auto [node, slots] : span->second)
      if (auto it = agents_.find(node); it != agents_.end())
        info.add_nodes(it->second.node);
  info.set_attempt(job.attempt);
  if (job.is_array)
    info.set_array_index(job.array_index);
  info.set_group(job.group);
  info.set_submit_ms(job.submit_ms);
  info.set_start_ms(job.start_ms);
  info.set_end_ms(job.end_ms);
  if (job.state == JobState::Queued && job.reason.empty() && job.deps_pending == 0) {
    // The jobs of an array share their spec: one answer serves a listing's run of them.
    std::int64_t now = clock_.monotonic_ms();
    if (why_cache_.spec != job.spec || why_cache_.at_ms != now)
      why_cache_ = {job.spec, now, why_waiting(specs_[job.spec - 1].req)};
    info.set_reason(why_cache_.reason);
  } else
    info.set_reason(job.reason);
  info.set_limits(kLimitNames[job.limits]);
  for (auto g : gpus_of(job.gpu_mask))
    info.add_gpus(g);
  if (job.group && job.group <= groups_.size())
    info.set_group_name(groups_[job.group - 1].name);
  const Spec& spec = specs_[job.spec - 1];
  if (detail) {
    info.mutable_spec()->ParseFromString(spec.bytes);
    auto* first = info.add_history();
    first->set_state(pb::JOB_QUEUED);
    first->set_time_ms(job.submit_ms);
    for (const auto& h : job.history) {
      auto* c = info.add_history();
      c->set_state(to_pb(h.state));
      c->set_time_ms(h.time_ms);
    }
    auto* u = info.mutable_usage();
    u->set_user_cpu_us(job.usage.user_cpu_us);
    u->set_system_cpu_us(job.usage.system_cpu_us);
    u->set_max_rss_kib(job.usage.max_rss_kib);
  }
  info.set_name(spec.name);
}

bool Hub::selected(const pb::JobSelector& sel, const Job& job) const {
  auto named = groups_named(sel);
  return named.ok() && selected(sel, *named, job);
}

bool Hub::selected(const pb::JobSelector& sel,
                   const std::vector<std::uint64_t>& named,
                   const Job& job) const {
  if (sel.all() || (sel.ids_size() == 0 && sel.groups_size() == 0 && sel.group_names_size() == 0))
    return true;
  for (auto g : named)
    if (g == job.group)
      return true;
  for (const auto& r : sel.ids()) {
    std::uint64_t last = r.last() ? r.last() : r.first();
    if (job.id >= r.first() && job.id <= last)
      return true;
  }
  for (auto g : sel.groups())
    if (g == job.group)
      return true;
  return false;
}

// -------------------------------------------------------------------------------------------
// Client requests

void Hub::send_to(const std::shared_ptr<Peer>& peer, pb::Envelope& env, std::uint64_t rid) {
  env.set_request_id(rid);
  peer->send(env);
}

void Hub::reply_error(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const Error& error) {
  pb::Envelope env;
  net::error_to_pb(error, *env.mutable_error());
  send_to(peer, env, rid);
}

void Hub::on_client_frame(const std::shared_ptr<Peer>& peer, pb::Envelope& env) {
  std::uint64_t rid = env.request_id();
  switch (env.body_case()) {
  case pb::Envelope::kSubmit:
    return handle_submit(peer, rid, *env.mutable_submit());
  case pb::Envelope::kListJobs:
    return handle_list(peer, rid, env.list_jobs());
  case pb::Envelope::kGetJob:
    return handle_get(peer, rid, env.get_job());
  case pb::Envelope::kWait:
    return handle_wait(peer, rid, env.wait());
  case pb::Envelope::kCancel:
    return handle_cancel(peer, rid, env.cancel());
  case pb::Envelope::kForget:
    return handle_forget(peer, rid, env.forget());
  case pb::Envelope::kLogs:
    return handle_logs(peer, rid, env.logs());
  case pb::Envelope::kHubStatus:
    return handle_status(peer, rid);
  case pb::Envelope::kHubStop: {
    pb::Envelope ok;
    ok.mutable_ok();
    send_to(peer, ok, rid);
    bool restart = env.hub_stop().restart();
    log::info("{} requested by {}", restart ? "restart" : "stop", peer->describe());
    if (on_stop_requested)
      on_stop_requested(restart);
    return;
  }
  case pb::Envelope::kPilotAdd:
    return handle_pilot_add(peer, rid, env.pilot_add());
  case pb::Envelope::kPilotList:
    return handle_pilot_list(peer, rid);
  case pb::Envelope::kPilotCancel:
    return handle_pilot_cancel(peer, rid, env.pilot_cancel());
  case pb::Envelope::kResourceAdd:
    return handle_resource_add(peer, rid, env.resource_add());
  case pb::Envelope::kResourceList:
    return handle_resource_list(peer, rid);
  case pb::Envelope::kResourceRemove:
    return handle_resource_remove(peer, rid, env.resource_remove());
  case pb::Envelope::kGoodbye:
    return;
  default:
    reply_error(peer, rid,
                make_error(ErrorCode::InvalidArgument,
                           fmt::format("'{}' is not a request a client can send",
                                       protocol::body_name(env))));
  }
}

void Hub::on_client_closed(const std::shared_ptr<Peer>& peer) {
  std::erase_if(waiters_, [&](const std::shared_ptr<Waiter>& w) { return w->peer == peer; });
  for (auto it = followers_.begin(); it != followers_.end();) {
    std::erase_if(it->second, [&](const std::shared_ptr<Follower>& f) {
      if (f->peer == peer)
        f->ended = true;
      return f->peer == peer;
    });
    it = it->second.empty() ? followers_.erase(it) : std::next(it);
  }
}

void Hub::handle_submit(const std::shared_ptr<Peer>& peer,
                        std::uint64_t rid,
                        pb::SubmitRequest& req) {
  if (stopping_)
    return reply_error(peer, rid, make_error(ErrorCode::Unavailable, "the hub is stopping"));
  if (req.items_size() == 0)
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument, "a submission needs at least one job"));
  std::uint64_t total = 0;
  for (int i = 0; i < req.items_size(); ++i) {
    auto* item = req.mutable_items(i);
    auto r = check_spec(*item->mutable_spec(), static_cast<std::size_t>(i));
    if (r.ok())
      r = check_after(item->spec(), static_cast<std::size_t>(i));
    if (!r.ok())
      return reply_error(peer, rid, r.error());
    if (item->has_array()) {
      auto* a = item->mutable_array();
      if (a->step() == 0)
        a->set_step(1);
      if (a->step() < 0 || a->last() < a->first())
        return reply_error(peer, rid,
                           make_error(ErrorCode::InvalidArgument,
                                      fmt::format("array {}-{}:{} is empty: use FIRST-LAST[:STEP] "
                                                  "with FIRST <= LAST and STEP > 0",
                                                  a->first(), a->last(), a->step())));
      // The span in unsigned arithmetic: INT64_MIN..INT64_MAX must not wrap to a small count.
      std::uint64_t span = static_cast<std::uint64_t>(a->last()) - static_cast<std::uint64_t>(a->first());
      std::uint64_t count = span / static_cast<std::uint64_t>(a->step());
      if (count >= kMaxJobsPerSubmit)
        return reply_error(peer, rid,
                           make_error(ErrorCode::InvalidArgument,
                                      fmt::format("array {}-{}:{} has more than {} jobs: a "
                                                  "submission may create at most {}",
                                                  a->first(), a->last(), a->step(),
                                                  kMaxJobsPerSubmit, kMaxJobsPerSubmit)));
      total += count + 1;
    } else {
      total += 1;
    }
    if (total > kMaxJobsPerSubmit)
      return reply_error(peer, rid,
                         make_error(ErrorCode::InvalidArgument,
                                    fmt::format("a submission may create at most {} jobs",
                                                kMaxJobsPerSubmit)));
  }
  if (req.group_name().size() > 256)
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument, "the group name is too long"));
  if (config_.confirm_above > 0 && total > config_.confirm_above && !req.confirmed())
    return reply_error(peer, rid,
                       make_error(ErrorCode::FailedPrecondition,
                                  fmt::format("this submission would create {} jobs, more than "
                                              "confirm_above ({}): if that is what you meant, "
                                              "submit again with --yes",
                                              with_thousands(total),
                                              with_thousands(config_.confirm_above))));
  std::size_t env_bytes = 0;
  for (const auto& e : req.env()) {
    if (auto r = check_env_var(e); !r.ok())
      return reply_error(peer, rid, r.error().with_context("exported environment"));
    env_bytes += e.name().size() + e.value().size() + 2;
  }
  if (env_bytes > kMaxExportedEnvBytes || req.env_size() > 65536)
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument,
                                  fmt::format("the exported environment has {} variables in {}: "
                                              "more than the {} a submission may carry; use "
                                              "--export=NONE or --export=NAME,... for the ones "
                                              "the jobs need",
                                              req.env_size(), format_size_bytes(env_bytes),
                                              format_size_bytes(kMaxExportedEnvBytes))));
  std::string env_blob;
  if (req.env_size() > 0) {
    pb::EnvList list;
    *list.mutable_vars() = std::move(*req.mutable_env());
    list.SerializeToString(&env_blob);
  }

  std::uint64_t group = next_group_id_++;
  std::uint64_t first = next_job_id_;
  next_job_id_ += total;
  std::int64_t now = clock_.now_ms();
  // max_per_node counts per group: a named group spans every submission with that name.
  auto group_key = scheduler_.intern(req.group_name().empty() ? fmt::format("#{}", group)
                                                               : req.group_name());

  store::WriteBatch& b = batch();
  // Ids are reserved ahead, in blocks, in a file of their own: even a store lost whole cannot
  // make them be handed out twice (`hub check --recover` starts past the reservation).
  if (next_job_id_ > reserved_job_ids_ || next_group_id_ > reserved_group_ids_) {
    reserved_job_ids_ = std::max(reserved_job_ids_, next_job_id_ + kIdReservation);
    reserved_group_ids_ = std::max(reserved_group_ids_, next_group_id_ + kIdReservation);
    b.reserve_job_ids = reserved_job_ids_;
    b.reserve_group_ids = reserved_group_ids_;
  }
  auto exported_env = intern_env(env_blob);
  b.groups.push_back({group, req.group_name(), now, first, total, std::move(env_blob)});
  // A spec is stored once for a run of identical items (an array is one item); the store gets one
  // copy of each spec's bytes, the hub's spec table the other.
  struct NewSpec {
    std::uint64_t id;
    Spec spec;
  };
  std::vector<NewSpec> new_specs;
  std::vector<store::JobRun> runs;
  runs.reserve(static_cast<std::size_t>(req.items_size()));
  std::uint64_t id = first;
  std::string bytes;
  for (const auto& item : req.items()) {
    bytes.clear();
    item.spec().SerializeToString(&bytes);
    if (new_specs.empty() || new_specs.back().spec.bytes != bytes) {
      std::uint64_t spec_id = next_spec_id_++;
      b.specs.push_back({spec_id, bytes});
      new_specs.push_back({spec_id, make_spec(bytes, item.spec())});
      if (new_specs.back().spec.req.max_per_node)
        new_specs.back().spec.req.group = group_key;
    }
    store::JobRun run;
    run.first_id = id;
    run.spec_id = new_specs.back().id;
    run.group_id = group;
    run.submit_ms = now;
    if (item.has_array()) {
      ArrayRange range{item.array().first(), item.array().last(), item.array().step()};
      run.count = range.count();
      run.is_array = true;
      run.first_index = range.first;
      run.step = range.step;
    } else {
      run.count = 1;
    }
    id += run.count;
    runs.push_back(run);
  }
  b.job_runs.insert(b.job_runs.end(), runs.begin(), runs.end());
  b.on_commit.push_back([this, alive = alive_, peer, rid, group, group_key, first, total, now,
                         group_env = std::move(exported_env), name = req.group_name(),
                         new_specs = std::move(new_specs),
                         runs = std::move(runs)](const Result<void>& r) mutable {
    if (!*alive)
      return;
    if (!r.ok()) {
      reply_error(peer, rid,
                  make_error(ErrorCode::Io,
                             fmt::format("the submission could not be stored, nothing was "
                                         "submitted: {}",
                                         r.error().message)));
      return;
    }
    // Durable: make the jobs live.
    for (auto& ns : new_specs) {
      if (specs_.size() < ns.id)
        specs_.resize(ns.id);
      specs_[ns.id - 1] = std::move(ns.spec);
    }
    new_specs = {};
    if (groups_.size() < group)
      groups_.resize(group);
    groups_[group - 1] = Group{group, group_key, name, now, first, total, total, group_env};
    if (!name.empty())
      groups_by_name_[name].push_back(group);
    jobs_.grow_to(first + total - 1);
    state_counts_[JobState::Queued] += total;
    for (const auto& run : runs) {
      Spec& spec = specs_[run.spec_id - 1];
      spec.jobs += run.count;
      bool simple = spec.after.empty();
      for (std::uint64_t k = 0; k < run.count; ++k) {
        Job& j = jobs_[run.first_id + k - 1];
        j.id = run.first_id + k;
        j.spec = static_cast<std::uint32_t>(run.spec_id);
        j.group = static_cast<std::uint32_t>(group);
        j.is_array = run.is_array;
        j.array_index = run.first_index + static_cast<std::int64_t>(k) * run.step;
        j.submit_ms = now;
        j.state = JobState::Queued;
        if (spec.queue_timeout_ms > 0)
          queue_deadlines_.emplace(now + spec.queue_timeout_ms, j.id);
        if (simple)
          scheduler_.enqueue(JobId(j.id), spec.req);
        else
          make_ready(j);
      }
    }
    runs = {};
    // A big submission leaves megabytes of freed request buffers; give them back to the OS
    // instead of keeping them for the hub's lifetime.
    if (total >= 10'000)
      ::malloc_trim(0);
    pb::Envelope env;
    auto* reply = env.mutable_submit_reply();
    reply->set_first_job_id(first);
    reply->set_count(total);
    reply->set_group_id(group);
    bool any_pilot = std::any_of(pilots_.begin(), pilots_.end(),
                                 [](const auto& p) {
                                   const auto& st = p.second.state;
                                   return st != "ended" && st != "failed" && st != "cancelled";
                                 });
    if (!any_pilot)
      reply->set_warning("no pilot is running: the jobs wait until one is added (e.g. `sortie "
                         "pilot add --resource local --slots 4`)");
    send_to(peer, env, rid);
    request_schedule();
  });
}

void Hub::handle_list(const std::shared_ptr<Peer>& peer,
                      std::uint64_t rid,
                      const pb::ListJobsRequest& req) {
  std::unordered_set<int> states(req.states().begin(), req.states().end());
  auto found = groups_named(req.selector());
  if (!found.ok())
    return reply_error(peer, rid, found.error());
  // Which jobs match, counted by state; with a limit only the newest are sent.
  std::vector<const Job*> matched;
  std::map<JobState, std::uint64_t> counts;
  for_each_selected(req.selector(), *found, [&](Job& j) {
    if (!states.empty() && !states.contains(static_cast<int>(j.state)))
      return;
    ++counts[j.state];
    matched.push_back(&j);
  });
  std::size_t from = req.limit() > 0 && matched.size() > req.limit() ? matched.size() - req.limit()
                                                                     : 0;
  pb::Envelope env;
  auto* list = env.mutable_job_list();
  for (std::size_t i = from; i < matched.size(); ++i) {
    fill_info(*matched[i], *list->add_jobs(), false);
    if (static_cast<std::size_t>(list->jobs_size()) >= kListChunk) {
      send_to(peer, env, rid);
      list->Clear();
    }
  }
  list->set_last(true);
  list->set_matched(matched.size());
  for (auto [state, n] : counts) {
    auto* c = list->add_counts();
    c->set_state(to_pb(state));
    c->set_count(n);
  }
  send_to(peer, env, rid);
}

template <typename Fn>
void Hub::for_each_selected(const pb::JobSelector& sel, const std::vector<std::uint64_t>& named,
                            Fn fn, std::uint64_t* missing) {
  if (!sel.all() && sel.groups_size() == 0 && sel.group_names_size() == 0 && sel.ids_size() > 0) {
    std::unordered_set<std::uint64_t> seen;
    for (const auto& r : sel.ids()) {
      std::uint64_t last = r.last() ? r.last() : r.first();
      std::uint64_t existing_last = std::min<std::uint64_t>(last, jobs_.size());
      for (std::uint64_t id = r.first(); id <= existing_last; ++id) {
        Job* j = find_job(id);
        if (!j) {
          if (missing)
            ++*missing;
        } else if (seen.insert(id).second) {
          fn(*j);
        }
      }
      if (missing && last > existing_last)
        *missing += last - std::max(existing_last, r.first() - 1);
    }
    return;
  }
  jobs_.for_each([&](Job& j) {
    if (j.id && selected(sel, named, j))
      fn(j);
  });
}

void Hub::handle_forget(const std::shared_ptr<Peer>& peer,
                        std::uint64_t rid,
                        const pb::ForgetRequest& req) {
  const auto& sel = req.selector();
  if (!sel.all() && sel.ids_size() == 0 && sel.groups_size() == 0 && sel.group_names_size() == 0)
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument,
                                  "name the jobs to forget (ids, a group, or all)"));
  if (auto r = check_ranges(sel); !r.ok())
    return reply_error(peer, rid, r.error());
  auto found = groups_named(sel);
  if (!found.ok())
    return reply_error(peer, rid, found.error());
  std::vector<std::uint64_t> ended;
  std::uint64_t not_ended = 0, missing = 0;
  for_each_selected(sel, *found, [&](Job& j) {
    if (is_final(j.state))
      ended.push_back(j.id);
    else
      ++not_ended;
  }, &missing);
  forget_jobs(ended);
  // The reply once the rows are gone: a `job list` after it does not show them.
  batch().on_commit.push_back([this, alive = alive_, peer, rid, n = ended.size(), not_ended,
                               missing](const Result<void>& r) {
    if (!*alive)
      return;
    if (!r.ok())
      return reply_error(peer, rid, r.error());
    pb::Envelope env;
    auto* f = env.mutable_forget_reply();
    f->set_forgotten(n);
    f->set_not_ended(not_ended);
    f->set_not_found(missing);
    send_to(peer, env, rid);
  });
}

void Hub::forget_jobs(const std::vector<std::uint64_t>& ids) {
  if (ids.empty())
    return;
  store::WriteBatch& b = batch();
  std::vector<std::size_t> chunks;
  for (auto id : ids) {
    Job* j = find_job(id);
    if (!j || !is_final(j->state))
      continue;
    b.jobs_forgotten.push_back(id); // a pending row update is dropped by flush()
    --state_counts_[j->state];
    if (j->spec > 0 && j->spec <= specs_.size() && --specs_[j->spec - 1].jobs == 0) {
      b.specs_forgotten.push_back(j->spec);
      specs_[j->spec - 1] = Spec{};
    }
    if (j->group > 0 && j->group <= groups_.size() && --groups_[j->group - 1].live == 0) {
      Group& g = groups_[j->group - 1];
      b.groups_forgotten.push_back(g.id);
      if (!g.name.empty())
        if (auto it = groups_by_name_.find(g.name); it != groups_by_name_.end()) {
          std::erase(it->second, g.id);
          if (it->second.empty())
            groups_by_name_.erase(it);
        }
      g = Group{};
    }
    followers_.erase(id);
    *j = Job{};
    std::size_t chunk = (id - 1) / 4096;
    if (chunks.empty() || chunks.back() != chunk)
      chunks.push_back(chunk);
  }
  b.next_job_id = next_job_id_;
  b.next_spec_id = next_spec_id_;
  b.next_group_id = next_group_id_;
  // Whole chunks of forgotten ids give their memory back.
  for (auto c : chunks)
    jobs_.release_if(c * 4096, [](const Job& e) { return e.id == 0; });
  if (b.jobs_forgotten.size() >= 10'000)
    ::malloc_trim(0);
}

void Hub::forget_expired() {
  if (config_.job_retention_ms <= 0)
    return;
  std::int64_t before = clock_.now_ms() - config_.job_retention_ms;
  std::vector<std::uint64_t> old;
  jobs_.for_each([&](Job& j) {
    if (j.id && is_final(j.state) && j.end_ms > 0 && j.end_ms < before && old.size() < 100'000)
      old.push_back(j.id);
  });
  if (!old.empty()) {
    log::info("forgetting {} jobs that ended more than {} ago (job_retention)", old.size(),
              format_duration_ms(config_.job_retention_ms));
    forget_jobs(old);
  }
}

void Hub::handle_get(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::GetJobRequest& req) {
  const Job* j = find_job(req.job_id());
  if (!j)
    return reply_error(peer, rid,
                       missing_job(req.job_id()));
  pb::Envelope env;
  fill_info(*j, *env.mutable_job_info(), true);
  send_to(peer, env, rid);
}

void Hub::waiter_count(Waiter& w, const Job& job) {
  if (job.state == JobState::Succeeded) {
    ++w.succeeded;
  } else if (job.state == JobState::Cancelled) {
    ++w.cancelled;
    if (w.failed_ids.size() < 100)
      w.failed_ids.push_back(job.id);
  } else {
    ++w.failed;
    if (w.failed_ids.size() < 100)
      w.failed_ids.push_back(job.id);
  }
  w.dirty = true;
}

void Hub::waiter_send(Waiter& w, bool done) {
  pb::Envelope env;
  auto* p = env.mutable_wait_progress();
  p->set_total(w.total);
  p->set_finished(w.succeeded + w.failed + w.cancelled);
  p->set_succeeded(w.succeeded);
  p->set_failed(w.failed);
  p->set_cancelled(w.cancelled);
  p->set_done(done);
  if (done)
    for (auto id : w.failed_ids)
      p->add_failed_ids(id);
  send_to(w.peer, env, w.rid);
}

void Hub::handle_wait(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::WaitRequest& req) {
  auto w = std::make_shared<Waiter>();
  w->peer = peer;
  w->rid = rid;
  w->selector = req.selector();
  w->progress = req.progress();
  w->max_id = next_job_id_ - 1;
  const auto& sel = req.selector();
  // Every named job must exist: waiting for a typo would never end.
  if (auto r = check_ranges(sel); !r.ok())
    return reply_error(peer, rid, r.error());
  for (const auto& r : sel.ids()) {
    std::uint64_t last = r.last() ? r.last() : r.first();
    // Bounded by the jobs that exist, so a huge range costs nothing before it is refused.
    std::uint64_t id = r.first();
    for (; id <= last && id <= jobs_.size(); ++id)
      if (!find_job(id))
        break;
    if (id <= last)
      return reply_error(peer, rid, missing_job(id));
  }
  auto found = groups_named(sel);
  if (!found.ok())
    return reply_error(peer, rid, found.error());
  w->named = std::move(*found);
  auto count = [&](const Job& j) {
    ++w->total;
    if (is_final(j.state))
      waiter_count(*w, j);
  };
  const auto& named = w->named;
  if (!sel.all() && sel.groups_size() == 0 && sel.group_names_size() == 0 && sel.ids_size() > 0) {
    std::unordered_set<std::uint64_t> seen;
    for (const auto& r : sel.ids())
      for (std::uint64_t id = r.first(); id <= (r.last() ? r.last() : r.first()); ++id)
        if (seen.insert(id).second)
          count(*find_job(id));
  } else {
    jobs_.for_each([&](Job& j) {
      if (j.id && selected(sel, named, j))
        count(j);
    });
  }
  if (w->succeeded + w->failed + w->cancelled >= w->total) {
    waiter_send(*w, true);
    return;
  }
  if (w->progress)
    waiter_send(*w, false);
  w->dirty = false;
  waiters_.push_back(std::move(w));
}

void Hub::handle_cancel(const std::shared_ptr<Peer>& peer,
                        std::uint64_t rid,
                        const pb::CancelRequest& req) {
  const auto& sel = req.selector();
  if (!sel.all() && sel.ids_size() == 0 && sel.groups_size() == 0 && sel.group_names_size() == 0)
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument,
                                  "name the jobs to cancel (ids, a group, or all)"));
  std::string reason = req.reason().empty() ? fmt::format("cancelled by {}", peer->describe())
                                            : req.reason();
  std::uint64_t cancelled = 0, finished = 0, missing = 0;
  auto one = [&](Job& j) {
    if (is_final(j.state)) {
      ++finished;
    } else {
      cancel_job(j, reason);
      ++cancelled;
    }
  };
  auto found = groups_named(sel);
  if (!found.ok())
    return reply_error(peer, rid, found.error());
  const auto& named = *found;
  if (auto r = check_ranges(sel); !r.ok())
    return reply_error(peer, rid, r.error());
  for_each_selected(sel, named, one, &missing);
  pb::Envelope env;
  auto* c = env.mutable_cancel_reply();
  c->set_cancelled(cancelled);
  c->set_already_finished(finished);
  c->set_not_found(missing);
  send_to(peer, env, rid);
}

// -------------------------------------------------------------------------------------------
// Output: followers

void Hub::handle_logs(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::LogsRequest& req) {
  Job* job = find_job(req.job_id());
  if (!job)
    return reply_error(peer, rid,
                       missing_job(req.job_id()));
  if (req.attempt() > job->attempt)
    return reply_error(peer, rid,
                       make_error(ErrorCode::NotFound,
                                  fmt::format("job {} has no attempt {} (it has had {})", job->id,
                                              req.attempt(), job->attempt)));
  auto f = std::make_shared<Follower>();
  f->peer = peer;
  f->rid = rid;
  f->job = job->id;
  f->stream = req.stream() == pb::STREAM_STDERR ? 1 : 0;
  f->follow = req.follow();
  f->attempt = req.attempt() ? req.attempt() : job->attempt;
  if (f->attempt == 0) {
    // Never started. Without follow there is nothing to show (say so); with follow, wait for
    // the first start.
    if (!f->follow && !is_final(job->state))
      return reply_error(peer, rid,
                         make_error(ErrorCode::NotFound,
                                    fmt::format("job {} has not started yet ({}): it has no output "
                                                "so far; `sortie job logs -f {}` waits for it",
                                                job->id, job_state_name(job->state), job->id)));
    if (!f->follow || is_final(job->state)) {
      pb::Envelope env;
      env.mutable_logs_data()->set_eof(true);
      return send_to(peer, env, rid);
    }
    f->catching_up = false;
    followers_[job->id].push_back(f);
    return;
  }
  followers_[job->id].push_back(f);
  follower_read_more(f);
}

std::function<void()> Hub::follower_resume(const std::shared_ptr<Follower>& f) {
  return [this, alive = alive_, f] {
    if (!*alive)
      return;
    f->reading = false;
    follower_read_more(f);
  };
}

void Hub::follower_read_more(std::shared_ptr<Follower> f) {
  f->catching_up = true;
  if (f->reading)
    return;
  // A follower never has more than a window of output queued on its connection: past that it
  // waits for the client to read, then continues from the output file.
  if (f->peer->queued_bytes() > kFollowerWindow) {
    f->reading = true;
    f->peer->when_drained(follower_resume(f));
    return;
  }
  f->reading = true;
  store_.read_output(f->job, f->attempt, f->stream, f->next_offset, kLogsChunk,
                     [this, alive = alive_, f](Result<std::string> data) {
                       if (!*alive)
                         return;
                       f->reading = false;
                       if (f->ended || f->peer->closed())
                         return follower_drop(f);
                       if (!data.ok()) {
                         reply_error(f->peer, f->rid, data.error());
                         return follower_drop(f);
                       }
                       std::size_t got = data->size();
                       if (got > 0) {
                         pb::Envelope env;
                         auto* d = env.mutable_logs_data();
                         d->set_offset(f->next_offset);
                         f->next_offset += static_cast<std::int64_t>(got);
                         d->set_data(std::move(*data));
                         send_to(f->peer, env, f->rid);
                       }
                       if (got == kLogsChunk)
                         return follower_read_more(f);
                       // The end of the file. Output received but not yet written is read
                       // once the batch holding it is committed.
                       const Job* job = find_job(f->job);
                       std::uint64_t received =
                           job && job->attempt == f->attempt ? job->out_bytes[f->stream] : 0;
                       if (received > static_cast<std::uint64_t>(f->next_offset) &&
                           received == f->awaited) {
                         // Waited for a commit already and the file still ends short: those
                         // bytes could not be written (a full disk). Go on after them.
                         f->next_offset = static_cast<std::int64_t>(received);
                       } else if (received > static_cast<std::uint64_t>(f->next_offset)) {
                         f->awaited = received;
                         f->reading = true;
                         batch().on_commit.push_back(
                             [resume = follower_resume(f)](const Result<void>&) { resume(); });
                         return;
                       }
                       f->catching_up = false;
                       follower_maybe_end(f);
                     });
}

void Hub::follower_deliver(const std::shared_ptr<Follower>& f, std::int64_t offset,
                           const std::string& data) {
  if (f->ended || f->catching_up)
    return; // a follower reading the file finds this there
  std::int64_t end = offset + static_cast<std::int64_t>(data.size());
  if (end <= f->next_offset)
    return;
  if (offset > f->next_offset || f->peer->queued_bytes() > kFollowerWindow)
    return follower_read_more(f); // behind: continue from the file
  std::int64_t skip = f->next_offset - offset;
  pb::Envelope env;
  auto* d = env.mutable_logs_data();
  d->set_offset(f->next_offset);
  d->set_data(data.substr(static_cast<std::size_t>(skip)));
  send_to(f->peer, env, f->rid);
  f->next_offset = end;
}

void Hub::follower_drop(const std::shared_ptr<Follower>& f) {
  f->ended = true;
  auto it = followers_.find(f->job);
  if (it != followers_.end()) {
    std::erase(it->second, f);
    if (it->second.empty())
      followers_.erase(it);
  }
}

void Hub::follower_maybe_end(const std::shared_ptr<Follower>& f) {
  if (f->ended || f->catching_up)
    return;
  const Job* job = find_job(f->job);
  bool live = job && job->attempt == f->attempt &&
              (job->state == JobState::Assigned || job->state == JobState::Running);
  if (f->follow && live)
    return;
  pb::Envelope env;
  auto* d = env.mutable_logs_data();
  d->set_offset(f->next_offset);
  d->set_eof(true);
  send_to(f->peer, env, f->rid);
  follower_drop(f);
}

void Hub::followers_attempt_ended(Job& job) {
  auto it = followers_.find(job.id);
  if (it == followers_.end())
    return;
  auto list = it->second; // follower_maybe_end edits the map
  for (auto& f : list)
    if (f->attempt != 0 || is_final(job.state))
      follower_maybe_end(f);
}

// -------------------------------------------------------------------------------------------
// Status

HubStats Hub::stats() const {
  HubStats s;
  for (const auto& [state, n] : state_counts_)
    if (n)
      s.jobs_by_state[job_state_name(state)] = n;
  for (const auto& [id, a] : agents_)
    s.agents += a.peer != nullptr;
  for (const auto& [id, p] : pilots_)
    s.pilots += p.state != "ended" && p.state != "failed" && p.state != "cancelled";
  s.slots_total = scheduler_.slots_total();
  s.slots_used = scheduler_.slots_used();
  return s;
}

void Hub::handle_status(const std::shared_ptr<Peer>& peer, std::uint64_t rid) {
  auto s = stats();
  pb::Envelope env;
  auto* st = env.mutable_hub_status_reply();
  st->set_version(kSortieVersion);
  st->set_profile(config_.profile.name);
  st->set_pid(::getpid());
  st->set_started_ms(started_ms);
  st->set_address(listen_address);
  for (const auto& [k, v] : s.jobs_by_state)
    (*st->mutable_jobs_by_state())[k] = v;
  st->set_agents(s.agents);
  st->set_pilots(s.pilots);
  st->set_slots_total(s.slots_total);
  st->set_slots_used(s.slots_used);
  st->set_store_path(config_.profile.store_file().string());
  send_to(peer, env, rid);
}

// -------------------------------------------------------------------------------------------
// Pilots

store::PilotRow Hub::pilot_row(const Pilot& p) const {
  store::PilotRow r;
  r.id = p.id.value;
  p.spec.SerializeToString(&r.spec);
  r.state = p.state;
  r.created_ms = p.created_ms;
  r.ended_ms = p.ended_ms;
  r.reason = p.reason;
  r.batch_id = p.batch_id;
  return r;
}

void Hub::pilot_changed(Pilot& p) { batch().pilots.push_back(pilot_row(p)); }

void Hub::update_pilot_state(Pilot& p) {
  if (p.state == "ended" || p.state == "failed" || p.state == "cancelled")
    return;
  std::size_t up = 0, waiting = 0;
  for (auto id : p.agents) {
    auto it = agents_.find(id);
    if (it == agents_.end())
      continue;
    up += it->second.peer != nullptr;
    waiting += it->second.peer == nullptr && it->second.reconnect_deadline > 0;
  }
  std::size_t live_pids = p.batch_alive ? 1 : 0;
  for (int pid : p.pids)
    live_pids += !dead_pids_.contains(pid);
  std::string next = p.state;
  bool waiting_in_queue = p.reason.starts_with("waiting in the batch queue: ");
  if (up > 0) {
    if (p.state != "draining")
      next = "running";
  } else if (waiting > 0 || live_pids > 0) {
    if (p.state == "submitting")
      next = "pending";
  } else if (p.cancel_requested || stopping_) {
    // `pilot cancel` cancels; a walltime or a hub stop ends it, whatever its kind.
    next = p.cancelled_by_user ? "cancelled" : "ended";
    if (stopping_ && !p.cancelled_by_user) // whatever its driver saw of its end
      p.reason = "the hub stopped";
  } else if (p.state == "running" || p.state == "draining") {
    next = "ended";
    if (p.reason.empty() || waiting_in_queue)
      p.reason = "all its agents have exited";
  } else {
    next = "failed";
    if (p.reason.empty() || waiting_in_queue)
      p.reason = "its agents exited before registering with the hub";
  }
  if (next != "pending" && p.reason.starts_with("waiting in the batch queue: "))
    p.reason.clear(); // it no longer waits (and ended with no other word)
  if (next != p.state) {
    log::info("pilot {}: {} -> {}{}", p.id.value, p.state, next,
              p.reason.empty() ? "" : " (" + p.reason + ")");
    p.state = next;
    if (next == "ended" || next == "failed" || next == "cancelled")
      p.ended_ms = clock_.now_ms();
    pilot_changed(p);
  }
}

void Hub::handle_pilot_add(const std::shared_ptr<Peer>& peer,
                           std::uint64_t rid,
                           const pb::PilotAddRequest& req) {
  if (stopping_)
    return reply_error(peer, rid, make_error(ErrorCode::Unavailable, "the hub is stopping"));
  pb::PilotSpec spec = req.spec();
  if (spec.resource().empty())
    spec.set_resource("local");
  const pb::ResourceSpec* resource = find_resource(spec.resource());
  if (!resource) {
    std::string known = "local";
    for (const auto& [name, r] : resources_)
      known += ", " + name;
    return reply_error(peer, rid,
                       make_error(ErrorCode::NotFound,
                                  fmt::format("resource '{}' is not defined: add it with `sortie "
                                              "resource add {} --type ...` (known: {})",
                                              spec.resource(), spec.resource(), known)));
  }
  if (resource->type() != "local") {
    if (auto r = check_remote_pilot(spec, *resource); !r.ok())
      return reply_error(peer, rid, r.error());
    Pilot p;
    p.id = PilotId(next_pilot_id_++);
    p.spec = spec;
    p.remote = true;
    return store_pilot(std::move(p), peer, rid, [this](Pilot& pilot) -> Result<void> {
      start_driver(pilot);
      return ok_result();
    });
  }
  if (spec.nodes() == 0)
    spec.set_nodes(spec.node_names_size() > 0 ? static_cast<std::uint32_t>(spec.node_names_size()) : 1);
  if (spec.nodes() > 256)
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument,
                                  "a local pilot may start at most 256 agents"));
  if (spec.slots_per_node() == 0) {
    long n = ::sysconf(_SC_NPROCESSORS_ONLN);
    spec.set_slots_per_node(static_cast<std::uint32_t>(n > 0 ? n : 1));
  }
  if (spec.slots_per_node() > 4096)
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument, "at most 4096 slots per node"));
  if (!valid_label(spec.label()))
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument,
                                  fmt::format("label '{}' is not valid: use letters, digits, '-', "
                                              "'_' and '.' (at most 64)",
                                              spec.label())));
  if (spec.node_names_size() > 0 && static_cast<std::uint32_t>(spec.node_names_size()) != spec.nodes())
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument,
                                  fmt::format("{} node names for {} nodes: give one name per node",
                                              spec.node_names_size(), spec.nodes())));
  PilotId id(next_pilot_id_++);
  if (spec.node_names_size() == 0)
    for (std::uint32_t k = 1; k <= spec.nodes(); ++k)
      spec.add_node_names(fmt::format("local-{}-{}", id.value, k));
  std::unordered_set<std::string> names;
  for (const auto& n : spec.node_names()) {
    if (!valid_node_name(n))
      return reply_error(peer, rid,
                         make_error(ErrorCode::InvalidArgument,
                                    fmt::format("node name '{}' is not valid: use letters, digits, "
                                                "'-', '_' and '.'",
                                                n)));
    if (!names.insert(n).second)
      return reply_error(peer, rid,
                         make_error(ErrorCode::InvalidArgument,
                                    fmt::format("node name '{}' is given twice", n)));
    for (const auto& [aid, a] : agents_)
      if (a.peer && a.node == n)
        return reply_error(peer, rid,
                           make_error(ErrorCode::AlreadyExists,
                                      fmt::format("a node named '{}' is already connected (pilot "
                                                  "{}); choose other names",
                                                  n, a.pilot.value)));
  }
  if (spec.walltime_ms() < 0)
    return reply_error(peer, rid, make_error(ErrorCode::InvalidArgument, "walltime cannot be negative"));
  if (spec.gpus_per_node() > 64)
    return reply_error(peer, rid,
                       make_error(ErrorCode::InvalidArgument, "at most 64 GPUs per node"));
  Pilot p;
  p.id = id;
  p.spec = spec;
  store_pilot(std::move(p), peer, rid, [this, id](Pilot& pilot) -> Result<void> {
    launch::PilotRequest lr;
    lr.pilot = id;
    for (const auto& n : pilot.spec.node_names()) {
      launch::AgentRequest ar{n, pilot.spec.slots_per_node(), pilot.spec.label()};
      for (std::uint32_t g = 0; g < pilot.spec.gpus_per_node(); ++g)
        ar.gpus.push_back(g);
      ar.memory = pilot.spec.memory_per_node();
      ar.walltime_end_ms = pilot.end_ms;
      lr.agents.push_back(std::move(ar));
    }
    auto alloc = launcher_.submit(lr);
    if (!alloc.ok()) {
      pilot.reason = alloc.error().to_string();
      pilot.state = "failed";
      pilot.ended_ms = clock_.now_ms();
      pilot_changed(pilot);
      return alloc.error().with_context(fmt::format("pilot {}", id.value));
    }
    pilot.pids = alloc->pids;
    for (int pid : pilot.pids)
      pilot_by_pid_[pid] = id;
    pilot.state = "pending";
    pilot_changed(pilot);
    return ok_result();
  });
}

void Hub::store_pilot(Pilot p,
                      const std::shared_ptr<Peer>& peer,
                      std::uint64_t rid,
                      std::function<Result<void>(Pilot&)> start) {
  p.state = "submitting";
  p.created_ms = clock_.now_ms();
  // A local pilot's walltime runs from now; a batch pilot's from its job's start (its agents say).
  if (!p.remote && p.spec.walltime_ms())
    p.end_ms = p.created_ms + p.spec.walltime_ms();
  PilotId id = p.id;
  batch().pilots.push_back(pilot_row(p));
  pilots_.emplace(id, std::move(p));
  batch().on_commit.push_back([this, alive = alive_, peer, rid, id,
                               start = std::move(start)](const Result<void>& r) {
    if (!*alive)
      return;
    auto it = pilots_.find(id);
    if (it == pilots_.end())
      return;
    if (!r.ok()) {
      pilots_.erase(it);
      return reply_error(peer, rid, r.error());
    }
    if (auto started = start(it->second); !started.ok())
      return reply_error(peer, rid, started.error());
    pb::Envelope env;
    env.mutable_pilot_add_reply()->set_pilot_id(id.value);
    send_to(peer, env, rid);
  });
}

void Hub::handle_pilot_list(const std::shared_ptr<Peer>& peer, std::uint64_t rid) {
  pb::Envelope env;
  auto* list = env.mutable_pilot_list_reply();
  std::vector<const Pilot*> sorted;
  for (const auto& [id, p] : pilots_)
    sorted.push_back(&p);
  std::sort(sorted.begin(), sorted.end(),
            [](const Pilot* a, const Pilot* b) { return a->id < b->id; });
  for (const Pilot* p : sorted) {
    auto* info = list->add_pilots();
    info->set_id(p->id.value);
    *info->mutable_spec() = p->spec;
    info->set_state(p->state);
    info->set_created_ms(p->created_ms);
    info->set_reason(p->reason);
    info->set_end_ms(p->end_ms);
    info->set_batch_id(p->batch_id);
    std::uint64_t total = 0, used = 0;
    std::uint32_t up = 0;
    for (auto aid : p->agents) {
      auto it = agents_.find(aid);
      if (it == agents_.end() || !it->second.peer)
        continue;
      ++up;
      info->add_nodes(it->second.node);
      total += it->second.slots;
      for (auto jid : it->second.jobs)
        if (const Job* j = find_job(jid.value); j && j->state == JobState::Running)
          used += specs_[j->spec - 1].req.slots;
    }
    info->set_nodes_up(up);
    info->set_slots_total(total);
    info->set_slots_used(used);
  }
  send_to(peer, env, rid);
}

void Hub::handle_pilot_cancel(const std::shared_ptr<Peer>& peer,
                              std::uint64_t rid,
                              const pb::PilotCancelRequest& req) {
  auto it = pilots_.find(PilotId(req.pilot_id()));
  if (it == pilots_.end())
    return reply_error(peer, rid,
                       make_error(ErrorCode::NotFound,
                                  fmt::format("pilot {} does not exist", req.pilot_id())));
  Pilot& p = it->second;
  if (p.state == "ended" || p.state == "failed" || p.state == "cancelled")
    return reply_error(peer, rid,
                       make_error(ErrorCode::FailedPrecondition,
                                  fmt::format("pilot {} is already {}", p.id.value, p.state)));
  p.cancelled_by_user = true;
  stop_pilot(p, fmt::format("cancelled by {}", peer->describe()));
  pb::Envelope env;
  env.mutable_ok();
  send_to(peer, env, rid);
}

void Hub::stop_pilot(Pilot& p, const std::string& reason) {
  p.cancel_requested = true;
  p.reason = reason;
  for (auto aid : p.agents) {
    auto a = agents_.find(aid);
    if (a == agents_.end())
      continue;
    scheduler_.set_accepting(aid, false);
    if (a->second.peer) {
      pb::Envelope env;
      env.mutable_shutdown()->set_reason(fmt::format("pilot {}: {}", p.id.value, reason));
      a->second.peer->send(env);
    }
  }
  // Agents that never registered (or hang) get SIGTERM from the launcher as well; a remote
  // pilot's batch job is cancelled.
  launcher_.cancel(launch::Allocation{p.pids});
  if (auto d = drivers_.find(p.id); d != drivers_.end())
    d->second->cancel();
  update_pilot_state(p);
}

void Hub::on_local_process_exit(int pid, int status) {
  dead_pids_.insert(pid);
  auto pit = pilot_by_pid_.find(pid);
  if (pit == pilot_by_pid_.end())
    return;
  PilotId pilot_id = pit->second;
  pilot_by_pid_.erase(pit);
  std::string how = launch::exit_text(status);
  // An agent process of ours is gone: if its link already closed, its jobs are lost now (no
  // point waiting for a reconnect that cannot come).
  std::vector<AgentId> dead;
  for (auto& [id, a] : agents_)
    if (a.pid == pid && a.local && !a.peer && a.reconnect_deadline > 0)
      dead.push_back(id);
  for (auto id : dead)
    local_agent_died(id, fmt::format("its process exited ({})", how));
  auto p = pilots_.find(pilot_id);
  if (p == pilots_.end())
    return;
  bool registered = false;
  for (auto aid : p->second.agents)
    if (auto a = agents_.find(aid); a != agents_.end() && a->second.pid == pid)
      registered = true;
  if (!registered && !p->second.cancel_requested && !stopping_ && p->second.reason.empty())
    p->second.reason = fmt::format("an agent exited ({}) before registering; see {}", how,
                                   config_.profile.agent_log_dir().string());
  update_pilot_state(p->second);
}

// -------------------------------------------------------------------------------------------
// Agents

void Hub::on_agent_register(const std::shared_ptr<Peer>& peer,
                             const pb::AgentRegister& reg,
                             bool stdio) {
  if (stopping_) {
    peer->close_with_error(make_error(ErrorCode::Unavailable, "the hub is stopping"));
    return;
  }
  if (reg.slots() == 0 || reg.slots() > 4096 || !valid_node_name(reg.node_name()) ||
      !valid_label(reg.label())) {
    peer->close_with_error(make_error(ErrorCode::InvalidArgument,
                                      "agent registration is invalid: it needs 1..4096 slots, a "
                                      "node name and a valid label",
                                      peer->describe()));
    return;
  }
  std::vector<std::uint64_t> kill;
  auto existing = agents_.find(AgentId(reg.agent_id()));
  if (reg.agent_id() != 0 && existing != agents_.end() &&
      (existing->second.peer || existing->second.reconnect_deadline > 0)) {
    // A reconnect: after a network drop or a hub restart. Only the agent that registered holds
    // its session key: anyone else with the profile's token cannot take its jobs over.
    Agent& a = existing->second;
    // The proof names the epoch of the agent's last AgentRegistered; the one before is taken too,
    // since a link can drop before that reply arrives.
    auto proves = [&](std::uint64_t epoch) {
      return epoch > 0 && protocol::proofs_equal(reg.session_proof(),
                                                 protocol::agent_session_proof(
                                                     a.session_key, a.id.value, epoch));
    };
    std::uint64_t proven = proves(a.epoch) ? a.epoch : proves(a.epoch - 1) ? a.epoch - 1 : 0;
    if (!a.session_key.empty() && proven == 0) {
      log::warn("refused a reconnect as agent {} ({}) from {}: its session proof for epoch {} is "
                "wrong (an old session or an impostor)",
                a.id.value, a.node, peer->describe(), a.epoch);
      peer->close_with_error(make_error(
          ErrorCode::PermissionDenied,
          fmt::format("agent {} is registered to another session: this is an old or foreign "
                      "session; start a new agent instead (it registers with a new id)",
                      a.id.value)));
      return;
    }
    // The next epoch after the one it proved: an agent that missed a reply (its link dropped
    // before AgentRegistered arrived) does not fall behind for good.
    a.epoch = (a.session_key.empty() ? a.epoch : proven) + 1;
    if (a.peer) {
      agent_by_peer_.erase(a.peer.get());
      a.peer->close_with_error(make_error(ErrorCode::AlreadyExists,
                                          "this agent connected again on another link"));
    }
    a.peer = peer;
    a.reconnect_deadline = 0;
    a.awaiting_keeper = false;
    a.hostname = reg.hostname();
    a.pid = reg.pid();
    a.keeper_pid = reg.keeper_pid();
    a.slots = reg.slots();
    a.memory = reg.memory_bytes();
    a.gpus.assign(reg.gpus().begin(), reg.gpus().end());
    a.walltime_end_ms = reg.walltime_end_ms();
    a.limits = reg.limits();
    a.address = reg.address().empty() ? reg.hostname() : reg.address();
    agent_by_peer_[peer.get()] = a.id;
    std::unordered_set<JobId> reported;
    for (const auto& aj : reg.jobs()) {
      Job* j = find_job(aj.job_id());
      if (j && j->agent == a.id.value && j->attempt == aj.attempt() &&
          (j->state == JobState::Assigned || j->state == JobState::Running)) {
        reported.insert(JobId(j->id));
        if (aj.started() && j->state == JobState::Assigned) {
          j->started = true;
          transition(*j, JobState::Running, clock_.now_ms());
        }
      } else {
        kill.push_back(aj.job_id());
      }
    }
    schedule_on(a);
    // Results that finished while the hub could not hear them.
    for (const auto& ev : reg.unacked().events()) {
      if (ev.kind() == pb::JobEvent::FINISHED) {
        reported.insert(JobId(ev.job_id()));
        apply_finished(a, ev);
      }
    }
    std::vector<JobId> missing;
    for (auto jid : a.jobs)
      if (!reported.contains(jid))
        missing.push_back(jid);
    for (auto jid : missing) {
      Job* j = find_job(jid.value);
      if (!j->started && j->state == JobState::Assigned)
        requeue(*j, true); // never reached the agent
      else
        job_lost(*j, fmt::format("agent {} no longer knows it after reconnecting", a.node));
    }
    for (auto jid : a.jobs)
      if (const Job* j = find_job(jid.value); j && !span_lost_.contains(jid.value))
        scheduler_.adopt(jid, a.id, specs_[j->spec - 1].req, gpus_of(j->gpu_mask));
    log::info("agent {} ({}) reconnected with {} jobs from {}", a.id.value, a.node, a.jobs.size(),
              peer->describe());
    std::uint64_t seq = reg.unacked().seq();
    AgentId id = a.id;
    batch().agents.push_back(agent_row(a, true));
    batch().on_commit.push_back([this, alive = alive_, peer, id, kill, seq](const Result<void>& r) {
      if (!*alive || peer->closed())
        return;
      if (!r.ok())
        return peer->close_with_error(r.error());
      finish_registration(peer, id, kill);
      if (seq) {
        pb::Envelope ack;
        ack.mutable_job_events_ack()->set_seq(seq);
        peer->send(ack);
      }
      // Cancels that happened while it was away, and jobs it must stop: after AgentRegistered,
      // which must be the first thing it hears.
      auto it = agents_.find(id);
      if (it == agents_.end() || it->second.peer != peer)
        return;
      std::vector<JobId> jobs(it->second.jobs.begin(), it->second.jobs.end());
      for (auto jid : jobs) {
        Job* j = find_job(jid.value);
        if (j && j->cancel_requested) {
          j->cancel_requested = false;
          cancel_job(*j, j->reason);
        } else if (auto lost = span_lost_.find(jid.value); j && lost != span_lost_.end()) {
          send_kill(*j, lost->second);
        }
      }
    });
    if (auto p = pilots_.find(a.pilot); p != pilots_.end())
      update_pilot_state(p->second);
    return;
  }
  // A new agent. One that claims an id the hub does not know (its hub's store was replaced) starts
  // over and must kill whatever it still runs.
  for (const auto& aj : reg.jobs())
    kill.push_back(aj.job_id());
  // An agent is known by its pilot and node: two pilots may share a node (two Slurm jobs on
  // one host); one pilot may not have the node twice.
  for (const auto& [aid, other] : agents_)
    if (other.peer && other.pilot.value == reg.pilot_id() && other.node == reg.node_name()) {
      auto error = make_error(ErrorCode::AlreadyExists,
                              fmt::format("pilot {} already has a node named '{}' (agent {}); "
                                          "give this agent another name",
                                          reg.pilot_id(), reg.node_name(), aid.value));
      if (auto p = pilots_.find(PilotId(reg.pilot_id())); p != pilots_.end() &&
          p->second.reason.find(error.message) == std::string::npos)
        p->second.reason = p->second.reason.empty() ? error.message
                                                    : p->second.reason + "; " + error.message;
      peer->close_with_error(error);
      return;
    }
  Agent a;
  a.id = AgentId(next_agent_id_++);
  a.pilot = PilotId(reg.pilot_id());
  a.node = reg.node_name();
  a.hostname = reg.hostname();
  a.pid = reg.pid();
  a.keeper_pid = reg.keeper_pid();
  a.slots = reg.slots();
  a.cores = reg.cores();
  a.memory = reg.memory_bytes();
  a.label = reg.label();
  a.gpus.assign(reg.gpus().begin(), reg.gpus().end());
  a.walltime_end_ms = reg.walltime_end_ms();
  a.limits = reg.limits();
  a.address = reg.address().empty() ? reg.hostname() : reg.address();
  a.registered_ms = clock_.now_ms();
  a.peer = peer;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  a.local = !stdio && (pilot_by_pid_.contains(a.pid) || (a.hostname == host && a.pid > 0));
  a.stdio = stdio;
  a.session_key = protocol::random_bytes(32);
  a.epoch = 1;
  AgentId id = a.id;
  agent_by_peer_[peer.get()] = id;
  batch().agents.push_back(agent_row(a, true));
  agents_.emplace(id, std::move(a));
  log::info("agent {} registered: node {}, {} slots{}, pilot {}, from {}", id.value,
            reg.node_name(), reg.slots(), reg.label().empty() ? "" : ", label " + reg.label(),
            reg.pilot_id(), peer->describe());
  batch().on_commit.push_back([this, alive = alive_, peer, id, kill](const Result<void>& r) {
    if (!*alive)
      return;
    if (!r.ok()) {
      peer->close_with_error(r.error());
      return;
    }
    if (peer->closed())
      return;
    auto it = agents_.find(id);
    if (it == agents_.end() || it->second.peer != peer)
      return;
    schedule_on(it->second);
    finish_registration(peer, id, kill);
    if (auto p = pilots_.find(it->second.pilot); p != pilots_.end()) {
      p->second.agents.insert(id);
      // A batch pilot's walltime starts when its job does: its agents know when it ends.
      std::int64_t end = it->second.walltime_end_ms;
      if (p->second.remote && end > 0 && (p->second.end_ms == 0 || end < p->second.end_ms)) {
        p->second.end_ms = end;
        pilot_changed(p->second);
      }
      update_pilot_state(p->second);
    }
  });
}

scheduler::NodeInfo Hub::node_info(const Agent& a) const {
  std::uint32_t rounds = config_.launch_queue ? config_.launch_queue : a.queue_rounds;
  scheduler::NodeInfo n;
  n.slots = a.slots;
  n.queue_slots = a.slots * rounds;
  n.memory = a.memory;
  n.gpus = a.gpus;
  n.walltime_end_ms = a.walltime_end_ms;
  return n;
}

void Hub::schedule_on(const Agent& a) {
  auto info = node_info(a);
  info.name = scheduler_.intern(a.node);
  info.label = scheduler_.intern(a.label);
  info.pool = a.pilot.value ? scheduler_.intern(fmt::format("pilot {}", a.pilot.value)) : 0;
  scheduler_.add_node(a.id, info);
}

void Hub::learn_runtime(Agent& a, std::int64_t runtime_ms) {
  if (config_.launch_queue != 0 || runtime_ms < 0)
    return;
  double r = static_cast<double>(runtime_ms);
  a.runtime_ms = a.runtime_ms < 0 ? r : 0.8 * a.runtime_ms + 0.2 * r;
  auto rounds = static_cast<std::uint32_t>(
      std::clamp(std::ceil(kLaunchBufferMs / std::max(a.runtime_ms, 1.0)), 1.0,
                 static_cast<double>(kMaxLaunchRounds)));
  if (rounds != a.queue_rounds) {
    a.queue_rounds = rounds;
    scheduler_.set_queue_slots(a.id, a.slots * rounds);
  }
}

void Hub::finish_registration(const std::shared_ptr<Peer>& peer,
                              AgentId id,
                              std::vector<std::uint64_t> kill) {
  pb::Envelope env;
  auto* r = env.mutable_agent_registered();
  r->set_agent_id(id.value);
  r->set_output_credit(config_.output_credit);
  r->set_reconnect_window_ms(config_.agent_reconnect_window_ms);
  r->set_kill_grace_ms(config_.kill_grace_ms);
  const Agent& agent = agents_.at(id);
  r->set_lease_ms(lease_ms(agent.stdio));
  r->set_session_key(agent.session_key);
  r->set_epoch(agent.epoch);
  for (auto k : kill)
    r->add_kill_jobs(k);
  peer->send(env);
  request_schedule();
}

void Hub::on_agent_frame(const std::shared_ptr<Peer>& peer, pb::Envelope& env) {
  auto it = agent_by_peer_.find(peer.get());
  if (it == agent_by_peer_.end()) {
    peer->close_with_error(make_error(ErrorCode::FailedPrecondition,
                                      fmt::format("protocol error: '{}' before the agent was "
                                                  "registered",
                                                  protocol::body_name(env))));
    return;
  }
  Agent& agent = agents_.at(it->second);
  switch (env.body_case()) {
  case pb::Envelope::kJobEvents:
    return handle_job_events(agent, env.job_events());
  case pb::Envelope::kOutput:
    return handle_output(agent, *env.mutable_output());
  case pb::Envelope::kGoodbye:
    return;
  default:
    peer->close_with_error(make_error(ErrorCode::InvalidArgument,
                                      fmt::format("protocol error: an agent may not send '{}'",
                                                  protocol::body_name(env))));
  }
}

void Hub::handle_job_events(Agent& agent, const pb::JobEvents& events) {
  for (const auto& ev : events.events()) {
    if (ev.kind() == pb::JobEvent::STARTED)
      apply_started(agent, ev);
    else if (ev.kind() == pb::JobEvent::FINISHED)
      apply_finished(agent, ev);
  }
  if (events.seq() == 0)
    return;
  // The agent forgets finished results only once they are durable here.
  batch().on_commit.push_back(
      [alive = alive_, peer = agent.peer, seq = events.seq()](const Result<void>& r) {
        if (!*alive || !r.ok() || !peer || peer->closed())
          return;
        pb::Envelope ack;
        ack.mutable_job_events_ack()->set_seq(seq);
        peer->send(ack);
      });
}

void Hub::apply_started(Agent& agent, const pb::JobEvent& ev) {
  Job* job = find_job(ev.job_id());
  if (!job || job->agent != agent.id.value || job->attempt != ev.attempt() ||
      job->state != JobState::Assigned) {
    log::debug("agent {}: ignoring start of job {} attempt {}", agent.node, ev.job_id(), ev.attempt());
    return;
  }
  job->started = true;
  job->start_ms = ev.time_ms();
  job->limits = limits_code(ev.limits());
  transition(*job, JobState::Running, ev.time_ms());
  // Followers waiting for the first start follow this attempt from its beginning.
  if (auto it = followers_.find(job->id); it != followers_.end())
    for (auto& f : it->second)
      if (f->attempt == 0)
        f->attempt = job->attempt;
}

void Hub::apply_finished(Agent& agent, const pb::JobEvent& ev) {
  Job* job = find_job(ev.job_id());
  if (!job || job->agent != agent.id.value || job->attempt != ev.attempt() ||
      (job->state != JobState::Assigned && job->state != JobState::Running)) {
    log::debug("agent {}: ignoring end of job {} attempt {}", agent.node, ev.job_id(), ev.attempt());
    return;
  }
  if (auto lost = span_lost_.find(job->id); lost != span_lost_.end()) {
    std::string why = std::move(lost->second);
    span_lost_.erase(lost);
    return job_lost(*job, why);
  }
  detach_from_agent(*job);
  request_schedule();
  std::int64_t now = ev.time_ms() ? ev.time_ms() : clock_.now_ms();
  if (job->start_ms > 0 && !ev.killed())
    learn_runtime(agent, now - job->start_ms);
  job->end_ms = now;
  job->usage = {ev.usage().user_cpu_us(), ev.usage().system_cpu_us(), ev.usage().max_rss_kib()};
  job->has_exit_code = ev.has_exit_code();
  job->exit_code = ev.exit_code();
  job->has_signal = ev.has_signal();
  job->signal = static_cast<std::int16_t>(ev.signal());
  if (ev.killed() && !job->cancel_requested) {
    // Killed by its agent's shutdown (pilot cancelled or past its walltime, hub stopping), not
    // by the user: a lost attempt, run again elsewhere while retries remain.
    return job_lost(*job, fmt::format("its agent {} shut down", agent.node));
  }
  const Spec& spec = specs_[job->spec - 1];
  JobState to;
  if (ev.killed()) {
    to = JobState::Cancelled;
  } else if (ev.timed_out()) {
    to = JobState::TimedOut;
    job->reason = fmt::format("ran longer than its run timeout of {}",
                              format_duration_ms(run_timeout_of(spec)));
  } else if (ev.memory_exceeded()) {
    to = JobState::Failed;
    job->reason = fmt::format("killed for using more than its {} of memory (enforced by {})",
                              format_size_bytes(spec.req.memory), kLimitNames[job->limits]);
  } else if (!ev.error().empty()) {
    to = JobState::Failed;
    job->reason = ev.error();
  } else if (ev.has_exit_code() && ev.exit_code() == 0) {
    to = JobState::Succeeded;
  } else {
    to = JobState::Failed;
    job->reason = ev.has_signal() ? fmt::format("killed by {}", signal_name(ev.signal()))
                                  : fmt::format("exit code {}", ev.exit_code());
    if (spec.req.memory && job->limits == limits_code("rlimit"))
      job->reason += fmt::format(" (its address space was limited to {} with RLIMIT_AS: it may "
                                 "have run out of memory)",
                                 format_size_bytes(spec.req.memory));
  }
  if (job->out_lost > 0 && job->reason.find("part of its output could not") == std::string::npos)
    job->reason = job->reason.empty() ? output_loss_note(*job)
                                      : job->reason + "; " + output_loss_note(*job);
  transition(*job, to, now);
  if (to == JobState::Failed && !job->cancel_requested && may_retry(*job, true)) {
    ++job->fail_count;
    log::info("job {} failed ({}); retry {} of {}", job->id, job->reason,
              job->lost_count + job->fail_count, spec.retries);
    requeue(*job, true);
    followers_attempt_ended(*job);
    return;
  }
  job_final(*job);
}

void Hub::handle_output(Agent& agent, pb::OutputBatch& out) {
  std::uint64_t bytes = 0;
  auto& b = batch();
  std::vector<store::OutputWrite> tries; // what each chunk's write became (no data)
  for (auto& c : *out.mutable_chunks()) {
    bytes += c.data().size();
    Job* job = find_job(c.job_id());
    int stream = c.stream() == pb::STREAM_STDERR ? 1 : 0;
    if (!job || job->agent != agent.id.value || job->attempt != c.attempt() || c.offset() < 0) {
      log::debug("agent {}: dropping output of job {} attempt {}", agent.node, c.job_id(),
                 c.attempt());
      continue;
    }
    std::int64_t end = c.offset() + static_cast<std::int64_t>(c.data().size());
    job->out_bytes[stream] = std::max<std::uint64_t>(job->out_bytes[stream], static_cast<std::uint64_t>(end));
    if (auto it = followers_.find(job->id); it != followers_.end())
      for (auto& f : it->second)
        if (f->attempt == c.attempt() && f->stream == stream)
          follower_deliver(f, c.offset(), c.data());
    auto status = std::make_shared<store::OutputStatus>();
    tries.push_back({job->id, c.attempt(), stream, c.offset(), {}, status});
    b.output.push_back({job->id, c.attempt(), stream, c.offset(), std::move(*c.mutable_data()),
                        std::move(status)});
  }
  if (bytes == 0)
    return;
  // Credit returns once the bytes are on disk: the agent's memory bounds what is in flight. A
  // write that failed (a full disk) keeps its credit until a later try writes it.
  b.on_commit.push_back([this, alive = alive_, id = agent.id, bytes,
                         tries = std::move(tries)](const Result<void>&) mutable {
    if (!*alive)
      return;
    std::uint64_t held = 0;
    for (auto& w : tries)
      if (w.status->error != 0) {
        held += w.status->data.size();
        output_retry(id, std::move(w), 1);
      }
    credit_agent(id, bytes - held);
  });
}

void Hub::credit_agent(AgentId id, std::uint64_t bytes) {
  auto it = agents_.find(id);
  if (bytes == 0 || it == agents_.end() || !it->second.peer || it->second.peer->closed())
    return;
  pb::Envelope env;
  env.mutable_output_credit()->set_bytes(bytes);
  it->second.peer->send(env);
}

void Hub::output_retry(AgentId agent, store::OutputWrite w, int tries) {
  int error = w.status->error;
  w.data = std::move(w.status->data);
  std::uint64_t size = w.data.size();
  Job* job = find_job(w.job_id);
  if (tries * kOutputRetryMs <= config_.output_retry_ms && job && job->attempt == w.attempt) {
    output_retries_.push_back({agent, std::move(w), tries, clock_.monotonic_ms() + kOutputRetryMs});
    return;
  }
  // Given up: the bytes are lost, the job says so, and the agent gets its credit back.
  credit_agent(agent, size);
  if (!job || job->attempt != w.attempt)
    return;
  bool first = job->out_lost == 0;
  job->out_lost += size;
  log::error("job {} attempt {}: {} bytes of its output at {} offset {} could not be written: {}",
             job->id, w.attempt, size, w.stream ? "stderr" : "stdout", w.offset,
             std::strerror(error));
  if (first) {
    std::string note = output_loss_note(*job);
    job->reason = job->reason.empty() ? note : job->reason + "; " + note;
    mark_dirty(*job);
  }
}

std::string Hub::output_loss_note(const Job& job) const {
  return fmt::format("part of its output could not be written ({} bytes so far; see hub.log) and "
                     "is missing from its output files",
                     job.out_lost);
}

void Hub::output_retries_due(std::int64_t now) {
  std::vector<OutputRetry> due;
  std::erase_if(output_retries_, [&](OutputRetry& r) {
    if (r.due_ms > now)
      return false;
    due.push_back(std::move(r));
    return true;
  });
  for (auto& r : due) {
    r.write.status = std::make_shared<store::OutputStatus>();
    auto status = r.write.status;
    store::OutputWrite meta{r.write.job_id, r.write.attempt, r.write.stream, r.write.offset, {},
                            status};
    std::uint64_t size = r.write.data.size();
    batch().output.push_back(std::move(r.write));
    batch().on_commit.push_back([this, alive = alive_, agent = r.agent, meta = std::move(meta),
                                 size, tries = r.tries](const Result<void>&) mutable {
      if (!*alive)
        return;
      if (meta.status->error == 0)
        credit_agent(agent, size);
      else
        output_retry(agent, std::move(meta), tries + 1);
    });
  }
}

void Hub::on_agent_closed(const std::shared_ptr<Peer>& peer, const Error& reason, bool goodbye) {
  auto it = agent_by_peer_.find(peer.get());
  if (it == agent_by_peer_.end())
    return;
  AgentId id = it->second;
  agent_by_peer_.erase(it);
  auto a_it = agents_.find(id);
  if (a_it == agents_.end() || a_it->second.peer != peer)
    return; // replaced by a newer link
  Agent& a = a_it->second;
  a.peer.reset();
  scheduler_.remove_node(id);
  bool process_dead = a.local && (dead_pids_.contains(a.pid) || !launcher_.process_alive(a.pid));
  if (process_dead && !goodbye && !stopping_)
    return local_agent_died(id, "its process died");
  if (goodbye || stopping_ || process_dead || (a.stdio && a.jobs.empty() && a.held.empty())) {
    agent_gone(id,
               goodbye        ? "it shut down"
               : process_dead ? "its process died"
               : a.stdio      ? fmt::format("its ssh link ended: {}", reason.message)
                              : "the hub is stopping",
               goodbye || stopping_);
    return;
  }
  // Never two live copies: the agent's keeper ends it and its jobs one lease after the newest
  // heartbeat of its that we received, unless it renews the lease with us; so its jobs are
  // requeued only after that, plus a margin for the kill (docs/architecture.md §5).
  std::int64_t wait = lease_ms(a.stdio) + kReconnectMarginMs - peer->silent_ms();
  a.reconnect_deadline = clock_.monotonic_ms() + wait;
  a.away_reason = a.stdio ? fmt::format("its ssh link ended: {}", reason.message) : reason.message;
  log::warn("agent {} ({}) disconnected: {}; its {} jobs keep their state until it reconnects "
            "(within {})",
            id.value, a.node, reason.to_string(), a.jobs.size(), format_duration_ms(wait));
  if (auto p = pilots_.find(a.pilot); p != pilots_.end())
    update_pilot_state(p->second);
}


void Hub::local_agent_died(AgentId id, const std::string& why) {
  Agent& a = agents_.at(id);
  if (!keeper_running(a.keeper_pid))
    return agent_gone(id, why);
  // Its keeper is killing its jobs right now: their new attempts wait until it is done (the
  // tick looks again), so the old and the new never overlap.
  a.awaiting_keeper = true;
  a.away_reason = why;
  a.reconnect_deadline = clock_.monotonic_ms() + lease_ms(a.stdio) + kReconnectMarginMs;
}

void Hub::agent_gone(AgentId id, const std::string& why, bool orderly) {
  auto it = agents_.find(id);
  if (it == agents_.end())
    return;
  Agent& a = it->second;
  if (a.peer) {
    agent_by_peer_.erase(a.peer.get());
    a.peer->close_with_error(make_error(ErrorCode::Unavailable, "agent removed: " + why));
    a.peer.reset();
  }
  a.reconnect_deadline = 0;
  a.awaiting_keeper = false;
  scheduler_.remove_node(id);
  std::vector<JobId> jobs(a.jobs.begin(), a.jobs.end());
  std::sort(jobs.begin(), jobs.end());
  if (!jobs.empty())
    log::warn("agent {} ({}) is gone ({}): {} of its jobs are lost", id.value, a.node, why,
              jobs.size());
  else
    log::info("agent {} ({}) is gone ({})", id.value, a.node, why);
  for (auto jid : jobs) {
    Job* j = find_job(jid.value);
    if (!j)
      continue;
    // An agent that leaves in order has reported every start before leaving, so a job it never
    // started goes back without using a retry. Any other loss may have started the job, whether
    // or not the start was reported: it counts against the job's retries.
    if (orderly && j->state == JobState::Assigned && !j->started && !j->cancel_requested)
      requeue(*j, true);
    else
      job_lost(*j, fmt::format("agent {} on {} was lost: {}", a.node, a.hostname, why));
  }
  a.jobs.clear();
  // MPI jobs run from another node that held slots here: their ranks here are gone.
  std::vector<JobId> held(a.held.begin(), a.held.end());
  std::sort(held.begin(), held.end());
  for (auto jid : held) {
    Job* j = find_job(jid.value);
    if (!j || (j->state != JobState::Assigned && j->state != JobState::Running))
      continue;
    // Killed on the node that runs it; lost (and retried) when that node reports the end.
    std::string reason = fmt::format("node {} of this MPI job was lost: {}", a.node, why);
    span_lost_.emplace(j->id, reason);
    send_kill(*j, reason);
  }
  a.held.clear();
  batch().agents.push_back(agent_row(a, false));
  if (auto p = pilots_.find(a.pilot); p != pilots_.end()) {
    Pilot& pilot = p->second;
    pilot.agents.erase(id);
    // An ssh pilot whose last link is gone cannot get it back: end its ssh processes.
    if (a.stdio && pilot.remote && !pilot.cancel_requested && !stopping_) {
      bool any_up = false;
      for (auto other : pilot.agents)
        if (auto o = agents_.find(other); o != agents_.end() && o->second.peer)
          any_up = true;
      if (!any_up) {
        if (pilot.reason.empty())
          pilot.reason = fmt::format("agent {}: {}", a.node, why);
        if (auto d = drivers_.find(pilot.id); d != drivers_.end())
          d->second->cancel();
      }
    }
    update_pilot_state(pilot);
  }
}

// -------------------------------------------------------------------------------------------
// Shutdown

void Hub::shutdown(std::function<void()> done, bool restart) {
  if (stopping_)
    return;
  stopping_ = true;
  tick_timer_.cancel();
  for (auto& w : waiters_)
    w->peer->close_with_error(make_error(ErrorCode::Unavailable, "the hub is stopping"));
  waiters_.clear();
  if (restart) {
    // As after a crash, but with everything flushed: pilots, agents and jobs carry on, and the
    // next hub takes them back without requeueing anything.
    log::info("restarting: pilots and their running jobs carry on");
    batch().on_commit.push_back([done = std::move(done)](const Result<void>&) { done(); });
    flush();
    return;
  }
  // Agents kill their jobs (SIGTERM, SIGKILL after kill_grace), report them and say goodbye;
  // the jobs that ran count a lost attempt and go back to the queue. Agents that are away now
  // cannot be told: their leases end them.
  std::vector<AgentId> away;
  for (auto& [id, a] : agents_) {
    if (a.peer) {
      pb::Envelope env;
      env.mutable_shutdown()->set_reason("the hub is stopping");
      a.peer->send(env);
    } else if (a.reconnect_deadline > 0) {
      away.push_back(id);
    }
  }
  for (auto id : away)
    agent_gone(id, "the hub stopped", true);
  for (auto& [id, p] : pilots_) {
    launcher_.cancel(launch::Allocation{p.pids});
    if (auto d = drivers_.find(id); d != drivers_.end())
      d->second->cancel();
  }
  shutdown_done_ = std::move(done);
  shutdown_deadline_ = clock_.monotonic_ms() + config_.kill_grace_ms + kShutdownMarginMs;
  shutdown_step();
}

bool Hub::agents_stopped() const {
  for (const auto& [id, a] : agents_)
    if (a.peer || (a.local && !dead_pids_.contains(a.pid) && launcher_.process_alive(a.pid)))
      return false;
  for (const auto& [id, p] : pilots_)
    for (int pid : p.pids)
      if (!dead_pids_.contains(pid) && launcher_.process_alive(pid))
        return false;
  return true;
}

void Hub::shutdown_step() {
  if (!agents_stopped() && clock_.monotonic_ms() < shutdown_deadline_) {
    // Polled: agents' goodbyes and exits arrive on their own, and a stop is rare.
    tick_timer_.expires_after(std::chrono::milliseconds(20));
    tick_timer_.async_wait([this, alive = alive_](error_code) {
      if (*alive)
        shutdown_step();
    });
    return;
  }
  std::vector<AgentId> left;
  for (auto& [id, a] : agents_)
    if (a.peer || a.reconnect_deadline > 0)
      left.push_back(id);
  if (!left.empty())
    log::warn("{} agents did not stop within {}; their keepers end their jobs", left.size(),
              format_duration_ms(config_.kill_grace_ms + kShutdownMarginMs));
  for (auto id : left) {
    Agent& a = agents_.at(id);
    if (a.peer)
      a.peer->close_with_error(make_error(ErrorCode::Unavailable, "the hub is stopping"));
    agent_gone(id, "the hub stopped", true);
  }
  for (auto& [id, p] : pilots_) {
    p.batch_alive = false;
    if (p.state != "ended" && p.state != "failed" && p.state != "cancelled") {
      p.reason = "the hub stopped";
      update_pilot_state(p);
    }
  }
  batch().on_commit.push_back([done = std::move(shutdown_done_)](const Result<void>&) { done(); });
  flush();
}

} // namespace sortie::hub
