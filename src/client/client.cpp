// SPDX-License-Identifier: Apache-2.0
// The client library over a blocking link: one request at a time, replies matched by request id.
#include "sortie/client.hpp"

#include <filesystem>

#include <unistd.h>

#include <cstdlib>
#include <optional>

#include <fmt/format.h>

#include "common/hub_file.hpp"
#include "common/profile.hpp"
#include "client/caller.hpp"
#include "client/connect.hpp"
#include "protocol/blocking_link.hpp"
#include "protocol/errors.hpp"

namespace sortie {
namespace {

pb::JobSpec to_pb(const JobSpec& s) {
  pb::JobSpec out;
  for (const auto& a : s.argv)
    out.add_argv(a);
  for (const auto& [k, v] : s.env) {
    auto* e = out.add_env();
    e->set_name(k);
    e->set_value(v);
  }
  out.set_cwd(s.cwd);
  out.set_slots(s.slots);
  out.set_label(s.label);
  out.set_name(s.name);
  out.set_memory_bytes(s.memory_bytes);
  out.set_gpus(s.gpus);
  for (const auto& h : s.hosts)
    out.add_hosts(h);
  for (const auto& h : s.prefer_hosts)
    out.add_prefer_hosts(h);
  out.set_max_per_node(s.max_per_node);
  out.set_priority(s.priority);
  out.set_queue_timeout_ms(s.queue_timeout_ms);
  out.set_run_timeout_ms(s.run_timeout_ms);
  out.set_time_request_ms(s.time_request_ms);
  if (s.retries)
    out.set_retries(*s.retries);
  out.set_retry_on_failure(s.retry_on_failure);
  for (auto id : s.after)
    out.add_after(id.value);
  out.set_mpi_ranks(s.mpi_ranks);
  out.set_ranks_per_node(s.ranks_per_node);
  out.set_kind(s.kind);
  out.set_restart(s.restart);
  return out;
}

JobSpec from_pb(const pb::JobSpec& s) {
  JobSpec out;
  out.argv.assign(s.argv().begin(), s.argv().end());
  for (const auto& e : s.env())
    out.env.emplace_back(e.name(), e.value());
  out.cwd = s.cwd();
  out.slots = s.slots();
  out.label = s.label();
  out.name = s.name();
  out.memory_bytes = s.memory_bytes();
  out.gpus = s.gpus();
  out.hosts.assign(s.hosts().begin(), s.hosts().end());
  out.prefer_hosts.assign(s.prefer_hosts().begin(), s.prefer_hosts().end());
  out.max_per_node = s.max_per_node();
  out.priority = s.priority();
  out.queue_timeout_ms = s.queue_timeout_ms();
  out.run_timeout_ms = s.run_timeout_ms();
  out.time_request_ms = s.time_request_ms();
  if (s.has_retries())
    out.retries = s.retries();
  out.retry_on_failure = s.retry_on_failure();
  for (auto id : s.after())
    out.after.push_back(JobId(id));
  out.mpi_ranks = s.mpi_ranks();
  out.ranks_per_node = s.ranks_per_node();
  out.kind = s.kind();
  out.restart = s.restart();
  return out;
}

void to_pb(const JobSelector& sel, pb::JobSelector& out) {
  for (const auto& [a, b] : sel.ranges) {
    auto* r = out.add_ids();
    r->set_first(a.value);
    r->set_last(b.value);
  }
  for (auto g : sel.groups)
    out.add_groups(g.value);
  for (const auto& n : sel.group_names)
    out.add_group_names(n);
  out.set_all(sel.all);
}

JobInfo from_pb(const pb::JobInfo& j) {
  JobInfo out;
  out.id = JobId(j.id());
  out.state = static_cast<JobState>(j.state());
  if (j.has_exit_code())
    out.exit_code = j.exit_code();
  if (j.has_signal())
    out.signal = j.signal();
  out.node = j.node();
  out.nodes.assign(j.nodes().begin(), j.nodes().end());
  out.attempt = j.attempt();
  if (j.has_array_index())
    out.array_index = j.array_index();
  out.group = GroupId(j.group());
  out.name = j.name();
  out.submit_ms = j.submit_ms();
  out.start_ms = j.start_ms();
  out.end_ms = j.end_ms();
  out.reason = j.reason();
  out.limits = j.limits();
  out.gpus.assign(j.gpus().begin(), j.gpus().end());
  out.group_name = j.group_name();
  if (j.has_spec())
    out.spec = from_pb(j.spec());
  for (const auto& h : j.history())
    out.history.push_back({static_cast<JobState>(h.state()), h.time_ms()});
  out.usage = {j.usage().user_cpu_us(), j.usage().system_cpu_us(), j.usage().max_rss_kib()};
  return out;
}

WaitProgress from_pb(const pb::WaitProgress& p) {
  WaitProgress out;
  out.total = p.total();
  out.finished = p.finished();
  out.succeeded = p.succeeded();
  out.failed = p.failed();
  out.cancelled = p.cancelled();
  out.done = p.done();
  for (auto id : p.failed_ids())
    out.failed_ids.push_back(JobId(id));
  return out;
}

PilotSpec from_pb(const pb::PilotSpec& s) {
  PilotSpec out;
  out.resource = s.resource();
  out.nodes = s.nodes();
  out.slots_per_node = s.slots_per_node();
  out.label = s.label();
  out.node_names.assign(s.node_names().begin(), s.node_names().end());
  out.gpus_per_node = s.gpus_per_node();
  out.memory_per_node = s.memory_per_node();
  out.walltime_ms = s.walltime_ms();
  out.queue = s.queue();
  out.batch_options.assign(s.batch_options().begin(), s.batch_options().end());
  return out;
}

ResourceSpec from_pb(const pb::ResourceSpec& s) {
  ResourceSpec out;
  out.name = s.name();
  out.type = s.type();
  out.location = s.location();
  out.install_dir = s.install_dir();
  out.tmp_dir = s.tmp_dir();
  out.gateway = s.gateway();
  out.ssh_options.assign(s.ssh_options().begin(), s.ssh_options().end());
  out.machinefile = s.machinefile();
  out.from_config = s.from_config();
  return out;
}

/// Variables that describe the submitting session or machine, not the job's software: wrong
/// anywhere else, and set afresh where the job runs (docs/jobs.md, "Environment").
bool bound_to_session(std::string_view name) {
  static constexpr std::string_view exact[] = {
      "PWD", "OLDPWD", "SHLVL", "_", "HOSTNAME", "HOST", "DISPLAY", "XAUTHORITY", "TERM_SESSION_ID",
      "TMUX", "TMUX_PANE", "STY", "WINDOW", "DBUS_SESSION_BUS_ADDRESS", "OMP_NUM_THREADS",
      "CUDA_VISIBLE_DEVICES"};
  static constexpr std::string_view prefixes[] = {"SSH_", "XDG_RUNTIME_", "XDG_SESSION_",
                                                  "XDG_SEAT", "XDG_VTNR", "SORTIE_", "SLURM_",
                                                  "OMPI_", "PMIX_", "PMI_"};
  for (auto e : exact)
    if (name == e)
      return true;
  for (auto p : prefixes)
    if (name.starts_with(p))
      return true;
  return false;
}

} // namespace

Result<std::vector<std::pair<std::string, std::string>>> exported_environment(
    const std::string& spec) {
  std::vector<std::pair<std::string, std::string>> out;
  auto bad = [&](const std::string& item, const std::string& why) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("--export '{}': '{}' {}; use ALL, NONE or "
                                  "NAME[=VALUE],... (e.g. --export=ALL,OMP_PROC_BIND=close)",
                                  spec, item, why));
  };
  std::vector<std::string> items;
  std::size_t start = 0;
  while (start <= spec.size()) {
    auto comma = spec.find(',', start);
    items.push_back(spec.substr(start, comma == std::string::npos ? comma : comma - start));
    if (comma == std::string::npos)
      break;
    start = comma + 1;
  }
  bool all = false, none = false;
  for (const auto& item : items) {
    if (item == "ALL")
      all = true;
    else if (item == "NONE")
      none = true;
  }
  if (none && items.size() > 1)
    return bad("NONE", "cannot be combined with other items");
  if (all)
    for (char** e = ::environ; e && *e; ++e) {
      std::string_view kv(*e);
      auto eq = kv.find('=');
      if (eq == std::string_view::npos || eq == 0 || bound_to_session(kv.substr(0, eq)))
        continue;
      out.emplace_back(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
    }
  for (const auto& item : items) {
    if (item == "ALL" || item == "NONE")
      continue;
    auto eq = item.find('=');
    std::string name = item.substr(0, eq);
    if (name.empty())
      return bad(item, "has no variable name");
    if (name.find_first_of(" \t\n") != std::string::npos)
      return bad(item, "is not a variable name");
    std::optional<std::string> value;
    if (eq != std::string::npos)
      value = item.substr(eq + 1);
    else if (const char* here = std::getenv(name.c_str()))
      value = here;
    if (!value)
      continue; // a name that is not set here: nothing to pass, as sbatch
    std::erase_if(out, [&](const auto& kv) { return kv.first == name; });
    out.emplace_back(name, *value);
  }
  return out;
}

struct Client::Impl {
  net::BlockingLink link;
  ConnectOptions options;
  std::unique_ptr<detail::Caller> caller; ///< made at the first call()

  Result<detail::Caller*> get_caller() {
    if (!caller) {
      SORTIE_ASSIGN_OR_RETURN(made, detail::Caller::open(options));
      caller = std::move(made);
    }
    return caller.get();
  }
  std::uint64_t next_rid = 1;
  std::int64_t timeout_ms = 10'000;
  std::int64_t heartbeat_ms = 5'000;

  /// How long to wait for the next frame of a reply before calling the hub unresponsive: the hub
  /// sends heartbeats, so silence this long means it is gone.
  std::int64_t silence_limit() const { return std::max(timeout_ms, 4 * heartbeat_ms); }

  Result<std::uint64_t> send(pb::Envelope& env) {
    std::uint64_t rid = next_rid++;
    env.set_request_id(rid);
    SORTIE_TRY(link.send(env));
    return rid;
  }

  /// The next frame answering `rid` (others are skipped). An ErrorReply becomes the error.
  /// `total`, if not negative, bounds the whole wait (heartbeats do not extend it).
  Result<pb::Envelope> reply(std::uint64_t rid, std::int64_t timeout, std::int64_t total = -1) {
    while (true) {
      SORTIE_ASSIGN_OR_RETURN(env, link.receive(timeout, total));
      if (env.request_id() != rid && env.request_id() != 0)
        continue;
      if (env.has_error())
        return net::error_from_pb(env.error());
      if (env.request_id() == 0)
        continue;
      return env;
    }
  }

  Result<pb::Envelope> call(pb::Envelope& req) {
    SORTIE_ASSIGN_OR_RETURN(rid, send(req));
    return reply(rid, silence_limit());
  }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

std::int64_t Client::heartbeat_interval_ms() const { return impl_->heartbeat_ms; }

std::future<Result<std::string>> Client::call_async(const std::string& handler,
                                                    std::string payload,
                                                    const CallOptions& options) {
  auto c = impl_->get_caller();
  if (!c.ok()) {
    std::promise<Result<std::string>> failed;
    failed.set_value(c.error());
    return failed.get_future();
  }
  return (*c)->call(handler, std::move(payload), options);
}

Result<std::string> Client::call(const std::string& handler, std::string payload,
                                 const CallOptions& options) {
  SORTIE_ASSIGN_OR_RETURN(c, impl_->get_caller());
  return c->call_and_wait(handler, std::move(payload), options);
}

Result<Client> Client::connect(const std::string& profile, ConnectOptions options) {
  options.profile = profile;
  return connect(options);
}

Result<Client> Client::connect(const ConnectOptions& options) {
  SORTIE_ASSIGN_OR_RETURN(opened, detail::open_hub_link(options));
  auto impl = std::make_unique<Impl>();
  impl->link = std::move(opened.link);
  impl->timeout_ms = options.timeout_ms;
  impl->options = options;
  impl->options.on_hub_started = nullptr;
  if (opened.welcome.heartbeat_interval_ms())
    impl->heartbeat_ms = opened.welcome.heartbeat_interval_ms();
  return Client(std::move(impl));
}

namespace detail {
namespace {

Result<HubLink> open_once(const ConnectOptions& options) {
  std::filesystem::path hub_file = options.hub_file;
  std::string profile_name = options.profile;
  if (hub_file.empty()) {
    SORTIE_ASSIGN_OR_RETURN(profile, resolve_profile(options.profile));
    hub_file = profile.hub_file();
    profile_name = profile.name;
  }
  auto hub = read_hub_file(hub_file);
  if (!hub.ok()) {
    // Never started is the same, for a caller, as not running now.
    if (hub.error().code == ErrorCode::NotFound)
      return Error{ErrorCode::Unavailable, hub.error().message, hub.error().context};
    return hub.error();
  }
  const HubFile& hf = *hub;
  SORTIE_ASSIGN_OR_RETURN(key, token_key(hf));
  Result<net::BlockingLink> link = make_error(ErrorCode::Unavailable, "");
  if (!hf.socket.empty() && ::access(hf.socket.c_str(), F_OK) == 0)
    link = net::BlockingLink::connect_unix(hf.socket, options.timeout_ms);
  if (!link.ok() && hf.port != 0)
    link = net::BlockingLink::connect_tcp(hf.host, hf.port, options.timeout_ms, hf.tls_fingerprint);
  // A hub that answered but failed the TLS pin is running: say what is wrong with it.
  if (!link.ok() && (link.error().code == ErrorCode::PermissionDenied ||
                     link.error().code == ErrorCode::FailedPrecondition))
    return link.error();
  if (!link.ok())
    return make_error(ErrorCode::Unavailable,
                      fmt::format("the hub of profile '{}' is not running ({}): start it with "
                                  "`sortie hub start`",
                                  profile_name.empty() ? hf.profile : profile_name,
                                  link.error().message));
  HubLink out{std::move(*link), {}};
  SORTIE_ASSIGN_OR_RETURN(welcome, out.link.handshake(key, pb::ROLE_CLIENT, options.client_name,
                                                      options.timeout_ms));
  out.welcome = std::move(welcome);
  return out;
}

} // namespace

Result<HubLink> open_hub_link(const ConnectOptions& options) {
  auto opened = open_once(options);
  if (opened.ok() || !options.start_if_needed || !options.hub_file.empty() ||
      opened.error().code != ErrorCode::Unavailable)
    return opened;
  StartHubOptions start;
  start.profile = options.profile;
  start.sortie_exe = options.sortie_exe;
  auto started = start_hub(start);
  if (!started.ok()) {
    // Another process may have started it meanwhile (AlreadyExists): then connecting works.
    if (started.error().code == ErrorCode::AlreadyExists)
      return open_once(options);
    return started.error();
  }
  if (options.on_hub_started)
    options.on_hub_started(*started);
  return open_once(options);
}

} // namespace detail

Result<Submitted> Client::submit(const JobSpec& spec, const std::string& group_name) {
  return submit_batch({spec}, group_name);
}

Result<Submitted> Client::submit_array(const JobSpec& spec,
                                       const ArrayRange& range,
                                       const std::string& group_name,
                                       bool confirmed) {
  return submit_items({{spec, range}}, group_name, confirmed);
}

Result<Submitted> Client::submit_batch(const std::vector<JobSpec>& specs,
                                       const std::string& group_name,
                                       bool confirmed) {
  std::vector<BatchItem> items;
  items.reserve(specs.size());
  for (const auto& s : specs)
    items.push_back({s, std::nullopt});
  return submit_items(items, group_name, confirmed);
}

Result<Submitted> Client::submit_items(const std::vector<BatchItem>& items,
                                       const std::string& group_name,
                                       bool confirmed) {
  if (items.empty())
    return make_error(ErrorCode::InvalidArgument, "nothing to submit: the batch is empty");
  for (const auto& it : items)
    if (it.spec.export_env != items.front().spec.export_env)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("the jobs of one submission share one --export, and these "
                                    "have '{}' and '{}': submit them separately",
                                    items.front().spec.export_env, it.spec.export_env));
  SORTIE_ASSIGN_OR_RETURN(exported, exported_environment(items.front().spec.export_env));
  pb::Envelope env;
  auto* req = env.mutable_submit();
  req->set_group_name(group_name);
  req->set_confirmed(confirmed);
  for (auto& [name, value] : exported) {
    auto* e = req->add_env();
    e->set_name(std::move(name));
    e->set_value(std::move(value));
  }
  std::error_code ec;
  std::string here = std::filesystem::current_path(ec).string();
  for (const auto& it : items) {
    auto* item = req->add_items();
    *item->mutable_spec() = to_pb(it.spec);
    if (it.spec.cwd.empty() && !here.empty()) // as sbatch: where the submitter is
      item->mutable_spec()->set_cwd(here);
    if (it.array) {
      auto* a = item->mutable_array();
      a->set_first(it.array->first);
      a->set_last(it.array->last);
      a->set_step(it.array->step);
    }
  }
  if (env.ByteSizeLong() > 60u << 20)
    return make_error(ErrorCode::InvalidArgument,
                      "the batch is larger than 60 MiB: submit it in several parts");
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  if (!reply.has_submit_reply())
    return make_error(ErrorCode::Internal, "unexpected reply to a submission");
  const auto& r = reply.submit_reply();
  return Submitted{JobId(r.first_job_id()), r.count(), GroupId(r.group_id()), r.warning()};
}

Result<JobInfo> Client::job(JobId id) {
  pb::Envelope env;
  env.mutable_get_job()->set_job_id(id.value);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  if (!reply.has_job_info())
    return make_error(ErrorCode::Internal, "unexpected reply to a job query");
  return from_pb(reply.job_info());
}

Result<std::vector<JobInfo>> Client::jobs(const JobSelector& selector,
                                          const std::vector<JobState>& states) {
  SORTIE_ASSIGN_OR_RETURN(page, jobs_page(selector, states, 0));
  return std::move(page.jobs);
}

Result<JobPage> Client::jobs_page(const JobSelector& selector,
                                  const std::vector<JobState>& states,
                                  std::uint64_t limit) {
  pb::Envelope env;
  auto* req = env.mutable_list_jobs();
  to_pb(selector, *req->mutable_selector());
  for (auto s : states)
    req->add_states(static_cast<pb::JobState>(s));
  req->set_limit(limit);
  SORTIE_ASSIGN_OR_RETURN(rid, impl_->send(env));
  JobPage out;
  while (true) {
    SORTIE_ASSIGN_OR_RETURN(reply, impl_->reply(rid, impl_->silence_limit()));
    if (!reply.has_job_list())
      return make_error(ErrorCode::Internal, "unexpected reply to a job list");
    const auto& list = reply.job_list();
    for (const auto& j : list.jobs())
      out.jobs.push_back(from_pb(j));
    if (list.last()) {
      out.matched = list.matched();
      for (const auto& c : list.counts())
        out.counts[static_cast<JobState>(c.state())] = c.count();
      return out;
    }
  }
}

Result<WaitProgress> Client::wait(const JobSelector& selector,
                                  const std::function<void(const WaitProgress&)>& on_progress,
                                  std::int64_t timeout_ms) {
  pb::Envelope env;
  auto* req = env.mutable_wait();
  to_pb(selector, *req->mutable_selector());
  req->set_progress(static_cast<bool>(on_progress));
  SORTIE_ASSIGN_OR_RETURN(rid, impl_->send(env));
  auto clock_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
  std::int64_t deadline = timeout_ms < 0 ? -1 : clock_ms() + timeout_ms;
  while (true) {
    std::int64_t left = deadline < 0 ? -1 : std::max<std::int64_t>(0, deadline - clock_ms());
    auto reply = impl_->reply(rid, impl_->silence_limit(), left);
    if (!reply.ok()) {
      if (reply.error().code == ErrorCode::Timeout && deadline >= 0 && clock_ms() >= deadline) {
        // The hub still waits on our behalf; drop the connection so it stops.
        impl_->link.close();
        return make_error(ErrorCode::Timeout,
                          fmt::format("the jobs did not finish within {} ms", timeout_ms));
      }
      return reply.error();
    }
    if (!reply->has_wait_progress())
      return make_error(ErrorCode::Internal, "unexpected reply to a wait");
    auto p = from_pb(reply->wait_progress());
    if (on_progress)
      on_progress(p);
    if (p.done)
      return p;
  }
}

Result<CancelSummary> Client::cancel(const JobSelector& selector, const std::string& reason) {
  pb::Envelope env;
  to_pb(selector, *env.mutable_cancel()->mutable_selector());
  env.mutable_cancel()->set_reason(reason);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  if (!reply.has_cancel_reply())
    return make_error(ErrorCode::Internal, "unexpected reply to a cancel");
  const auto& c = reply.cancel_reply();
  return CancelSummary{c.cancelled(), c.already_finished(), c.not_found()};
}

Result<ForgetSummary> Client::forget(const JobSelector& selector) {
  pb::Envelope env;
  to_pb(selector, *env.mutable_forget()->mutable_selector());
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  if (!reply.has_forget_reply())
    return make_error(ErrorCode::Internal, "unexpected reply to a forget");
  const auto& f = reply.forget_reply();
  return ForgetSummary{f.forgotten(), f.not_ended(), f.not_found()};
}

Result<void> Client::output(JobId id,
                            OutputStream stream,
                            bool follow,
                            const std::function<bool(std::string_view)>& sink,
                            std::uint32_t attempt) {
  pb::Envelope env;
  auto* req = env.mutable_logs();
  req->set_job_id(id.value);
  req->set_stream(stream == OutputStream::Stderr ? pb::STREAM_STDERR : pb::STREAM_STDOUT);
  req->set_follow(follow);
  req->set_attempt(attempt);
  SORTIE_ASSIGN_OR_RETURN(rid, impl_->send(env));
  while (true) {
    // Following may wait a long time between chunks; heartbeats keep the link checked.
    SORTIE_ASSIGN_OR_RETURN(reply, impl_->reply(rid, impl_->silence_limit()));
    if (!reply.has_logs_data())
      return make_error(ErrorCode::Internal, "unexpected reply to a logs request");
    const auto& d = reply.logs_data();
    if (!d.data().empty() && !sink(d.data())) {
      impl_->link.close();
      return ok_result();
    }
    if (d.eof())
      return ok_result();
  }
}

Result<HubStatus> Client::hub_status() {
  pb::Envelope env;
  env.mutable_hub_status();
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  if (!reply.has_hub_status_reply())
    return make_error(ErrorCode::Internal, "unexpected reply to a status request");
  const auto& s = reply.hub_status_reply();
  HubStatus out;
  out.version = s.version();
  out.profile = s.profile();
  out.pid = s.pid();
  out.started_ms = s.started_ms();
  out.address = s.address();
  for (const auto& [k, v] : s.jobs_by_state())
    out.jobs_by_state[k] = v;
  out.agents = s.agents();
  out.pilots = s.pilots();
  out.slots_total = s.slots_total();
  out.slots_used = s.slots_used();
  out.store_path = s.store_path();
  out.store_commits = s.store_commits();
  return out;
}

Result<void> Client::stop_hub(bool restart) {
  pb::Envelope env;
  env.mutable_hub_stop()->set_restart(restart);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  return ok_result();
}

Result<PilotId> Client::add_pilot(const PilotSpec& spec) {
  pb::Envelope env;
  auto* s = env.mutable_pilot_add()->mutable_spec();
  s->set_resource(spec.resource);
  s->set_nodes(spec.nodes);
  s->set_slots_per_node(spec.slots_per_node);
  s->set_label(spec.label);
  for (const auto& n : spec.node_names)
    s->add_node_names(n);
  s->set_gpus_per_node(spec.gpus_per_node);
  s->set_memory_per_node(spec.memory_per_node);
  s->set_walltime_ms(spec.walltime_ms);
  s->set_queue(spec.queue);
  for (const auto& o : spec.batch_options)
    s->add_batch_options(o);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  if (!reply.has_pilot_add_reply())
    return make_error(ErrorCode::Internal, "unexpected reply to pilot add");
  return PilotId(reply.pilot_add_reply().pilot_id());
}

Result<std::vector<PilotInfo>> Client::pilots() {
  pb::Envelope env;
  env.mutable_pilot_list();
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  if (!reply.has_pilot_list_reply())
    return make_error(ErrorCode::Internal, "unexpected reply to pilot list");
  std::vector<PilotInfo> out;
  for (const auto& p : reply.pilot_list_reply().pilots()) {
    PilotInfo i;
    i.id = PilotId(p.id());
    i.spec = from_pb(p.spec());
    i.state = p.state();
    i.nodes_up = p.nodes_up();
    i.slots_used = p.slots_used();
    i.slots_total = p.slots_total();
    i.created_ms = p.created_ms();
    i.reason = p.reason();
    i.nodes.assign(p.nodes().begin(), p.nodes().end());
    i.end_ms = p.end_ms();
    i.batch_id = p.batch_id();
    out.push_back(std::move(i));
  }
  return out;
}

Result<void> Client::cancel_pilot(PilotId id) {
  pb::Envelope env;
  env.mutable_pilot_cancel()->set_pilot_id(id.value);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  return ok_result();
}

Result<void> Client::add_resource(const ResourceSpec& spec, bool replace) {
  pb::Envelope env;
  auto* req = env.mutable_resource_add();
  req->set_replace(replace);
  auto* s = req->mutable_spec();
  s->set_name(spec.name);
  s->set_type(spec.type);
  s->set_location(spec.location);
  s->set_install_dir(spec.install_dir);
  s->set_tmp_dir(spec.tmp_dir);
  s->set_gateway(spec.gateway);
  for (const auto& o : spec.ssh_options)
    s->add_ssh_options(o);
  s->set_machinefile(spec.machinefile);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  return ok_result();
}

Result<std::vector<ResourceSpec>> Client::resources() {
  pb::Envelope env;
  env.mutable_resource_list();
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  if (!reply.has_resource_list_reply())
    return make_error(ErrorCode::Internal, "unexpected reply to resource list");
  std::vector<ResourceSpec> out;
  for (const auto& r : reply.resource_list_reply().resources())
    out.push_back(from_pb(r));
  return out;
}

Result<void> Client::remove_resource(const std::string& name) {
  pb::Envelope env;
  env.mutable_resource_remove()->set_name(name);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(env));
  return ok_result();
}

} // namespace sortie
