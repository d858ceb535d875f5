// SPDX-License-Identifier: Apache-2.0
// The hub: builds its rooms in order, loads them from the store, runs the periodic tick, and
// stops. The server hands it each connection's frames; its router passes them to the room that
// takes them. See docs/architecture.md, "The hub's rooms", for who owns what and how events flow.
//
// Design. One event-loop thread owns everything here (no locks). Handlers validate, then mutate
// state and queue messages on peers. Durable changes go into the current WriteBatch, flushed to
// the store once per loop turn; whatever must not be said before it is durable (submission acks,
// assignments, event acks, output credit) is sent from the batch's commit completion. Scheduling
// runs once per loop turn after a change that could enable it, in bounded steps.
//
// Recovery. At start the hub reloads every job. Jobs assigned to or running on an agent wait for
// that agent to reconnect and report what it runs (its reconnect window plus a margin); an agent
// that does not come back loses its jobs, which are requeued while retries remain. Queued jobs
// were never handed out (assignments are committed before they are sent), so they are scheduled
// at once and a job never runs twice at the same time.
#pragma once

#include <functional>
#include <memory>

#include "hub/agents.hpp"
#include "hub/config.hpp"
#include "hub/durable.hpp"
#include "hub/events.hpp"
#include "hub/host.hpp"
#include "hub/jobs.hpp"
#include "hub/output.hpp"
#include "hub/pilots.hpp"
#include "hub/placement.hpp"
#include "hub/queries.hpp"
#include "hub/resources.hpp"
#include "hub/room.hpp"
#include "hub/router.hpp"
#include "hub/state.hpp"
#include "hub/submit.hpp"
#include "hub/tasks.hpp"
#include "hub/waits.hpp"
#include "store/store.hpp"

namespace sortie::hub {

class Hub {
public:
  Hub(asio::any_io_executor executor, HubConfig config, store::Store& store, const Clock& clock,
      HubHost& host);
  ~Hub();

  /// Rebuilds state from the store. Call once, before start().
  Result<void> load(store::LoadedState state);
  /// Resumes pilots, starts config.toml's, and the periodic tick.
  void start();
  /// Stops every pilot's agents and waits (at most kill_grace + 10 s) until their jobs have
  /// ended and they left; what ran counts a lost attempt and is requeued. Then flushes the store
  /// and runs `done`. With `restart`, only flushes: pilots, agents and jobs carry on.
  void shutdown(std::function<void()> done, bool restart = false);

  // What the server hands over --------------------------------------------------------------
  void on_client_frame(const std::shared_ptr<Peer>& peer, pb::Envelope& env);
  void on_client_closed(const std::shared_ptr<Peer>& peer);
  /// An agent's first frame after the handshake. `stdio`: the link is an ssh session of a
  /// remote pilot (it cannot reconnect).
  void on_agent_register(const std::shared_ptr<Peer>& peer, const pb::AgentRegister& reg,
                         bool stdio = false);
  void on_agent_frame(const std::shared_ptr<Peer>& peer, pb::Envelope& env);
  /// The agent's link ended: `goodbye` when the agent said it is leaving.
  void on_agent_closed(const std::shared_ptr<Peer>& peer, const Error& reason, bool goodbye);

  HubStats stats() const { return queries_.stats(); }
  const HubConfig& config() const { return config_; }
  std::int64_t started_ms() const { return identity_.started_ms; }

  /// For tests: the job with this id, or null.
  const Job* job_for_test(std::uint64_t id) const { return state_.find_job(JobId(id)); }
  /// For tests: one round of the periodic work.
  void tick_for_test() { tick(); }

private:
  Awaitable<void> tick_loop();
  void tick();
  bool agents_stopped() const;
  void shutdown_step();
  /// Loads agents and pilots, and binds agents that may come back to their pilots.
  void load_agents_and_pilots(store::LoadedState& state, std::int64_t deadline);
  /// Loads jobs; those that were on an agent wait for it until `deadline`.
  Result<void> load_jobs(std::vector<store::JobRow>& rows, std::int64_t deadline);

  asio::any_io_executor executor_;
  HubConfig config_;
  const Clock& clock_;
  HubHost& host_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  HubState state_;
  Durable durable_;
  Events events_;
  scheduler::Scheduler scheduler_;
  DirectEngines direct_;
  Core core_;
  HubIdentity identity_;
  // The rooms, each after those it calls.
  Jobs jobs_;
  Resources resources_;
  Placement placement_;
  Submit submit_;
  Output output_;
  Waits waits_;
  Queries queries_;
  Agents agents_;
  Pilots pilots_;
  Tasks tasks_;
  Router router_;

  asio::steady_timer tick_timer_;
  std::function<void()> shutdown_done_;
  std::int64_t shutdown_deadline_ = 0; ///< monotonic ms
};

} // namespace sortie::hub
