// SPDX-License-Identifier: Apache-2.0
// Scheduling turns and assignments: the hub's side of the scheduler library.
#include "hub/placement.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "common/assert.hpp"
#include "protocol/auth.hpp"

namespace sortie::hub {
namespace {

constexpr std::size_t kScheduleStep = 4096; // assignments per loop turn
// With launch_queue = auto, an agent holds about this much queued work per slot: enough to
// cover the hub's round trip (agent batching, group commit, network) for very short jobs, and
// one job at most for long ones, so queued work rarely waits on a busy node.
constexpr double kLaunchBufferMs = 50;
// (Jobs of 1 ms still get their 50 ms: the agent sends their ends every 20 ms when busy.)
constexpr std::uint32_t kMaxLaunchRounds = 48;

} // namespace

std::uint32_t launch_rounds(double runtime_ms) {
  return static_cast<std::uint32_t>(
      std::clamp(std::ceil(kLaunchBufferMs / std::max(runtime_ms, 1.0)), 1.0,
                 static_cast<double>(kMaxLaunchRounds)));
}

Placement::Placement(Core& core, Jobs& jobs, Resources& resources)
    : core_(core), jobs_(jobs), resources_(resources) {
  core_.events.schedulable.subscribe([this] { request_schedule(); });
}

void Placement::request_schedule() {
  if (posted_ || core_.state.stopping)
    return;
  posted_ = true;
  core_.post([this] { schedule(); });
}

void Placement::schedule_on(const Agent& a) {
  auto& sched = core_.scheduler;
  std::uint32_t rounds = core_.config.launch_queue ? core_.config.launch_queue : a.queue_rounds;
  scheduler::NodeInfo n;
  n.slots = a.slots;
  n.queue_slots = a.slots * rounds;
  n.memory = a.memory;
  n.gpus = a.gpus;
  n.walltime_end_ms = a.walltime_end_ms;
  n.name = sched.intern(a.node);
  n.label = sched.intern(a.label);
  n.pool = a.pilot.valid() ? sched.intern(fmt::format("pilot {}", a.pilot)) : 0;
  sched.add_node(a.id, n);
}

void Placement::learn_runtime(Agent& a, std::int64_t runtime_ms) {
  if (core_.config.launch_queue != 0 || runtime_ms < 0)
    return;
  double r = static_cast<double>(runtime_ms);
  a.runtime_ms = a.runtime_ms < 0 ? r : 0.8 * a.runtime_ms + 0.2 * r;
  auto rounds = launch_rounds(a.runtime_ms);
  if (rounds != a.queue_rounds) {
    a.queue_rounds = rounds;
    core_.scheduler.set_queue_slots(a.id, a.slots * rounds);
  }
}

void Placement::schedule() {
  posted_ = false;
  auto& st = core_.state;
  if (st.stopping)
    return;
  std::int64_t now = core_.clock.now_ms();
  auto assignments = core_.scheduler.schedule(kScheduleStep, now);
  if (assignments.empty())
    return;
  std::unordered_map<AgentId, std::vector<std::pair<JobId, std::uint32_t>>> per_agent;
  for (const auto& a : assignments) {
    Job* job = st.find_job(a.job);
    Agent* agent = st.find_agent(a.node);
    SORTIE_CHECK(job && agent, "the scheduler only knows jobs and nodes the hub gave it");
    ++job->attempt;
    job->agent = a.node;
    job->started = false;
    job->out_bytes[0] = job->out_bytes[1] = 0;
    job->out_lost = 0;
    job->has_exit_code = job->has_signal = false;
    job->gpu_mask = gpu_mask_of(a.gpus);
    job->limits = 0;
    jobs_.transition(*job, JobState::Assigned, now);
    agent->jobs.insert(a.job);
    per_agent[a.node].emplace_back(job->id, job->attempt);
    if (!a.span.empty()) {
      for (std::size_t i = 1; i < a.span.size(); ++i)
        st.find_agent(a.span[i].first)->held.insert(a.job);
      st.spans[job->id] = a.span;
    }
  }
  // Assignments are committed before they are sent, so after a crash a job the store calls
  // queued was never handed to an agent.
  core_.durable.after_commit([this, per_agent = std::move(per_agent)](const Result<void>& r) {
    send_assignments(per_agent, r);
  });
  if (assignments.size() == kScheduleStep)
    request_schedule();
}

void Placement::send_assignments(
    const std::unordered_map<AgentId, std::vector<std::pair<JobId, std::uint32_t>>>& per_agent,
    const Result<void>& r) {
  auto& st = core_.state;
  for (const auto& [agent_id, list] : per_agent) {
    Agent* agent = st.find_agent(agent_id);
    pb::Envelope env;
    auto* assign = env.mutable_assign();
    for (auto [id, attempt] : list) {
      Job* job = st.find_job(id);
      if (!job || job->agent != agent_id || job->attempt != attempt ||
          job->state != JobState::Assigned)
        continue; // requeued or finished meanwhile
      if (job->cancel_requested) {
        // Cancelled before the assignment left the hub: it never reaches the agent.
        jobs_.detach_from_agent(*job);
        jobs_.end(*job, JobState::Cancelled);
        continue;
      }
      if (!r.ok()) {
        jobs_.requeue(*job, true);
        continue;
      }
      auto* a = assign->add_jobs();
      a->set_job_id(id.value);
      a->set_attempt(attempt);
      a->set_spec(st.spec_of(*job).bytes);
      if (const Group* g = st.group_of(*job); g && g->env)
        a->set_base_env(*g->env);
      if (job->is_array)
        a->set_array_index(job->array_index);
      for (auto g : gpus_of(job->gpu_mask))
        a->add_gpus(g);
      fill_span(*job, agent, *a);
      offer_direct(*job, agent, *a);
    }
    if (assign->jobs_size() > 0 && agent && agent->peer)
      agent->peer->send(env);
  }
  if (!r.ok())
    request_schedule();
}

void Placement::offer_direct(const Job& job, const Agent* agent, pb::Assignment& a) {
  // An engine of a local pilot runs beside the hub: a socket of the hub's own lets its frames
  // skip the agent's hop (05-tasks.md §5.9). MPI ranks on other nodes go through their agents.
  auto& st = core_.state;
  if (!agent || !st.spec_of(job).engine || a.mpi_hosts_size() > 1)
    return;
  if (const Pilot* p = st.find_pilot(agent->pilot); !p || p->remote)
    return;
  if (auto made = core_.direct.listen(job.id, job.attempt)) {
    a.set_engine_direct_socket(made->first);
    a.set_engine_direct_key(made->second);
  }
}

void Placement::fill_span(const Job& job, const Agent* agent, pb::Assignment& a) const {
  auto& st = core_.state;
  auto span = st.spans.find(job.id);
  if (span == st.spans.end())
    return;
  a.set_slots(span->second[0].second);
  std::uint32_t rank_slots = st.spec_of(job).rank_slots;
  for (auto [node, slots] : span->second) {
    auto* h = a.add_mpi_hosts();
    const Agent* n = st.find_agent(node);
    h->set_address(n ? n->address : std::string());
    h->set_ranks(slots / rank_slots);
  }
  // An engine job's ranks on the other nodes reach the hub through the agents there: one socket
  // name and key for all its nodes, which the hub chooses (05-tasks.md §5.7).
  if (st.spec_of(job).engine && span->second.size() > 1) {
    a.set_engine_socket("@sortie-engine-" + protocol::to_hex(protocol::random_bytes(12)));
    a.set_engine_key(protocol::to_hex(protocol::random_bytes(32)));
    pb::Envelope env;
    auto* h = env.mutable_engine_host();
    h->set_job_id(job.id.value);
    h->set_attempt(job.attempt);
    h->set_socket(a.engine_socket());
    h->set_key(a.engine_key());
    for (std::size_t i = 1; i < span->second.size(); ++i)
      if (const Agent* n = st.find_agent(span->second[i].first); n && n->peer)
        n->peer->send(env);
  }
  // mpiexec's ssh between the nodes of an ssh pilot takes the resource's ssh options, as the
  // hub's own ssh to them did (-F config, -i key, ...).
  if (Pilot* p = agent ? st.find_pilot(agent->pilot) : nullptr)
    if (const auto* res = resources_.find(p->spec.resource());
        res && res->type() == "ssh" && res->ssh_options_size() > 0)
      a.set_mpi_rsh_args(fmt::format("{}", fmt::join(res->ssh_options(), " ")));
}

} // namespace sortie::hub
