// SPDX-License-Identifier: Apache-2.0
// Pilots: local and remote, their drivers, states, walltimes and cancellation.
#include "hub/pilots.hpp"

#include <unistd.h>

#include <unordered_set>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/log.hpp"
#include "common/text.hpp"
#include "launch/process.hpp"
#include "launch/remote.hpp"

namespace sortie::hub {
namespace {

const std::string kPendingPrefix = "waiting in the batch queue: ";

/// The requester of config.toml's pilots: answers go to the log.
class ConfigPeer final : public Peer {
public:
  explicit ConfigPeer(std::string name) : name_(std::move(name)) {}
  void send(const pb::Envelope& env) override {
    if (env.has_error())
      log::error("config.toml: pilot '{}': {}", name_, env.error().message());
    else if (env.has_pilot_add_reply())
      log::info("config.toml: pilot '{}' is pilot {}", name_, env.pilot_add_reply().pilot_id());
  }
  void close_with_error(const Error& error) override {
    log::error("config.toml: pilot '{}': {}", name_, error.to_string());
  }
  bool closed() const override { return false; }
  std::size_t queued_bytes() const override { return 0; }
  void when_drained(std::function<void()> fn) override { fn(); }
  std::int64_t silent_ms() const override { return 0; }
  std::string describe() const override { return "config.toml"; }

private:
  std::string name_;
};

} // namespace

Pilots::Pilots(Core& core, Agents& agents, Resources& resources, HubHost& host)
    : core_(core), agents_(agents), resources_(resources), host_(host) {
  auto& ev = core_.events;
  ev.agent_up.subscribe([this](Agent& a, bool) { on_agent_up(a); });
  ev.agent_away.subscribe([this](Agent& a) {
    if (Pilot* p = core_.state.find_pilot(a.pilot))
      update_state(*p);
  });
  ev.agent_gone.subscribe([this](Agent& a, const std::string& why) { on_agent_gone(a, why); });
}

void Pilots::register_with(Router& router) {
  router.add(pb::Envelope::kPilotAdd, Role::Client,
             [this](const Sender& from, pb::Envelope& env) { handle_add(from, env.pilot_add()); });
  router.add(pb::Envelope::kPilotCancel, Role::Client, [this](const Sender& from, pb::Envelope& env) {
    handle_cancel(from, env.pilot_cancel());
  });
}

// -------------------------------------------------------------------------------------------
// States

void Pilots::changed(Pilot& p) { core_.durable.batch().pilots.push_back(Durable::pilot_row(p)); }

void Pilots::set_state(Pilot& p, PilotState to, std::string reason) {
  if (!reason.empty())
    p.reason = std::move(reason);
  if (to != p.state) {
    log::info("pilot {}: {} -> {}{}", p.id, pilot_state_name(p.state), pilot_state_name(to),
              p.reason.empty() ? "" : " (" + p.reason + ")");
    p.state = to;
    if (is_over(to))
      p.ended_ms = core_.clock.now_ms();
  }
  changed(p);
}

void Pilots::update_state(Pilot& p) {
  if (is_over(p.state))
    return;
  const auto& st = core_.state;
  std::size_t up = 0, waiting = 0;
  for (auto id : p.agents) {
    const Agent* a = st.find_agent(id);
    if (!a)
      continue;
    up += a->peer != nullptr;
    waiting += a->peer == nullptr && a->reconnect_deadline > 0;
  }
  std::size_t live_pids = p.batch_alive ? 1 : 0;
  for (int pid : p.pids)
    live_pids += !st.dead_pids.contains(pid);
  PilotState next = p.state;
  bool waiting_in_queue = p.reason.starts_with(kPendingPrefix);
  if (up > 0) {
    if (p.state != PilotState::Draining)
      next = PilotState::Running;
  } else if (waiting > 0 || live_pids > 0) {
    if (p.state == PilotState::Submitting)
      next = PilotState::Pending;
  } else if (p.cancel_requested || st.stopping) {
    // `pilot cancel` cancels; a walltime or a hub stop ends it, whatever its kind.
    next = p.cancelled_by_user ? PilotState::Cancelled : PilotState::Ended;
    if (st.stopping && !p.cancelled_by_user) // whatever its driver saw of its end
      p.reason = "the hub stopped";
  } else if (p.state == PilotState::Running || p.state == PilotState::Draining) {
    next = PilotState::Ended;
    if (p.reason.empty() || waiting_in_queue)
      p.reason = "all its agents have exited";
  } else {
    next = PilotState::Failed;
    if (p.reason.empty() || waiting_in_queue)
      p.reason = "its agents exited before registering with the hub";
  }
  if (next != PilotState::Pending && p.reason.starts_with(kPendingPrefix))
    p.reason.clear(); // it no longer waits (and ended with no other word)
  if (next != p.state)
    set_state(p, next);
}

void Pilots::on_agent_up(Agent& a) {
  Pilot* p = core_.state.find_pilot(a.pilot);
  if (!p)
    return;
  p->agents.insert(a.id);
  // A batch pilot's walltime starts when its job does: its agents know when it ends.
  std::int64_t end = a.walltime_end_ms;
  if (p->remote && end > 0 && (p->end_ms == 0 || end < p->end_ms)) {
    p->end_ms = end;
    changed(*p);
  }
  update_state(*p);
}

void Pilots::on_agent_gone(Agent& a, const std::string& why) {
  Pilot* p = core_.state.find_pilot(a.pilot);
  if (!p)
    return;
  p->agents.erase(a.id);
  // An ssh pilot whose last link is gone cannot get it back: end its ssh processes.
  if (a.stdio && p->remote && !p->cancel_requested && !core_.state.stopping && !any_up(*p)) {
    if (p->reason.empty())
      p->reason = fmt::format("agent {}: {}", a.node, why);
    cancel_driver(*p);
  }
  update_state(*p);
}

bool Pilots::any_up(const Pilot& p) const {
  for (auto aid : p.agents)
    if (const Agent* a = core_.state.find_agent(aid); a && a->peer)
      return true;
  return false;
}

void Pilots::cancel_driver(Pilot& p) {
  if (auto d = drivers_.find(p.id); d != drivers_.end())
    d->second->cancel();
}

// -------------------------------------------------------------------------------------------
// Adding and cancelling

void Pilots::handle_add(const Sender& from, const pb::PilotAddRequest& req) {
  if (core_.state.stopping)
    return reply_error(from.peer, from.rid, make_error(ErrorCode::Unavailable, "the hub is stopping"));
  pb::PilotSpec spec = req.spec();
  if (spec.resource().empty())
    spec.set_resource("local");
  const pb::ResourceSpec* resource = resources_.find(spec.resource());
  if (!resource)
    return reply_error(from.peer, from.rid,
                       make_error(ErrorCode::NotFound,
                                  fmt::format("resource '{}' is not defined: add it with `sortie "
                                              "resource add {} --type ...` (known: {})",
                                              spec.resource(), spec.resource(),
                                              resources_.names())));
  if (resource->type() == "local")
    return add_local(from, std::move(spec));
  if (auto r = check_remote(spec, *resource); !r.ok())
    return reply_error(from.peer, from.rid, r.error());
  Pilot p;
  p.id = PilotId(core_.state.next_pilot_id++);
  p.spec = spec;
  p.remote = true;
  store(std::move(p), from, [this](Pilot& pilot) -> Result<void> {
    start_driver(pilot);
    return ok_result();
  });
}

void Pilots::add_local(const Sender& from, pb::PilotSpec spec) {
  auto refuse = [&](ErrorCode code, std::string message) {
    reply_error(from.peer, from.rid, make_error(code, std::move(message)));
  };
  if (spec.nodes() == 0)
    spec.set_nodes(spec.node_names_size() > 0 ? static_cast<std::uint32_t>(spec.node_names_size())
                                              : 1);
  if (spec.nodes() > 256)
    return refuse(ErrorCode::InvalidArgument, "a local pilot may start at most 256 agents");
  if (spec.slots_per_node() == 0) {
    long n = ::sysconf(_SC_NPROCESSORS_ONLN);
    spec.set_slots_per_node(static_cast<std::uint32_t>(n > 0 ? n : 1));
  }
  if (spec.slots_per_node() > 4096)
    return refuse(ErrorCode::InvalidArgument, "at most 4096 slots per node");
  if (!valid_label(spec.label()))
    return refuse(ErrorCode::InvalidArgument,
                  fmt::format("label '{}' is not valid: use letters, digits, '-', '_' and '.' (at "
                              "most 64)",
                              spec.label()));
  if (spec.node_names_size() > 0 &&
      static_cast<std::uint32_t>(spec.node_names_size()) != spec.nodes())
    return refuse(ErrorCode::InvalidArgument,
                  fmt::format("{} node names for {} nodes: give one name per node",
                              spec.node_names_size(), spec.nodes()));
  PilotId id(core_.state.next_pilot_id++);
  if (spec.node_names_size() == 0)
    for (std::uint32_t k = 1; k <= spec.nodes(); ++k)
      spec.add_node_names(fmt::format("local-{}-{}", id, k));
  std::unordered_set<std::string> names;
  for (const auto& n : spec.node_names()) {
    if (!valid_node_name(n))
      return refuse(ErrorCode::InvalidArgument,
                    fmt::format("node name '{}' is not valid: use letters, digits, '-', '_' and "
                                "'.'",
                                n));
    if (!names.insert(n).second)
      return refuse(ErrorCode::InvalidArgument, fmt::format("node name '{}' is given twice", n));
    for (const auto& [aid, a] : core_.state.agents)
      if (a.peer && a.node == n)
        return refuse(ErrorCode::AlreadyExists,
                      fmt::format("a node named '{}' is already connected (pilot {}); choose "
                                  "other names",
                                  n, a.pilot));
  }
  if (spec.walltime_ms() < 0)
    return refuse(ErrorCode::InvalidArgument, "walltime cannot be negative");
  if (spec.gpus_per_node() > 64)
    return refuse(ErrorCode::InvalidArgument, "at most 64 GPUs per node");
  Pilot p;
  p.id = id;
  p.spec = spec;
  store(std::move(p), from, [this](Pilot& pilot) -> Result<void> {
    start_driver(pilot);
    if (pilot.state == PilotState::Failed) // its agents could not be started: say so now
      return make_error(ErrorCode::Io, pilot.reason, fmt::format("pilot {}", pilot.id));
    return ok_result();
  });
}

void Pilots::store(Pilot p, const Sender& from, std::function<Result<void>(Pilot&)> start) {
  p.state = PilotState::Submitting;
  p.created_ms = core_.clock.now_ms();
  // A local pilot's walltime runs from now; a batch pilot's from its job's start (its agents say).
  if (!p.remote && p.spec.walltime_ms())
    p.end_ms = p.created_ms + p.spec.walltime_ms();
  PilotId id = p.id;
  changed(p);
  core_.state.pilots.emplace(id, std::move(p));
  core_.durable.after_commit([this, peer = from.peer, rid = from.rid, id,
                              start = std::move(start)](const Result<void>& r) {
    auto it = core_.state.pilots.find(id);
    if (it == core_.state.pilots.end())
      return;
    if (!r.ok()) {
      core_.state.pilots.erase(it);
      return reply_error(peer, rid, r.error());
    }
    if (auto started = start(it->second); !started.ok())
      return reply_error(peer, rid, started.error());
    pb::Envelope env;
    env.mutable_pilot_add_reply()->set_pilot_id(id.value);
    reply(peer, env, rid);
  });
}

void Pilots::handle_cancel(const Sender& from, const pb::PilotCancelRequest& req) {
  Pilot* p = core_.state.find_pilot(PilotId(req.pilot_id()));
  if (!p)
    return reply_error(from.peer, from.rid,
                       make_error(ErrorCode::NotFound,
                                  fmt::format("pilot {} does not exist", req.pilot_id())));
  if (is_over(p->state))
    return reply_error(from.peer, from.rid,
                       make_error(ErrorCode::FailedPrecondition,
                                  fmt::format("pilot {} is already {}", p->id,
                                              pilot_state_name(p->state))));
  p->cancelled_by_user = true;
  stop(*p, fmt::format("cancelled by {}", from.peer->describe()));
  reply_ok(from.peer, from.rid);
}

void Pilots::stop(Pilot& p, const std::string& reason) {
  p.cancel_requested = true;
  p.reason = reason;
  for (auto aid : p.agents) {
    Agent* a = core_.state.find_agent(aid);
    if (!a)
      continue;
    core_.scheduler.set_accepting(aid, false);
    if (a->peer) {
      pb::Envelope env;
      env.mutable_shutdown()->set_reason(fmt::format("pilot {}: {}", p.id, reason));
      a->peer->send(env);
    }
  }
  // Agents that never registered (or hang) get SIGTERM from the driver as well; a batch
  // pilot's job is cancelled.
  cancel_driver(p);
  update_state(p);
}

void Pilots::stop_all() {
  for (auto& [id, p] : core_.state.pilots)
    cancel_driver(p);
}

void Pilots::local_process_exit(Pilot& p, int pid, int status) {
  auto& st = core_.state;
  st.dead_pids.insert(pid);
  st.pilot_by_pid.erase(pid);
  std::string how = launch::exit_text(status);
  // An agent process of ours is gone: if its link already closed, its jobs are lost now (no
  // point waiting for a reconnect that cannot come).
  std::vector<AgentId> dead;
  for (auto& [id, a] : st.agents)
    if (a.pid == pid && a.local && !a.peer && a.reconnect_deadline > 0)
      dead.push_back(id);
  for (auto id : dead)
    agents_.local_agent_died(id, fmt::format("its process exited ({})", how));
  bool registered = false;
  for (auto aid : p.agents)
    if (const Agent* a = st.find_agent(aid); a && a->pid == pid)
      registered = true;
  if (!registered && !p.cancel_requested && !st.stopping && p.reason.empty())
    p.reason = fmt::format("an agent exited ({}) before registering; see {}", how,
                           core_.config.profile.agent_log_dir().string());
}

// -------------------------------------------------------------------------------------------
// Remote pilots

Result<void> Pilots::check_remote(pb::PilotSpec& spec, const pb::ResourceSpec& resource) const {
  // Each --option goes to sbatch/qsub as an argument: a word that is not an option would be taken
  // as the batch script and replace ours.
  for (const auto& o : spec.batch_options())
    if (o.size() < 2 || o[0] != '-')
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("--option '{}' is not an option of the batch system (it must "
                                    "start with '-', e.g. --option=--account=proj)",
                                    printable(o)));
  if (spec.nodes() == 0)
    spec.set_nodes(spec.node_names_size() > 0 ? static_cast<std::uint32_t>(spec.node_names_size())
                                              : (resource.type() == "ssh" ? 0 : 1));
  if (spec.nodes() > 4096)
    return make_error(ErrorCode::InvalidArgument, "a pilot may have at most 4096 nodes");
  if (spec.slots_per_node() > 4096)
    return make_error(ErrorCode::InvalidArgument, "at most 4096 slots per node");
  if (spec.walltime_ms() < 0)
    return make_error(ErrorCode::InvalidArgument, "walltime cannot be negative");
  if (spec.gpus_per_node() > 64)
    return make_error(ErrorCode::InvalidArgument, "at most 64 GPUs per node");
  if (!valid_label(spec.label()))
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("label '{}' is not valid: use letters, digits, '-', '_' and '.'",
                                  spec.label()));
  if (!spec.queue().empty() && !launch::safe_word(spec.queue()))
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("queue '{}' is not a queue or partition name", spec.queue()));
  for (const auto& n : spec.node_names())
    if (!valid_node_name(n))
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("node name '{}' is not valid: use letters, digits, '-', '_' "
                                    "and '.'",
                                    n));
  if (resource.type() == "ssh") {
    if (spec.nodes() == 0) {
      // One agent per host of the resource.
      if (!resource.machinefile().empty()) {
        auto text = read_file(resource.machinefile());
        if (!text.ok())
          return text.error().with_context(fmt::format("resource '{}'", resource.name()));
        auto hosts = launch::parse_machinefile(*text, resource.machinefile());
        if (!hosts.ok())
          return hosts.error();
        spec.set_nodes(static_cast<std::uint32_t>(hosts->size()));
      } else {
        auto hosts = launch::parse_ssh_targets(resource.location());
        if (!hosts.ok())
          return hosts.error();
        spec.set_nodes(static_cast<std::uint32_t>(hosts->size()));
      }
    }
    if (!spec.batch_options().empty() || !spec.queue().empty())
      return make_error(ErrorCode::InvalidArgument,
                        "--queue and --option are for batch resources (slurm, sge), not ssh");
    if (spec.node_names_size() > 0 && spec.nodes() &&
        static_cast<std::uint32_t>(spec.node_names_size()) != spec.nodes())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{} node names for {} nodes: give one name per node",
                                    spec.node_names_size(), spec.nodes()));
  } else if (spec.node_names_size() > 0) {
    return make_error(ErrorCode::InvalidArgument,
                      "--node-names is for local and ssh pilots: batch nodes are named by the "
                      "batch system");
  }
  SORTIE_TRY(resources_.gateway_chain(resource));
  return ok_result();
}

void Pilots::start_driver(Pilot& p) {
  const pb::ResourceSpec* resource = resources_.find(p.spec.resource());
  auto fail = [&](const std::string& why) {
    set_state(p, PilotState::Failed, why);
    log::warn("pilot {}: failed: {}", p.id, why);
  };
  if (!resource)
    return fail(fmt::format("resource '{}' is no longer defined", p.spec.resource()));
  auto gateways = resources_.gateway_chain(*resource);
  if (!gateways.ok())
    return fail(gateways.error().message);
  if (!host_.child_watch())
    return fail("this hub cannot run commands (no child watch)");
  const auto& config = core_.config;
  launch::DriverContext ctx;
  ctx.executor = core_.executor;
  ctx.watch = host_.child_watch();
  ctx.pilot = p.id;
  ctx.spec = p.spec;
  ctx.resource = *resource;
  ctx.gateways = *gateways;
  ctx.sortie_exe = config.self_exe;
  ctx.profile_dir = config.profile.dir;
  ctx.log_dir = config.profile.agent_log_dir();
  ctx.poll_interval_ms = config.batch_poll_interval_ms;
  ctx.kill_grace_ms = config.kill_grace_ms;
  ctx.batch_id = p.batch_id;
  ctx.walltime_end_ms = p.end_ms;
  launch::DriverHooks hooks;
  hooks.report = [this, alive = core_.alive](PilotId id, const launch::PilotReport& r) {
    if (*alive)
      on_report(id, r);
  };
  hooks.agent_link = [this, alive = core_.alive](PilotId id, std::unique_ptr<net::ByteStream> stream,
                                                 std::string key) {
    if (!*alive)
      return;
    std::string link = stream->describe();
    host_.run_agent_session(std::move(stream), std::move(key),
                            [this, alive, id, link](const Error& e) {
                              if (*alive)
                                link_failed(id, link, e);
                            });
  };
  auto driver = launch::make_driver(std::move(ctx), std::move(hooks));
  if (!driver.ok())
    return fail(driver.error().message);
  p.batch_alive = true; // until the driver says otherwise
  auto& d = drivers_[p.id] = std::move(*driver);
  d->start();
}

void Pilots::link_failed(PilotId id, const std::string& link, const Error& error) {
  Pilot* p = core_.state.find_pilot(id);
  // A link that just ended (ssh exited) is reported by the driver, with ssh's own words.
  if (!p || error.code == ErrorCode::Unavailable)
    return;
  std::string why = fmt::format("{}: the agent did not register: {}", link, error.message);
  log::warn("pilot {}: {}", id, why);
  if (p->reason.find(why) == std::string::npos)
    p->reason = p->reason.empty() ? why : p->reason + "; " + why;
  if (!p->cancel_requested && !any_up(*p))
    cancel_driver(*p);
  update_state(*p);
}

void Pilots::on_report(PilotId id, const launch::PilotReport& r) {
  Pilot* found = core_.state.find_pilot(id);
  if (!found)
    return;
  Pilot& p = *found;
  using Kind = launch::PilotReport::Kind;
  switch (r.kind) {
  case Kind::Submitted:
    if (!r.batch_id.empty())
      p.batch_id = r.batch_id;
    p.pids = r.pids;
    for (int pid : r.pids)
      core_.state.pilot_by_pid[pid] = id;
    p.batch_alive = true;
    if (p.state == PilotState::Submitting) {
      p.state = PilotState::Pending;
      log::info("pilot {}: submitting -> pending{}", p.id,
                p.batch_id.empty() ? "" : " (batch job " + p.batch_id + ")");
    }
    if (p.cancel_requested)
      cancel_driver(p);
    changed(p);
    break;
  case Kind::Pending:
    log::debug("pilot {}: batch job {} pending{}", p.id, p.batch_id,
               r.detail.empty() ? "" : " (" + r.detail + ")");
    // Why it waits, as squeue's REASON column says it (PartitionNodeLimit, Resources, ...).
    if (!r.detail.empty() && (p.reason.empty() || p.reason.starts_with(kPendingPrefix))) {
      std::string why = kPendingPrefix + r.detail;
      if (why != p.reason) {
        p.reason = why;
        changed(p);
      }
    }
    break;
  case Kind::NodeGone:
    if (r.pid > 0) { // a local agent's process
      local_process_exit(p, r.pid, r.status);
      update_state(p);
      break;
    }
    log::warn("pilot {}: {}", p.id, r.detail);
    if (p.reason.find(r.detail) == std::string::npos)
      p.reason = p.reason.empty() ? r.detail : p.reason + "; " + r.detail;
    changed(p);
    break;
  case Kind::Running:
    log::info("pilot {}: batch job {} running", p.id, p.batch_id);
    break;
  case Kind::Gone:
    p.batch_alive = false;
    if (r.pid > 0) { // the last of a local pilot's agent processes
      local_process_exit(p, r.pid, r.status);
      update_state(p);
      break;
    }
    if (p.reason.starts_with(kPendingPrefix))
      p.reason.clear(); // it waits no more
    if (p.reason.empty() && !p.cancel_requested)
      p.reason = r.detail;
    log::info("pilot {}: {}", p.id, r.detail);
    update_state(p);
    break;
  case Kind::Failed:
    p.batch_alive = false;
    if (!is_over(p.state))
      set_state(p, PilotState::Failed, r.detail);
    else {
      p.reason = r.detail;
      changed(p);
    }
    break;
  }
  // A driver whose pilot is over has nothing left to do.
  if (!p.batch_alive && is_over(p.state))
    core_.post([this, id] { drivers_.erase(id); });
}

// -------------------------------------------------------------------------------------------
// Walltimes, restarts, config.toml

void Pilots::tick() {
  std::int64_t wall = core_.clock.now_ms();
  for (auto& [id, p] : core_.state.pilots) {
    if (is_over(p.state))
      continue;
    if (p.remote) {
      // The walltime runs from the batch job's start: its agents know when it ends.
      for (auto aid : p.agents)
        if (const Agent* a = core_.state.find_agent(aid);
            a && a->walltime_end_ms > 0 && (p.end_ms == 0 || a->walltime_end_ms < p.end_ms))
          p.end_ms = a->walltime_end_ms;
    }
    if (!p.end_ms || p.cancel_requested)
      continue;
    // The hub ends the pilot a little before the batch system would kill it, so its agents can
    // hand their jobs back in order (half the drain margin: 2.5 s to 30 s).
    std::int64_t margin = drain_margin_ms(p.spec.walltime_ms());
    if (wall >= p.end_ms - margin / 2) {
      if (p.state == PilotState::Running || p.state == PilotState::Pending ||
          p.state == PilotState::Draining)
        stop(p, fmt::format("its walltime of {} ended", format_duration_ms(p.spec.walltime_ms())));
    } else if (p.state == PilotState::Running && wall >= p.end_ms - margin) {
      // Shortly before the end: no new jobs; the running ones may finish.
      log::info("pilot {}: running -> draining ({} of walltime left)", p.id,
                format_duration_ms(p.end_ms - wall));
      p.state = PilotState::Draining;
      for (auto aid : p.agents)
        core_.scheduler.set_accepting(aid, false);
      changed(p);
    }
  }
}

void Pilots::resume() {
  auto& st = core_.state;
  for (auto& [id, p] : st.pilots) {
    const pb::ResourceSpec* r = resources_.find(p.spec.resource());
    p.remote = r ? r->type() != "local" : p.spec.resource() != "local";
    if (!p.remote || is_over(p.state))
      continue;
    if (r && r->type() == "ssh") {
      // Its links were this process's pipes: the agents ended with the old hub.
      std::int64_t now = core_.clock.monotonic_ms();
      for (auto& [aid, a] : st.agents)
        if (a.pilot == id && a.reconnect_deadline > 0)
          a.reconnect_deadline = now;
      set_state(p, PilotState::Ended,
                "the hub restarted: ssh pilots end with the hub that started them");
      continue;
    }
    if (p.batch_id.empty()) {
      set_state(p, PilotState::Failed, "the hub stopped before the batch system took the pilot");
      continue;
    }
    log::info("pilot {}: following batch job {} again", id, p.batch_id);
    p.end_ms = 0; // its walltime runs from the batch job's start: its agents will say when
    start_driver(p);
  }
  start_configured();
}

void Pilots::start_configured() {
  for (const auto& spec : core_.config.pilots) {
    bool running = false;
    for (const auto& [id, p] : core_.state.pilots)
      if (p.spec.config_name() == spec.config_name() && !is_over(p.state))
        running = true;
    if (running)
      continue;
    pb::PilotAddRequest req;
    *req.mutable_spec() = spec;
    handle_add(Sender{std::make_shared<ConfigPeer>(spec.config_name()), Role::Client, nullptr, 0},
               req);
  }
}

} // namespace sortie::hub
