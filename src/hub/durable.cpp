// SPDX-License-Identifier: Apache-2.0
// The hub's write batch (one per loop turn), its flush, and the conversions between the hub's
// objects and the store's rows.
#include "hub/durable.hpp"

namespace sortie::hub {

store::WriteBatch& Durable::batch(When when) {
  if (when == When::Soon) {
    if (!flush_posted_ && !soon_armed_) {
      soon_armed_ = true;
      soon_.expires_after(kSoon);
      soon_.async_wait([this, alive = alive_, armed = ++soon_generation_](
                           const boost::system::error_code&) {
        // A flush since took these rows (and disarmed this wait), or the hub is gone.
        if (!*alive || armed != soon_generation_)
          return;
        soon_armed_ = false;
        if (!flush_posted_) // else the posted flush takes these rows too
          flush();
      });
    }
    return batch_;
  }
  if (!flush_posted_) {
    flush_posted_ = true;
    // Posted twice: what the handlers of this turn post in turn (a dispatch that marks tasks
    // running, a schedule that assigns jobs) runs first and joins the same commit.
    asio::post(executor_, [this, alive = alive_] {
      if (*alive)
        asio::post(executor_, [this, alive = alive_] {
          if (*alive)
            flush();
        });
    });
  }
  return batch_;
}

std::function<void(const Result<void>&)>
Durable::while_alive(std::function<void(const Result<void>&)> fn) const {
  return [alive = alive_, fn = std::move(fn)](const Result<void>& r) {
    if (*alive)
      fn(r);
  };
}

void Durable::after_commit(std::function<void(const Result<void>&)> fn, When when) {
  batch(when).on_commit.push_back(while_alive(std::move(fn)));
}

void Durable::after_commit_last(std::function<void(const Result<void>&)> fn, When when) {
  batch(when);
  last_.push_back(while_alive(std::move(fn)));
}

void Durable::mark_dirty(Job& job) {
  if (!job.dirty) {
    job.dirty = true;
    dirty_.push_back(job.id);
    batch();
  }
}

void Durable::flush() {
  flush_posted_ = false;
  if (soon_armed_) { // the rows written When::Soon go with this flush: their timer is not needed
    soon_armed_ = false;
    ++soon_generation_; // a wait that already fired is not for the rows written from now on
    soon_.cancel();
  }
  if (!dirty_.empty()) {
    batch_.job_updates.reserve(dirty_.size());
    for (auto id : dirty_) {
      Job* j = state_.find_job(id);
      if (!j) // forgotten meanwhile
        continue;
      j->dirty = false;
      batch_.job_updates.push_back(job_row(*j));
    }
    // If the transaction fails (disk full), the rows are written again later.
    batch_.on_commit.push_back([this, alive = alive_, ids = std::move(dirty_)](const Result<void>& r) {
      if (!*alive || r.ok())
        return;
      for (auto id : ids)
        if (Job* j = state_.find_job(id))
          mark_dirty(*j);
    });
    dirty_.clear();
  }
  for (auto& fn : last_)
    batch_.on_commit.push_back(std::move(fn));
  last_.clear();
  if (!batch_.empty()) {
    store_.submit(std::move(batch_));
    batch_ = store::WriteBatch();
    ++flushes_;
  }
}

store::JobRow Durable::job_row(const Job& j) {
  store::JobRow r;
  r.id = j.id.value;
  r.spec_id = j.spec;
  r.group_id = j.group;
  if (j.is_array)
    r.array_index = j.array_index;
  r.state = j.state;
  r.attempt = j.attempt;
  r.agent_id = j.agent.value;
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
  r.limits = limits_name(j.limits);
  r.gpus = gpus_of(j.gpu_mask);
  return r;
}

void Durable::job_from_row(store::JobRow& r, Job& j) {
  j.id = JobId(r.id);
  j.spec = static_cast<std::uint32_t>(r.spec_id);
  j.group = static_cast<std::uint32_t>(r.group_id);
  j.is_array = r.array_index.has_value();
  j.array_index = r.array_index.value_or(0);
  j.state = r.state;
  j.attempt = static_cast<std::uint16_t>(r.attempt);
  j.agent = AgentId(r.agent_id);
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
}

store::AgentRow Durable::agent_row(const Agent& a, bool connected) {
  return {a.id.value, a.pilot.value, a.node,        a.hostname,    a.pid,  a.slots,
          a.label,    connected,     a.registered_ms, a.session_key, a.epoch};
}

Agent Durable::agent_from_row(const store::AgentRow& r) {
  Agent a;
  a.id = AgentId(r.id);
  a.pilot = PilotId(r.pilot_id);
  a.node = r.node;
  a.hostname = r.hostname;
  a.pid = r.pid;
  a.slots = r.slots;
  a.label = r.label;
  a.registered_ms = r.registered_ms;
  a.session_key = r.session_key;
  a.epoch = r.epoch;
  return a;
}

store::PilotRow Durable::pilot_row(const Pilot& p) {
  store::PilotRow r;
  r.id = p.id.value;
  p.spec.SerializeToString(&r.spec);
  r.state = pilot_state_name(p.state);
  r.created_ms = p.created_ms;
  r.ended_ms = p.ended_ms;
  r.reason = p.reason;
  r.batch_id = p.batch_id;
  return r;
}

Pilot Durable::pilot_from_row(const store::PilotRow& r) {
  Pilot p;
  p.id = PilotId(r.id);
  p.spec.ParseFromString(r.spec);
  p.state = parse_pilot_state(r.state);
  p.created_ms = r.created_ms;
  p.ended_ms = r.ended_ms;
  p.reason = r.reason;
  p.batch_id = r.batch_id;
  p.end_ms = p.spec.walltime_ms() ? r.created_ms + p.spec.walltime_ms() : 0;
  return p;
}

} // namespace sortie::hub
