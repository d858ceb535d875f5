// SPDX-License-Identifier: Apache-2.0
// Waiters: who waits for which jobs, and what they are told.
#include "hub/waits.hpp"

#include <unordered_set>

namespace sortie::hub {

Waits::Waits(Core& core, Jobs& jobs) : core_(core), jobs_(jobs) {
  core_.events.final.subscribe([this](Job& job) { job_final(job); });
  core_.events.client_closed.subscribe([this](const std::shared_ptr<Peer>& peer) {
    std::erase_if(waiters_, [&](const std::shared_ptr<Waiter>& w) { return w->peer == peer; });
  });
}

void Waits::register_with(Router& router) {
  router.add(pb::Envelope::kWait, Role::Client,
             [this](const Sender& from, pb::Envelope& env) { handle_wait(from, env.wait()); });
}

void Waits::count(Waiter& w, const Job& job) {
  if (job.state == JobState::Succeeded) {
    ++w.succeeded;
  } else {
    ++(job.state == JobState::Cancelled ? w.cancelled : w.failed);
    if (w.failed_ids.size() < 100)
      w.failed_ids.push_back(job.id.value);
  }
  w.dirty = true;
}

void Waits::send(Waiter& w, bool done) {
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
  reply(w.peer, env, w.rid);
}

void Waits::job_final(const Job& job) {
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    Waiter& w = **it;
    if (job.id.value <= w.max_id && jobs_.selected(w.selector, w.named, job)) {
      count(w, job);
      if (w.done()) {
        send(w, true);
        it = waiters_.erase(it);
        continue;
      }
    }
    ++it;
  }
}

void Waits::handle_wait(const Sender& from, const pb::WaitRequest& req) {
  const auto& sel = req.selector();
  // Every named job must exist: waiting for a typo would never end.
  if (auto r = Jobs::check_ranges(sel); !r.ok())
    return reply_error(from.peer, from.rid, r.error());
  for (const auto& r : sel.ids()) {
    std::uint64_t last = r.last() ? r.last() : r.first();
    // Bounded by the jobs that exist, so a huge range costs nothing before it is refused.
    std::uint64_t id = r.first();
    for (; id <= last && id <= core_.state.jobs.size(); ++id)
      if (!jobs_.find(JobId(id)))
        break;
    if (id <= last)
      return reply_error(from.peer, from.rid, jobs_.missing(JobId(id)));
  }
  auto named = jobs_.groups_named(sel);
  if (!named.ok())
    return reply_error(from.peer, from.rid, named.error());
  auto w = std::make_shared<Waiter>();
  w->peer = from.peer;
  w->rid = from.rid;
  w->selector = sel;
  w->progress = req.progress();
  w->max_id = core_.state.next_job_id - 1;
  w->named = std::move(*named);
  jobs_.for_each_selected(sel, w->named, [&](Job& j) {
    ++w->total;
    if (is_terminal(j.state))
      count(*w, j);
  });
  if (w->done())
    return send(*w, true);
  if (w->progress)
    send(*w, false);
  w->dirty = false;
  waiters_.push_back(std::move(w));
}

void Waits::tick() {
  std::erase_if(waiters_, [](const std::shared_ptr<Waiter>& w) { return w->peer->closed(); });
  for (auto& w : waiters_)
    if (w->dirty && w->progress) {
      w->dirty = false;
      send(*w, false);
    }
}

void Waits::close_all(const Error& why) {
  for (auto& w : waiters_)
    w->peer->close_with_error(why);
  waiters_.clear();
}

} // namespace sortie::hub
