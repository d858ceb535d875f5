// SPDX-License-Identifier: Apache-2.0
// Checks a submission, stores it in one commit, then makes its jobs live and answers.
#include "hub/submit.hpp"

#include <malloc.h>

#include <algorithm>

#include <fmt/format.h>

#include "common/text.hpp"

namespace sortie::hub {
namespace {

constexpr std::uint64_t kMaxJobsPerSubmit = 10'000'000;
// The exported environment of one submission (--export=ALL is typically a few KiB).
constexpr std::size_t kMaxExportedEnvBytes = 1u << 20;
// Ids reserved past the next one each time the reservation runs out (one file write).
constexpr std::uint64_t kIdReservation = 100'000;
constexpr std::int64_t kMaxDurationMs = 10LL * 366 * 24 * 3600 * 1000; // 10 years
constexpr std::uint64_t kMaxMemoryBytes = 1ULL << 50;                   // 1 PiB

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

} // namespace

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
  if (!spec.kind().empty() && spec.kind() != "command" && spec.kind() != "engine")
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("unknown job kind '{}': a job is a \"command\" (the default) or "
                                  "an \"engine\"",
                                  spec.kind()),
                      ctx);
  if (spec.restart() && spec.kind() != "engine")
    return make_error(ErrorCode::InvalidArgument,
                      "only engines restart when they end: use --retries N with "
                      "--retry-on-failure for a command",
                      ctx);
  // Sorted and unique, so that equal requirements compare equal.
  for (auto* list : {spec.mutable_hosts(), spec.mutable_prefer_hosts()}) {
    std::sort(list->begin(), list->end());
    list->erase(std::unique(list->begin(), list->end()), list->end());
  }
  return ok_result();
}


void Submit::register_with(Router& router) {
  router.add(pb::Envelope::kSubmit, Role::Client, [this](const Sender& from, pb::Envelope& env) {
    handle_submit(from, *env.mutable_submit());
  });
}

void Submit::handle_submit(const Sender& from, pb::SubmitRequest& req) {
  auto refuse = [&](const Error& e) { reply_error(from.peer, from.rid, e); };
  if (core_.state.stopping)
    return refuse(make_error(ErrorCode::Unavailable, "the hub is stopping"));
  if (req.items_size() == 0)
    return refuse(make_error(ErrorCode::InvalidArgument, "a submission needs at least one job"));
  std::uint64_t total = 0;
  for (int i = 0; i < req.items_size(); ++i) {
    auto* item = req.mutable_items(i);
    auto r = check_spec(*item->mutable_spec(), static_cast<std::size_t>(i));
    if (r.ok())
      r = jobs_.check_after(item->spec(), static_cast<std::size_t>(i));
    if (!r.ok())
      return refuse(r.error());
    if (item->has_array()) {
      auto* a = item->mutable_array();
      if (a->step() == 0)
        a->set_step(1);
      if (a->step() < 0 || a->last() < a->first())
        return refuse(make_error(ErrorCode::InvalidArgument,
                                 fmt::format("array {}-{}:{} is empty: use FIRST-LAST[:STEP] "
                                             "with FIRST <= LAST and STEP > 0",
                                             a->first(), a->last(), a->step())));
      // The span in unsigned arithmetic: INT64_MIN..INT64_MAX must not wrap to a small count.
      std::uint64_t span =
          static_cast<std::uint64_t>(a->last()) - static_cast<std::uint64_t>(a->first());
      std::uint64_t count = span / static_cast<std::uint64_t>(a->step());
      if (count >= kMaxJobsPerSubmit)
        return refuse(make_error(ErrorCode::InvalidArgument,
                                 fmt::format("array {}-{}:{} has more than {} jobs: a "
                                             "submission may create at most {}",
                                             a->first(), a->last(), a->step(), kMaxJobsPerSubmit,
                                             kMaxJobsPerSubmit)));
      total += count + 1;
    } else {
      total += 1;
    }
    if (total > kMaxJobsPerSubmit)
      return refuse(make_error(ErrorCode::InvalidArgument,
                               fmt::format("a submission may create at most {} jobs",
                                           kMaxJobsPerSubmit)));
  }
  if (req.group_name().size() > 256)
    return refuse(make_error(ErrorCode::InvalidArgument, "the group name is too long"));
  const auto& config = core_.config;
  if (config.confirm_above > 0 && total > config.confirm_above && !req.confirmed())
    return refuse(make_error(ErrorCode::FailedPrecondition,
                             fmt::format("this submission would create {} jobs, more than "
                                         "confirm_above ({}): if that is what you meant, "
                                         "submit again with --yes",
                                         with_thousands(total),
                                         with_thousands(config.confirm_above))));
  std::size_t env_bytes = 0;
  for (const auto& e : req.env()) {
    if (auto r = check_env_var(e); !r.ok())
      return refuse(r.error().with_context("exported environment"));
    env_bytes += e.name().size() + e.value().size() + 2;
  }
  if (env_bytes > kMaxExportedEnvBytes || req.env_size() > 65536)
    return refuse(make_error(ErrorCode::InvalidArgument,
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
  commit(from, req, total, std::move(env_blob));
}

void Submit::commit(const Sender& from, pb::SubmitRequest& req, std::uint64_t total,
                    std::string env_blob) {
  auto& ids = core_.state;
  std::uint64_t group = ids.next_group_id++;
  std::uint64_t first = ids.next_job_id;
  ids.next_job_id += total;
  std::int64_t now = core_.clock.now_ms();
  // max_per_node counts per group: a named group spans every submission with that name.
  auto group_key = core_.scheduler.intern(req.group_name().empty() ? fmt::format("#{}", group)
                                                                    : req.group_name());

  store::WriteBatch& b = core_.durable.batch();
  // Ids are reserved ahead, in blocks, in a file of their own: even a store lost whole cannot
  // make them be handed out twice (`hub check --recover` starts past the reservation).
  if (ids.next_job_id > ids.reserved_job_ids || ids.next_group_id > ids.reserved_group_ids) {
    ids.reserved_job_ids = std::max(ids.reserved_job_ids, ids.next_job_id + kIdReservation);
    ids.reserved_group_ids = std::max(ids.reserved_group_ids, ids.next_group_id + kIdReservation);
    b.reserve_job_ids = ids.reserved_job_ids;
    b.reserve_group_ids = ids.reserved_group_ids;
  }
  auto exported_env = jobs_.intern_env(env_blob);
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
      std::uint64_t spec_id = ids.next_spec_id++;
      b.specs.push_back({spec_id, bytes});
      new_specs.push_back({spec_id, jobs_.make_spec(bytes, item.spec())});
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
  core_.durable.after_commit([this, peer = from.peer, rid = from.rid, group, group_key, first,
                              total, now, group_env = std::move(exported_env),
                              name = req.group_name(), new_specs = std::move(new_specs),
                              runs = std::move(runs)](const Result<void>& r) mutable {
    if (!r.ok())
      return reply_error(peer, rid,
                         make_error(ErrorCode::Io,
                                    fmt::format("the submission could not be stored, nothing was "
                                                "submitted: {}",
                                                r.error().message)));
    // Durable: make the jobs live.
    auto& st = core_.state;
    for (auto& ns : new_specs) {
      if (st.specs.size() < ns.id)
        st.specs.resize(ns.id);
      st.specs[ns.id - 1] = std::move(ns.spec);
    }
    new_specs = {};
    if (st.groups.size() < group)
      st.groups.resize(group);
    st.groups[group - 1] = Group{group, group_key, name, now, first, total, total, group_env};
    if (!name.empty())
      st.groups_by_name[name].push_back(group);
    st.jobs.grow_to(first + total - 1);
    st.state_counts[JobState::Queued] += total;
    for (const auto& run : runs) {
      Spec& spec = st.specs[run.spec_id - 1];
      spec.jobs += run.count;
      bool simple = spec.after.empty();
      for (std::uint64_t k = 0; k < run.count; ++k) {
        Job& j = st.jobs[run.first_id + k - 1];
        j.id = JobId(run.first_id + k);
        j.spec = static_cast<std::uint32_t>(run.spec_id);
        j.group = static_cast<std::uint32_t>(group);
        j.is_array = run.is_array;
        j.array_index = run.first_index + static_cast<std::int64_t>(k) * run.step;
        j.submit_ms = now;
        j.state = JobState::Queued;
        jobs_.watch_queue_timeout(j);
        if (simple)
          core_.scheduler.enqueue(j.id, spec.req);
        else
          jobs_.make_ready(j);
      }
    }
    runs = {};
    // A big submission leaves megabytes of freed request buffers; give them back to the OS
    // instead of keeping them for the hub's lifetime.
    if (total >= 10'000)
      ::malloc_trim(0);
    pb::Envelope env;
    auto* reply_body = env.mutable_submit_reply();
    reply_body->set_first_job_id(first);
    reply_body->set_count(total);
    reply_body->set_group_id(group);
    if (!st.any_live_pilot())
      reply_body->set_warning("no pilot is running: the jobs wait until one is added (e.g. "
                              "`sortie pilot add --resource local --slots 4`)");
    reply(peer, env, rid);
    core_.events.schedulable.emit();
  });
}

} // namespace sortie::hub
