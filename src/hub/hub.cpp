// SPDX-License-Identifier: Apache-2.0
// The hub's assembly: rooms built in order and wired to the router, loading from the store, the
// periodic tick, and an orderly stop.
#include "hub/hub.hpp"

#include <fmt/format.h>

#include "common/log.hpp"
#include "common/text.hpp"
#include "launch/process.hpp"
#include "protocol/frame.hpp"

namespace sortie::hub {
namespace {

// A stopping hub waits this long past kill_grace for its agents to end their jobs and leave.
constexpr std::int64_t kShutdownMarginMs = 10'000;

} // namespace

Hub::Hub(asio::any_io_executor executor, HubConfig config, store::Store& store, const Clock& clock,
         HubHost& host)
    : executor_(executor), config_(std::move(config)), clock_(clock),
      host_(host), durable_(executor, store, state_, alive_),
      direct_(executor, config_.profile.socket_file().parent_path()),
      core_{executor, config_, clock_, state_, durable_, events_, scheduler_, direct_, alive_},
      identity_{host.listen_address(), clock.now_ms()}, jobs_(core_), resources_(core_),
      placement_(core_, jobs_, resources_), submit_(core_, jobs_), output_(core_, jobs_),
      waits_(core_, jobs_), queries_(core_, jobs_, identity_),
      agents_(core_, jobs_, placement_), pilots_(core_, agents_, resources_, host),
      tasks_(core_, jobs_),
      tick_timer_(executor) {
  jobs_.register_with(router_);
  resources_.register_with(router_);
  submit_.register_with(router_);
  output_.register_with(router_);
  waits_.register_with(router_);
  queries_.register_with(router_);
  agents_.register_with(router_);
  pilots_.register_with(router_);
  tasks_.register_with(router_);
  router_.add(pb::Envelope::kGoodbye, Role::Client, [](const Sender&, pb::Envelope&) {});
  router_.add(pb::Envelope::kHubStop, Role::Client, [this](const Sender& from, pb::Envelope& env) {
    reply_ok(from.peer, from.rid);
    bool restart = env.hub_stop().restart();
    log::info("{} requested by {}", restart ? "restart" : "stop", from.peer->describe());
    host_.request_stop(restart);
  });
}

Hub::~Hub() { *alive_ = false; }

// -------------------------------------------------------------------------------------------
// Loading

Result<void> Hub::load(store::LoadedState state) {
  // Ids are never used twice, even those of rows forgotten since.
  state_.next_job_id = std::max(state_.next_job_id, state.next_job_id);
  state_.next_spec_id = std::max(state_.next_spec_id, state.next_spec_id);
  state_.next_group_id = std::max(state_.next_group_id, state.next_group_id);
  state_.reserved_job_ids = state.reserved_job_ids;
  state_.reserved_group_ids = state.reserved_group_ids;
  for (auto& s : state.specs) {
    pb::JobSpec spec;
    if (!spec.ParseFromString(s.body))
      return make_error(ErrorCode::Internal, fmt::format("spec {} in the store is corrupt", s.id));
    if (state_.specs.size() < s.id)
      state_.specs.resize(s.id);
    state_.specs[s.id - 1] = jobs_.make_spec(std::move(s.body), spec);
    state_.next_spec_id = std::max(state_.next_spec_id, s.id + 1);
  }
  for (auto& g : state.groups) {
    if (state_.groups.size() < g.id)
      state_.groups.resize(g.id);
    auto key = scheduler_.intern(g.name.empty() ? fmt::format("#{}", g.id) : g.name);
    state_.groups[g.id - 1] = Group{g.id,    key, g.name, g.created_ms, g.first_job, g.count, 0,
                                    jobs_.intern_env(std::move(g.env))};
    if (!g.name.empty())
      state_.groups_by_name[g.name].push_back(g.id);
    state_.next_group_id = std::max(state_.next_group_id, g.id + 1);
  }
  // Agents from before the restart last heard from the old hub: their leases end at the latest
  // one lease from now.
  std::int64_t deadline = clock_.monotonic_ms() + agents_.lease_ms(false) + kReconnectMarginMs;
  load_agents_and_pilots(state, deadline);
  SORTIE_TRY(load_jobs(state.jobs, deadline));
  tasks_.load(state);
  // Pilots that were still starting when the hub stopped have no agents coming back.
  for (auto& [id, p] : state_.pilots)
    pilots_.update_state(p);
  // config.toml's pilots must name resources that exist: a start that would leave one out fails.
  for (const auto& spec : config_.pilots)
    if (!resources_.find(spec.resource()))
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: [[pilots]] entry '{}' names resource '{}', which is not "
                                    "defined: add it as [resources.{}] or with `sortie resource "
                                    "add`, or fix the name",
                                    config_.profile.config_file().string(), spec.config_name(),
                                    spec.resource(), spec.resource()));
  return ok_result();
}

void Hub::load_agents_and_pilots(store::LoadedState& state, std::int64_t deadline) {
  for (auto& row : state.agents) {
    state_.next_agent_id = std::max(state_.next_agent_id, row.id + 1);
    Agent agent = Durable::agent_from_row(row);
    agent.reconnect_deadline = row.connected ? deadline : 0;
    state_.agents.emplace(agent.id, std::move(agent));
  }
  for (auto& row : state.pilots) {
    state_.next_pilot_id = std::max(state_.next_pilot_id, row.id + 1);
    Pilot pilot = Durable::pilot_from_row(row);
    state_.pilots.emplace(pilot.id, std::move(pilot));
  }
  resources_.load(state.resources);
  for (auto& [id, a] : state_.agents)
    if (a.reconnect_deadline > 0)
      if (Pilot* p = state_.find_pilot(a.pilot))
        p->agents.insert(id);
}

Result<void> Hub::load_jobs(std::vector<store::JobRow>& rows, std::int64_t deadline) {
  std::size_t waiting = 0;
  std::vector<JobId> queued_later;
  for (auto& r : rows) {
    state_.jobs.grow_to(r.id);
    Job& j = state_.jobs[r.id - 1];
    Durable::job_from_row(r, j);
    ++state_.state_counts[j.state];
    state_.next_job_id = std::max(state_.next_job_id, r.id + 1);
    if (j.spec == 0 || j.spec > state_.specs.size())
      return make_error(ErrorCode::Internal,
                        fmt::format("job {} refers to spec {} which is not in the store", j.id,
                                    j.spec));
    Spec& spec = state_.spec_of(j);
    ++spec.jobs;
    if (j.group > 0 && j.group <= state_.groups.size()) {
      Group& g = state_.groups[j.group - 1];
      ++g.live;
      // A spec belongs to one submission, hence to one group: bind it for max_per_node.
      if (spec.req.max_per_node)
        spec.req.group = g.key;
    }
    if (j.state == JobState::Queued) {
      queued_later.push_back(j.id); // after every job is loaded: dependencies may come later
      jobs_.watch_queue_timeout(j);
    } else if (j.state == JobState::Assigned || j.state == JobState::Running) {
      Agent* a = state_.find_agent(j.agent);
      if (!a) {
        jobs_.lost(j, "its agent is unknown after a hub restart");
        continue;
      }
      if (spec.req.spans_nodes()) {
        // Which other nodes it held is not stored, so it cannot go on; but it runs again only
        // once its first node has killed it (told so when it reconnects) or its lease is over.
        state_.span_lost.emplace(j.id, "the hub restarted while it ran across nodes");
      }
      if (a->reconnect_deadline == 0)
        a->reconnect_deadline = deadline;
      a->jobs.insert(j.id);
      ++waiting;
    }
  }
  for (auto id : queued_later)
    jobs_.make_ready(*state_.find_job(id), true);
  std::size_t agents_waiting = 0;
  for (const auto& [id, a] : state_.agents)
    agents_waiting += a.reconnect_deadline > 0;
  if (!rows.empty())
    log::info("loaded {} jobs ({} queued, {} on {} agents expected to reconnect within {})",
              rows.size(), scheduler_.queued(), waiting, agents_waiting,
              format_duration_ms(agents_.lease_ms(false) + kReconnectMarginMs));
  return ok_result();
}

void Hub::start() {
  pilots_.resume();
  spawn_root(executor_, "the hub's tick loop", [this] { return tick_loop(); });
  placement_.request_schedule();
}

// -------------------------------------------------------------------------------------------
// The server's entry points

void Hub::on_client_frame(const std::shared_ptr<Peer>& peer, pb::Envelope& env) {
  router_.dispatch(Sender{peer, Role::Client, nullptr, env.request_id()}, env);
}

void Hub::on_client_closed(const std::shared_ptr<Peer>& peer) {
  events_.client_closed.emit(peer);
}

void Hub::on_agent_register(const std::shared_ptr<Peer>& peer, const pb::AgentRegister& reg,
                            bool stdio) {
  agents_.on_register(peer, reg, stdio);
}

void Hub::on_agent_frame(const std::shared_ptr<Peer>& peer, pb::Envelope& env) {
  Agent* agent = state_.agent_of(peer.get());
  if (!agent)
    return peer->close_with_error(make_error(ErrorCode::FailedPrecondition,
                                             fmt::format("protocol error: '{}' before the agent "
                                                         "was registered",
                                                         protocol::body_name(env))));
  router_.dispatch(Sender{peer, Role::Agent, agent, env.request_id()}, env);
}

void Hub::on_agent_closed(const std::shared_ptr<Peer>& peer, const Error& reason, bool goodbye) {
  agents_.on_closed(peer, reason, goodbye);
}

// -------------------------------------------------------------------------------------------
// The tick

Awaitable<void> Hub::tick_loop() {
  auto alive = alive_;
  while (*alive && !state_.stopping) {
    tick_timer_.expires_after(std::chrono::milliseconds(200));
    co_await tick_timer_.async_wait(use_nothrow);
    if (!*alive)
      break;
    tick();
  }
}

void Hub::tick() {
  jobs_.tick();     // job_retention, queue timeouts
  waits_.tick();    // progress of waits, throttled to this tick
  output_.tick();   // output writes to try again
  agents_.tick();   // agents that did not come back in time
  pilots_.tick();   // walltimes
  tasks_.tick();    // task timeouts, task_retention
}

// -------------------------------------------------------------------------------------------
// Shutdown

void Hub::shutdown(std::function<void()> done, bool restart) {
  if (state_.stopping)
    return;
  state_.stopping = true;
  tick_timer_.cancel();
  waits_.close_all(make_error(ErrorCode::Unavailable, "the hub is stopping"));
  if (restart) {
    // As after a crash, but with everything flushed: pilots, agents and jobs carry on, and the
    // next hub takes them back without requeueing anything.
    log::info("restarting: pilots and their running jobs carry on");
    durable_.batch().on_commit.push_back([done = std::move(done)](const Result<void>&) { done(); });
    durable_.flush();
    return;
  }
  // Agents kill their jobs (SIGTERM, SIGKILL after kill_grace), report them and say goodbye;
  // the jobs that ran count a lost attempt and go back to the queue. Agents that are away now
  // cannot be told: their leases end them.
  std::vector<AgentId> away;
  for (auto& [id, a] : state_.agents) {
    if (a.peer) {
      pb::Envelope env;
      env.mutable_shutdown()->set_reason("the hub is stopping");
      a.peer->send(env);
    } else if (a.reconnect_deadline > 0) {
      away.push_back(id);
    }
  }
  for (auto id : away)
    agents_.gone(id, "the hub stopped", true);
  pilots_.stop_all();
  shutdown_done_ = std::move(done);
  shutdown_deadline_ = clock_.monotonic_ms() + config_.kill_grace_ms + kShutdownMarginMs;
  shutdown_step();
}

bool Hub::agents_stopped() const {
  for (const auto& [id, a] : state_.agents)
    if (a.peer || (a.local && !state_.dead_pids.contains(a.pid) && launch::pid_alive(a.pid)))
      return false;
  for (const auto& [id, p] : state_.pilots)
    for (int pid : p.pids)
      if (!state_.dead_pids.contains(pid) && launch::pid_alive(pid))
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
  for (auto& [id, a] : state_.agents)
    if (a.peer || a.reconnect_deadline > 0)
      left.push_back(id);
  if (!left.empty())
    log::warn("{} agents did not stop within {}; their keepers end their jobs", left.size(),
              format_duration_ms(config_.kill_grace_ms + kShutdownMarginMs));
  for (auto id : left) {
    Agent& a = state_.agents.at(id);
    if (a.peer)
      a.peer->close_with_error(make_error(ErrorCode::Unavailable, "the hub is stopping"));
    agents_.gone(id, "the hub stopped", true);
  }
  for (auto& [id, p] : state_.pilots) {
    p.batch_alive = false;
    if (!is_over(p.state)) {
      p.reason = "the hub stopped";
      pilots_.update_state(p);
    }
  }
  durable_.batch().on_commit.push_back(
      [done = std::move(shutdown_done_)](const Result<void>&) { done(); });
  durable_.flush();
}

} // namespace sortie::hub
