// SPDX-License-Identifier: Apache-2.0
// Resources and remote pilots: the resource registry (store + config.toml), pilots started by
// drivers (ssh, Slurm, Grid Engine), their states from what the drivers report and what their
// agents do, and walltimes (draining, then the end). Local pilots are in hub.cpp.
#include <fmt/format.h>

#include "common/files.hpp"
#include "common/log.hpp"
#include "common/text.hpp"
#include "hub/hub.hpp"

namespace sortie::hub {
namespace {

const std::string kPendingPrefix = "waiting in the batch queue: ";

bool final_state(const std::string& s) { return s == "ended" || s == "failed" || s == "cancelled"; }

const pb::ResourceSpec& local_resource() {
  static const pb::ResourceSpec r = [] {
    pb::ResourceSpec spec;
    spec.set_name("local");
    spec.set_type("local");
    return spec;
  }();
  return r;
}

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

void Hub::start_configured_pilots() {
  for (const auto& spec : config_.pilots) {
    bool running = false;
    for (const auto& [id, p] : pilots_)
      if (p.spec.config_name() == spec.config_name() && !final_state(p.state))
        running = true;
    if (running)
      continue;
    pb::PilotAddRequest req;
    *req.mutable_spec() = spec;
    handle_pilot_add(std::make_shared<ConfigPeer>(spec.config_name()), 0, req);
  }
}

// -------------------------------------------------------------------------------------------
// Resources

const pb::ResourceSpec* Hub::find_resource(const std::string& name) const {
  if (auto it = resources_.find(name); it != resources_.end())
    return &it->second;
  if (name == "local")
    return &local_resource();
  return nullptr;
}

Result<std::vector<pb::ResourceSpec>> Hub::gateway_chain(const pb::ResourceSpec& resource) const {
  std::vector<pb::ResourceSpec> chain;
  std::string next = resource.gateway();
  while (!next.empty()) {
    const pb::ResourceSpec* g = find_resource(next);
    if (!g)
      return make_error(ErrorCode::NotFound,
                        fmt::format("gateway '{}' of resource '{}' is not defined", next,
                                    resource.name()));
    if (g->type() != "ssh")
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("gateway '{}' is a {} resource: a gateway must be an ssh "
                                    "resource",
                                    next, g->type()));
    for (const auto& seen : chain)
      if (seen.name() == g->name() || g->name() == resource.name())
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("gateways of resource '{}' go round in a circle through "
                                      "'{}'",
                                      resource.name(), g->name()));
    if (chain.size() >= 8)
      return make_error(ErrorCode::InvalidArgument, "more than 8 gateways in a chain");
    chain.insert(chain.begin(), *g);
    next = g->gateway();
  }
  return chain;
}

Result<void> Hub::check_resource(const pb::ResourceSpec& spec) const {
  SORTIE_TRY(launch::check_resource(spec));
  if (spec.name() == "local")
    return make_error(ErrorCode::InvalidArgument,
                      "'local' is this machine's built-in resource: choose another name");
  if (!spec.gateway().empty())
    SORTIE_TRY(gateway_chain(spec));
  return ok_result();
}

void Hub::load_resources(std::vector<store::ResourceRow>& rows) {
  for (auto& row : rows) {
    pb::ResourceSpec spec;
    if (spec.ParseFromString(row.spec))
      resources_[row.name] = spec;
  }
  for (const auto& r : config_.resources) {
    if (auto ok = launch::check_resource(r); !ok.ok()) {
      log::error("config.toml: resource '{}': {}", r.name(), ok.error().message);
      continue;
    }
    resources_[r.name()] = r;
  }
}

void Hub::handle_resource_add(const std::shared_ptr<Peer>& peer,
                              std::uint64_t rid,
                              const pb::ResourceAddRequest& req) {
  pb::ResourceSpec spec = req.spec();
  spec.set_from_config(false);
  if (auto r = check_resource(spec); !r.ok())
    return reply_error(peer, rid, r.error().with_context(fmt::format("resource '{}'", spec.name())));
  if (auto it = resources_.find(spec.name()); it != resources_.end()) {
    if (it->second.from_config())
      return reply_error(peer, rid,
                         make_error(ErrorCode::AlreadyExists,
                                    fmt::format("resource '{}' is defined in config.toml: change "
                                                "it there",
                                                spec.name())));
    if (!req.replace())
      return reply_error(peer, rid,
                         make_error(ErrorCode::AlreadyExists,
                                    fmt::format("resource '{}' exists: remove it first, or add "
                                                "--replace",
                                                spec.name())));
  }
  std::string name = spec.name();
  batch().resources.push_back({name, spec.SerializeAsString()});
  batch().on_commit.push_back([this, alive = alive_, peer, rid, spec](const Result<void>& r) {
    if (!*alive)
      return;
    if (!r.ok())
      return reply_error(peer, rid, r.error());
    resources_[spec.name()] = spec;
    log::info("resource {} ({} {}) added by {}", spec.name(), spec.type(), spec.location(),
              peer->describe());
    pb::Envelope env;
    env.mutable_ok();
    send_to(peer, env, rid);
  });
}

void Hub::handle_resource_list(const std::shared_ptr<Peer>& peer, std::uint64_t rid) {
  pb::Envelope env;
  auto* list = env.mutable_resource_list_reply();
  *list->add_resources() = local_resource();
  for (const auto& [name, r] : resources_)
    *list->add_resources() = r;
  send_to(peer, env, rid);
}

void Hub::handle_resource_remove(const std::shared_ptr<Peer>& peer,
                                 std::uint64_t rid,
                                 const pb::ResourceRemoveRequest& req) {
  auto it = resources_.find(req.name());
  if (it == resources_.end())
    return reply_error(peer, rid,
                       make_error(ErrorCode::NotFound,
                                  req.name() == "local"
                                      ? std::string("'local' is built in and cannot be removed")
                                      : fmt::format("resource '{}' does not exist", req.name())));
  if (it->second.from_config())
    return reply_error(peer, rid,
                       make_error(ErrorCode::FailedPrecondition,
                                  fmt::format("resource '{}' is defined in config.toml: remove it "
                                              "there",
                                              req.name())));
  for (const auto& [id, p] : pilots_)
    if (p.spec.resource() == req.name() && !final_state(p.state))
      return reply_error(peer, rid,
                         make_error(ErrorCode::FailedPrecondition,
                                    fmt::format("pilot {} on resource '{}' is {}: cancel it first",
                                                id.value, req.name(), p.state)));
  for (const auto& [name, r] : resources_)
    if (r.gateway() == req.name())
      return reply_error(peer, rid,
                         make_error(ErrorCode::FailedPrecondition,
                                    fmt::format("resource '{}' is the gateway of '{}'", req.name(),
                                                name)));
  std::string name = req.name();
  resources_.erase(it);
  batch().resources_removed.push_back(name);
  batch().on_commit.push_back([this, alive = alive_, peer, rid](const Result<void>& r) {
    if (!*alive)
      return;
    if (!r.ok())
      return reply_error(peer, rid, r.error());
    pb::Envelope env;
    env.mutable_ok();
    send_to(peer, env, rid);
  });
}

// -------------------------------------------------------------------------------------------
// Remote pilots

Result<void> Hub::check_remote_pilot(pb::PilotSpec& spec, const pb::ResourceSpec& resource) const {
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
  SORTIE_TRY(gateway_chain(resource));
  return ok_result();
}

void Hub::start_driver(Pilot& p) {
  const pb::ResourceSpec* resource = find_resource(p.spec.resource());
  auto fail = [&](const std::string& why) {
    p.reason = why;
    p.state = "failed";
    p.ended_ms = clock_.now_ms();
    pilot_changed(p);
    log::warn("pilot {}: failed: {}", p.id.value, why);
  };
  if (!resource)
    return fail(fmt::format("resource '{}' is no longer defined", p.spec.resource()));
  auto gateways = gateway_chain(*resource);
  if (!gateways.ok())
    return fail(gateways.error().message);
  launch::DriverContext ctx;
  ctx.executor = executor_;
  ctx.watch = child_watch;
  ctx.pilot = p.id;
  ctx.spec = p.spec;
  ctx.resource = *resource;
  ctx.gateways = *gateways;
  ctx.sortie_exe = config_.self_exe;
  ctx.profile_dir = config_.profile.dir;
  ctx.log_dir = config_.profile.agent_log_dir();
  ctx.poll_interval_ms = config_.batch_poll_interval_ms;
  ctx.kill_grace_ms = config_.kill_grace_ms;
  ctx.batch_id = p.batch_id;
  launch::DriverHooks hooks;
  hooks.report = [this, alive = alive_](PilotId id, const launch::PilotReport& r) {
    if (*alive)
      on_pilot_report(id, r);
  };
  hooks.agent_link = [this, alive = alive_](PilotId id, std::unique_ptr<net::ByteStream> stream,
                                            std::string key) {
    if (!*alive || !on_agent_link)
      return;
    std::string link = stream->describe();
    on_agent_link(std::move(stream), std::move(key), [this, alive, id, link](const Error& e) {
      if (*alive)
        pilot_link_failed(id, link, e);
    });
  };
  if (!child_watch)
    return fail("this hub cannot run commands (no child watch)");
  auto driver = launch::make_driver(std::move(ctx), std::move(hooks));
  if (!driver.ok())
    return fail(driver.error().message);
  p.batch_alive = true; // until the driver says otherwise
  auto& d = drivers_[p.id] = std::move(*driver);
  d->start();
}

void Hub::pilot_link_failed(PilotId id, const std::string& link, const Error& error) {
  auto it = pilots_.find(id);
  if (it == pilots_.end())
    return;
  Pilot& p = it->second;
  // A link that just ended (ssh exited) is reported by the driver, with ssh's own words.
  if (error.code == ErrorCode::Unavailable)
    return;
  std::string why = fmt::format("{}: the agent did not register: {}", link, error.message);
  log::warn("pilot {}: {}", id.value, why);
  if (p.reason.find(why) == std::string::npos)
    p.reason = p.reason.empty() ? why : p.reason + "; " + why;
  bool any_up = false;
  for (auto aid : p.agents)
    if (auto a = agents_.find(aid); a != agents_.end() && a->second.peer)
      any_up = true;
  if (!any_up && !p.cancel_requested)
    if (auto d = drivers_.find(id); d != drivers_.end())
      d->second->cancel();
  update_pilot_state(p);
}

void Hub::on_pilot_report(PilotId id, const launch::PilotReport& r) {
  auto it = pilots_.find(id);
  if (it == pilots_.end())
    return;
  Pilot& p = it->second;
  using Kind = launch::PilotReport::Kind;
  switch (r.kind) {
  case Kind::Submitted:
    if (!r.batch_id.empty())
      p.batch_id = r.batch_id;
    p.batch_alive = true;
    if (p.state == "submitting") {
      p.state = "pending";
      log::info("pilot {}: submitting -> pending{}", p.id.value,
                p.batch_id.empty() ? "" : " (batch job " + p.batch_id + ")");
    }
    if (p.cancel_requested)
      if (auto d = drivers_.find(id); d != drivers_.end())
        d->second->cancel();
    pilot_changed(p);
    break;
  case Kind::Pending:
    log::debug("pilot {}: batch job {} pending{}", p.id.value, p.batch_id,
               r.detail.empty() ? "" : " (" + r.detail + ")");
    // Why it waits, as squeue's REASON column says it (PartitionNodeLimit, Resources, ...).
    if (!r.detail.empty() && (p.reason.empty() || p.reason.starts_with(kPendingPrefix))) {
      std::string why = kPendingPrefix + r.detail;
      if (why != p.reason) {
        p.reason = why;
        pilot_changed(p);
      }
    }
    break;
  case Kind::NodeGone:
    log::warn("pilot {}: {}", p.id.value, r.detail);
    if (p.reason.find(r.detail) == std::string::npos)
      p.reason = p.reason.empty() ? r.detail : p.reason + "; " + r.detail;
    pilot_changed(p);
    break;
  case Kind::Running:
    log::info("pilot {}: batch job {} running", p.id.value, p.batch_id);
    break;
  case Kind::Gone:
    p.batch_alive = false;
    if (p.reason.starts_with(kPendingPrefix))
      p.reason.clear(); // it waits no more
    if (p.reason.empty() && !p.cancel_requested)
      p.reason = r.detail;
    log::info("pilot {}: {}", p.id.value, r.detail);
    update_pilot_state(p);
    break;
  case Kind::Failed:
    p.batch_alive = false;
    p.reason = r.detail;
    if (!final_state(p.state)) {
      log::warn("pilot {}: {} -> failed ({})", p.id.value, p.state, r.detail);
      p.state = "failed";
      p.ended_ms = clock_.now_ms();
    }
    pilot_changed(p);
    break;
  }
  // A driver whose pilot is over has nothing left to do.
  if (!p.batch_alive && final_state(p.state))
    asio::post(executor_, [this, alive = alive_, id] {
      if (*alive)
        drivers_.erase(id);
    });
}

void Hub::pilot_walltimes(std::int64_t wall) {
  for (auto& [id, p] : pilots_) {
    if (final_state(p.state))
      continue;
    if (p.remote) {
      // The walltime runs from the batch job's start: its agents know when it ends.
      for (auto aid : p.agents)
        if (auto a = agents_.find(aid); a != agents_.end() && a->second.walltime_end_ms > 0 &&
                                        (p.end_ms == 0 || a->second.walltime_end_ms < p.end_ms))
          p.end_ms = a->second.walltime_end_ms;
    }
    if (!p.end_ms || p.cancel_requested)
      continue;
    // The hub ends the pilot a little before the batch system would kill it, so its agents can
    // hand their jobs back in order (half the drain margin: 2.5 s to 30 s).
    if (wall >= p.end_ms - drain_margin_ms(p.spec.walltime_ms()) / 2) {
      if (p.state == "running" || p.state == "pending" || p.state == "draining")
        stop_pilot(p, fmt::format("its walltime of {} ended",
                                  format_duration_ms(p.spec.walltime_ms())));
    } else if (p.state == "running" &&
               wall >= p.end_ms - drain_margin_ms(p.spec.walltime_ms())) {
      // Shortly before the end: no new jobs; the running ones may finish.
      log::info("pilot {}: running -> draining ({} of walltime left)", p.id.value,
                format_duration_ms(p.end_ms - wall));
      p.state = "draining";
      for (auto aid : p.agents)
        scheduler_.set_accepting(aid, false);
      pilot_changed(p);
    }
  }
}

void Hub::resume_pilots() {
  for (auto& [id, p] : pilots_) {
    const pb::ResourceSpec* r = find_resource(p.spec.resource());
    p.remote = r ? r->type() != "local" : p.spec.resource() != "local";
    if (!p.remote || final_state(p.state))
      continue;
    if (r && r->type() == "ssh") {
      // Its links were this process's pipes: the agents ended with the old hub.
      std::int64_t now = clock_.monotonic_ms();
      for (auto& [aid, a] : agents_)
        if (a.pilot == id && a.reconnect_deadline > 0)
          a.reconnect_deadline = now;
      p.reason = "the hub restarted: ssh pilots end with the hub that started them";
      p.state = "ended";
      p.ended_ms = clock_.now_ms();
      pilot_changed(p);
      continue;
    }
    if (p.batch_id.empty()) {
      p.reason = "the hub stopped before the batch system took the pilot";
      p.state = "failed";
      p.ended_ms = clock_.now_ms();
      pilot_changed(p);
      continue;
    }
    log::info("pilot {}: following batch job {} again", id.value, p.batch_id);
    p.end_ms = 0; // its walltime runs from the batch job's start: its agents will say when
    start_driver(p);
  }
}

} // namespace sortie::hub
