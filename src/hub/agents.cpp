// SPDX-License-Identifier: Apache-2.0
// Agents in the hub: registration, reconnection, job events, links ending, agents gone.
#include "hub/agents.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/log.hpp"
#include "common/text.hpp"
#include "launch/process.hpp"
#include "protocol/auth.hpp"

namespace sortie::hub {
namespace {

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

/// What every registration takes from the agent's message.
void take_registration(Agent& a, const pb::AgentRegister& reg) {
  a.hostname = reg.hostname();
  a.pid = reg.pid();
  a.keeper_pid = reg.keeper_pid();
  a.slots = reg.slots();
  a.memory = reg.memory_bytes();
  a.gpus.assign(reg.gpus().begin(), reg.gpus().end());
  a.walltime_end_ms = reg.walltime_end_ms();
  a.limits = reg.limits();
  a.address = reg.address().empty() ? reg.hostname() : reg.address();
}

} // namespace

void Agents::register_with(Router& router) {
  router.add(pb::Envelope::kJobEvents, Role::Agent, [this](const Sender& from, pb::Envelope& env) {
    handle_job_events(*from.agent, env.job_events());
  });
  router.add(pb::Envelope::kGoodbye, Role::Agent, [](const Sender&, pb::Envelope&) {});
}

std::int64_t Agents::lease_ms(bool stdio) const {
  const auto& c = core_.config;
  // An agent notices a silent link after 4 heartbeat intervals, then tries to reconnect for the
  // window (an ssh link cannot reconnect); its newest echoed heartbeat may be an interval older.
  std::int64_t detect = std::max(c.heartbeat_deadline_ms, 4 * c.heartbeat_interval_ms);
  return detect + c.heartbeat_interval_ms + (stdio ? 0 : c.agent_reconnect_window_ms);
}

// -------------------------------------------------------------------------------------------
// Registration

void Agents::on_register(const std::shared_ptr<Peer>& peer,
                         const pb::AgentRegister& reg,
                         bool stdio) {
  auto& st = core_.state;
  if (st.stopping)
    return peer->close_with_error(make_error(ErrorCode::Unavailable, "the hub is stopping"));
  if (reg.slots() == 0 || reg.slots() > 4096 || !valid_node_name(reg.node_name()) ||
      !valid_label(reg.label()))
    return peer->close_with_error(make_error(ErrorCode::InvalidArgument,
                                             "agent registration is invalid: it needs 1..4096 "
                                             "slots, a node name and a valid label",
                                             peer->describe()));
  Agent* existing = st.find_agent(AgentId(reg.agent_id()));
  if (reg.agent_id() != 0 && existing && (existing->peer || existing->reconnect_deadline > 0))
    return reconnect(peer, reg, *existing);
  // A new agent. One that claims an id the hub does not know (its hub's store was replaced) starts
  // over and must kill whatever it still runs.
  std::vector<std::uint64_t> kill;
  for (const auto& aj : reg.jobs())
    kill.push_back(aj.job_id());
  add(peer, reg, stdio, std::move(kill));
}

void Agents::reconnect(const std::shared_ptr<Peer>& peer, const pb::AgentRegister& reg, Agent& a) {
  auto& st = core_.state;
  // After a network drop or a hub restart. Only the agent that registered holds its session key:
  // anyone else with the profile's token cannot take its jobs over. The proof names the epoch of
  // the agent's last AgentRegistered; the one before is taken too, since a link can drop before
  // that reply arrives.
  auto proves = [&](std::uint64_t epoch) {
    return epoch > 0 &&
           protocol::proofs_equal(reg.session_proof(),
                                  protocol::agent_session_proof(a.session_key, a.id.value, epoch));
  };
  std::uint64_t proven = proves(a.epoch) ? a.epoch : proves(a.epoch - 1) ? a.epoch - 1 : 0;
  if (!a.session_key.empty() && proven == 0) {
    log::warn("refused a reconnect as agent {} ({}) from {}: its session proof for epoch {} is "
              "wrong (an old session or an impostor)",
              a.id, a.node, peer->describe(), a.epoch);
    return peer->close_with_error(make_error(
        ErrorCode::PermissionDenied,
        fmt::format("agent {} is registered to another session: this is an old or foreign "
                    "session; start a new agent instead (it registers with a new id)",
                    a.id)));
  }
  // The next epoch after the one it proved: an agent that missed a reply (its link dropped
  // before AgentRegistered arrived) does not fall behind for good.
  a.epoch = (a.session_key.empty() ? a.epoch : proven) + 1;
  if (a.peer) {
    st.agent_by_peer.erase(a.peer.get());
    a.peer->close_with_error(make_error(ErrorCode::AlreadyExists,
                                        "this agent connected again on another link"));
  }
  a.peer = peer;
  a.reconnect_deadline = 0;
  a.awaiting_keeper = false;
  take_registration(a, reg);
  st.agent_by_peer[peer.get()] = a.id;
  std::vector<std::uint64_t> kill;
  std::unordered_set<JobId> reported;
  for (const auto& aj : reg.jobs()) {
    Job* j = jobs_.find(JobId(aj.job_id()));
    if (j && j->agent == a.id && j->attempt == aj.attempt() &&
        (j->state == JobState::Assigned || j->state == JobState::Running)) {
      reported.insert(j->id);
      if (aj.started() && j->state == JobState::Assigned) {
        j->started = true;
        jobs_.transition(*j, JobState::Running, core_.clock.now_ms());
      }
    } else {
      kill.push_back(aj.job_id());
    }
  }
  placement_.schedule_on(a);
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
    Job* j = jobs_.find(jid);
    if (!j->started && j->state == JobState::Assigned)
      jobs_.requeue(*j, true); // never reached the agent
    else
      jobs_.lost(*j, fmt::format("agent {} no longer knows it after reconnecting", a.node));
  }
  for (auto jid : a.jobs)
    if (const Job* j = jobs_.find(jid); j && !st.span_lost.contains(jid))
      core_.scheduler.adopt(jid, a.id, st.spec_of(*j).req, gpus_of(j->gpu_mask));
  log::info("agent {} ({}) reconnected with {} jobs from {}", a.id, a.node, a.jobs.size(),
            peer->describe());
  std::uint64_t seq = reg.unacked().seq();
  AgentId id = a.id;
  core_.durable.batch().agents.push_back(Durable::agent_row(a, true));
  core_.durable.after_commit([this, peer, id, kill, seq](const Result<void>& r) {
    if (peer->closed())
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
    Agent* agent = core_.state.find_agent(id);
    if (!agent || agent->peer != peer)
      return;
    std::vector<JobId> jobs(agent->jobs.begin(), agent->jobs.end());
    for (auto jid : jobs) {
      Job* j = jobs_.find(jid);
      if (j && j->cancel_requested) {
        j->cancel_requested = false;
        jobs_.cancel(*j, j->reason);
      } else if (auto lost = core_.state.span_lost.find(jid);
                 j && lost != core_.state.span_lost.end()) {
        jobs_.send_kill(*j, lost->second);
      }
    }
  });
  core_.events.agent_up.emit(a, true);
}

void Agents::add(const std::shared_ptr<Peer>& peer, const pb::AgentRegister& reg, bool stdio,
                 std::vector<std::uint64_t> kill) {
  auto& st = core_.state;
  // An agent is known by its pilot and node: two pilots may share a node (two Slurm jobs on
  // one host); one pilot may not have the node twice.
  for (const auto& [aid, other] : st.agents)
    if (other.peer && other.pilot.value == reg.pilot_id() && other.node == reg.node_name()) {
      auto error = make_error(ErrorCode::AlreadyExists,
                              fmt::format("pilot {} already has a node named '{}' (agent {}); "
                                          "give this agent another name",
                                          reg.pilot_id(), reg.node_name(), aid));
      if (Pilot* p = st.find_pilot(PilotId(reg.pilot_id()));
          p && p->reason.find(error.message) == std::string::npos)
        p->reason = p->reason.empty() ? error.message : p->reason + "; " + error.message;
      return peer->close_with_error(error);
    }
  Agent a;
  a.id = AgentId(st.next_agent_id++);
  a.pilot = PilotId(reg.pilot_id());
  a.node = reg.node_name();
  a.cores = reg.cores();
  a.label = reg.label();
  take_registration(a, reg);
  a.registered_ms = core_.clock.now_ms();
  a.peer = peer;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  a.local = !stdio && (st.pilot_by_pid.contains(a.pid) || (a.hostname == host && a.pid > 0));
  a.stdio = stdio;
  a.session_key = protocol::random_bytes(32);
  a.epoch = 1;
  AgentId id = a.id;
  st.agent_by_peer[peer.get()] = id;
  core_.durable.batch().agents.push_back(Durable::agent_row(a, true));
  st.agents.emplace(id, std::move(a));
  log::info("agent {} registered: node {}, {} slots{}, pilot {}, from {}", id, reg.node_name(),
            reg.slots(), reg.label().empty() ? "" : ", label " + reg.label(), reg.pilot_id(),
            peer->describe());
  core_.durable.after_commit([this, peer, id, kill](const Result<void>& r) {
    if (!r.ok())
      return peer->close_with_error(r.error());
    if (peer->closed())
      return;
    Agent* agent = core_.state.find_agent(id);
    if (!agent || agent->peer != peer)
      return;
    placement_.schedule_on(*agent);
    finish_registration(peer, id, kill);
    core_.events.agent_up.emit(*agent, false);
  });
}

void Agents::finish_registration(const std::shared_ptr<Peer>& peer,
                                 AgentId id,
                                 const std::vector<std::uint64_t>& kill) {
  const auto& c = core_.config;
  const Agent& agent = core_.state.agents.at(id);
  pb::Envelope env;
  auto* r = env.mutable_agent_registered();
  r->set_agent_id(id.value);
  r->set_output_credit(c.output_credit);
  r->set_reconnect_window_ms(c.agent_reconnect_window_ms);
  r->set_kill_grace_ms(c.kill_grace_ms);
  r->set_lease_ms(lease_ms(agent.stdio));
  r->set_session_key(agent.session_key);
  r->set_epoch(agent.epoch);
  for (auto k : kill)
    r->add_kill_jobs(k);
  peer->send(env);
  placement_.request_schedule();
}

// -------------------------------------------------------------------------------------------
// Job events

void Agents::handle_job_events(Agent& agent, const pb::JobEvents& events) {
  for (const auto& ev : events.events()) {
    if (ev.kind() == pb::JobEvent::STARTED)
      apply_started(agent, ev);
    else if (ev.kind() == pb::JobEvent::FINISHED)
      apply_finished(agent, ev);
  }
  if (events.seq() == 0)
    return;
  // The agent forgets finished results only once they are durable here.
  core_.durable.after_commit([peer = agent.peer, seq = events.seq()](const Result<void>& r) {
    if (!r.ok() || !peer || peer->closed())
      return;
    pb::Envelope ack;
    ack.mutable_job_events_ack()->set_seq(seq);
    peer->send(ack);
  });
}

void Agents::apply_started(Agent& agent, const pb::JobEvent& ev) {
  Job* job = jobs_.find(JobId(ev.job_id()));
  if (!job || job->agent != agent.id || job->attempt != ev.attempt() ||
      job->state != JobState::Assigned) {
    log::debug("agent {}: ignoring start of job {} attempt {}", agent.node, ev.job_id(),
               ev.attempt());
    return;
  }
  job->started = true;
  job->start_ms = ev.time_ms();
  job->limits = limits_code(ev.limits());
  jobs_.transition(*job, JobState::Running, ev.time_ms());
  core_.events.started.emit(*job);
}

void Agents::apply_finished(Agent& agent, const pb::JobEvent& ev) {
  auto& st = core_.state;
  Job* job = jobs_.find(JobId(ev.job_id()));
  if (!job || job->agent != agent.id || job->attempt != ev.attempt() ||
      (job->state != JobState::Assigned && job->state != JobState::Running)) {
    log::debug("agent {}: ignoring end of job {} attempt {}", agent.node, ev.job_id(),
               ev.attempt());
    return;
  }
  if (auto lost = st.span_lost.find(job->id); lost != st.span_lost.end()) {
    std::string why = std::move(lost->second);
    st.span_lost.erase(lost);
    return jobs_.lost(*job, why);
  }
  jobs_.detach_from_agent(*job);
  placement_.request_schedule();
  std::int64_t now = ev.time_ms() ? ev.time_ms() : core_.clock.now_ms();
  if (job->start_ms > 0 && !ev.killed())
    placement_.learn_runtime(agent, now - job->start_ms);
  job->end_ms = now;
  job->usage = {ev.usage().user_cpu_us(), ev.usage().system_cpu_us(), ev.usage().max_rss_kib()};
  job->has_exit_code = ev.has_exit_code();
  job->exit_code = ev.exit_code();
  job->has_signal = ev.has_signal();
  job->signal = static_cast<std::int16_t>(ev.signal());
  if (ev.killed() && !job->cancel_requested) {
    // Killed by its agent's shutdown (pilot cancelled or past its walltime, hub stopping), not
    // by the user: a lost attempt, run again elsewhere while retries remain.
    return jobs_.lost(*job, fmt::format("its agent {} shut down", agent.node));
  }
  JobState to = outcome(*job, ev);
  if (job->out_lost > 0 && job->reason.find("part of its output could not") == std::string::npos)
    job->reason = job->reason.empty() ? jobs_.output_loss_note(*job)
                                      : job->reason + "; " + jobs_.output_loss_note(*job);
  jobs_.transition(*job, to, now);
  if (to == JobState::Failed && !job->cancel_requested && jobs_.may_retry(*job, true)) {
    ++job->fail_count;
    log::info("job {} failed ({}); retry {} of {}", job->id, job->reason,
              job->lost_count + job->fail_count, st.spec_of(*job).retries);
    jobs_.requeue(*job, true);
    core_.events.attempt_ended.emit(*job);
    return;
  }
  jobs_.final(*job);
}

JobState Agents::outcome(Job& job, const pb::JobEvent& ev) const {
  const Spec& spec = core_.state.spec_of(job);
  if (ev.killed())
    return job.queue_timed_out ? JobState::TimedOut : JobState::Cancelled;
  if (ev.timed_out()) {
    job.reason = fmt::format("ran longer than its run timeout of {}",
                             format_duration_ms(Jobs::run_timeout_of(spec)));
    return JobState::TimedOut;
  }
  if (ev.memory_exceeded()) {
    job.reason = fmt::format("killed for using more than its {} of memory (enforced by {})",
                             format_size_bytes(spec.req.memory), limits_name(job.limits));
    return JobState::Failed;
  }
  if (!ev.error().empty()) {
    job.reason = ev.error();
    return JobState::Failed;
  }
  if (ev.has_exit_code() && ev.exit_code() == 0)
    return JobState::Succeeded;
  job.reason = ev.has_signal() ? fmt::format("killed by {}", signal_name(ev.signal()))
                               : fmt::format("exit code {}", ev.exit_code());
  if (spec.req.memory && job.limits == limits_code("rlimit"))
    job.reason += fmt::format(" (its address space was limited to {} with RLIMIT_AS: it may "
                              "have run out of memory)",
                              format_size_bytes(spec.req.memory));
  return JobState::Failed;
}

// -------------------------------------------------------------------------------------------
// Links ending, agents gone

void Agents::on_closed(const std::shared_ptr<Peer>& peer, const Error& reason, bool goodbye) {
  auto& st = core_.state;
  auto it = st.agent_by_peer.find(peer.get());
  if (it == st.agent_by_peer.end())
    return;
  AgentId id = it->second;
  st.agent_by_peer.erase(it);
  Agent* found = st.find_agent(id);
  if (!found || found->peer != peer)
    return; // replaced by a newer link
  Agent& a = *found;
  a.peer.reset();
  core_.scheduler.remove_node(id);
  bool process_dead =
      a.local && (st.dead_pids.contains(a.pid) || !launch::pid_alive(a.pid));
  if (process_dead && !goodbye && !st.stopping)
    return local_agent_died(id, "its process died");
  if (goodbye || st.stopping || process_dead || (a.stdio && a.jobs.empty() && a.held.empty())) {
    return gone(id,
                goodbye        ? "it shut down"
                : process_dead ? "its process died"
                : a.stdio      ? fmt::format("its ssh link ended: {}", reason.message)
                               : "the hub is stopping",
                goodbye || st.stopping);
  }
  // Never two live copies: the agent's keeper ends it and its jobs one lease after the newest
  // heartbeat of its that we received, unless it renews the lease with us; so its jobs are
  // requeued only after that, plus a margin for the kill (docs/architecture.md §5).
  std::int64_t wait = lease_ms(a.stdio) + kReconnectMarginMs - peer->silent_ms();
  a.reconnect_deadline = core_.clock.monotonic_ms() + wait;
  a.away_reason = a.stdio ? fmt::format("its ssh link ended: {}", reason.message) : reason.message;
  log::warn("agent {} ({}) disconnected: {}; its {} jobs keep their state until it reconnects "
            "(within {})",
            id, a.node, reason.to_string(), a.jobs.size(), format_duration_ms(wait));
  core_.events.agent_away.emit(a);
}

void Agents::local_agent_died(AgentId id, const std::string& why) {
  Agent& a = core_.state.agents.at(id);
  if (!keeper_running(a.keeper_pid))
    return gone(id, why);
  // Its keeper is killing its jobs right now: their new attempts wait until it is done (the
  // tick looks again), so the old and the new never overlap.
  a.awaiting_keeper = true;
  a.away_reason = why;
  a.reconnect_deadline = core_.clock.monotonic_ms() + lease_ms(a.stdio) + kReconnectMarginMs;
}

void Agents::gone(AgentId id, const std::string& why, bool orderly) {
  auto& st = core_.state;
  Agent* found = st.find_agent(id);
  if (!found)
    return;
  Agent& a = *found;
  if (a.peer) {
    st.agent_by_peer.erase(a.peer.get());
    a.peer->close_with_error(make_error(ErrorCode::Unavailable, "agent removed: " + why));
    a.peer.reset();
  }
  a.reconnect_deadline = 0;
  a.awaiting_keeper = false;
  core_.scheduler.remove_node(id);
  std::vector<JobId> jobs(a.jobs.begin(), a.jobs.end());
  std::sort(jobs.begin(), jobs.end());
  if (!jobs.empty())
    log::warn("agent {} ({}) is gone ({}): {} of its jobs are lost", id, a.node, why, jobs.size());
  else
    log::info("agent {} ({}) is gone ({})", id, a.node, why);
  for (auto jid : jobs) {
    Job* j = jobs_.find(jid);
    if (!j)
      continue;
    // An agent that leaves in order has reported every start before leaving, so a job it never
    // started goes back without using a retry. Any other loss may have started the job, whether
    // or not the start was reported: it counts against the job's retries.
    if (orderly && j->state == JobState::Assigned && !j->started && !j->cancel_requested)
      jobs_.requeue(*j, true);
    else
      jobs_.lost(*j, fmt::format("agent {} on {} was lost: {}", a.node, a.hostname, why));
  }
  a.jobs.clear();
  // MPI jobs run from another node that held slots here: their ranks here are gone.
  std::vector<JobId> held(a.held.begin(), a.held.end());
  std::sort(held.begin(), held.end());
  for (auto jid : held) {
    Job* j = jobs_.find(jid);
    if (!j || (j->state != JobState::Assigned && j->state != JobState::Running))
      continue;
    // Killed on the node that runs it; lost (and retried) when that node reports the end.
    std::string reason = fmt::format("node {} of this MPI job was lost: {}", a.node, why);
    st.span_lost.emplace(j->id, reason);
    jobs_.send_kill(*j, reason);
  }
  a.held.clear();
  core_.durable.batch().agents.push_back(Durable::agent_row(a, false));
  core_.events.agent_gone.emit(a, why);
}

void Agents::tick() {
  std::int64_t now = core_.clock.monotonic_ms();
  std::vector<AgentId> expired;
  std::vector<AgentId> keepers_done;
  for (const auto& [id, a] : core_.state.agents) {
    if (!a.peer && a.reconnect_deadline > 0 && now >= a.reconnect_deadline)
      expired.push_back(id);
    else if (!a.peer && a.awaiting_keeper && !keeper_running(a.keeper_pid))
      keepers_done.push_back(id);
  }
  for (auto id : keepers_done)
    gone(id, core_.state.agents.at(id).away_reason + "; its keeper has ended its jobs");
  for (auto id : expired) {
    const Agent& a = core_.state.agents.at(id);
    gone(id, fmt::format("{}{}it did not come back within its lease ({}), after which its "
                         "keeper has ended its jobs",
                         a.away_reason, a.away_reason.empty() ? "" : "; ",
                         format_duration_ms(lease_ms(a.stdio) + kReconnectMarginMs)));
  }
}

} // namespace sortie::hub
