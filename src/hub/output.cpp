// SPDX-License-Identifier: Apache-2.0
// Output batches from agents, their credit and retries, and the followers of job output.
#include "hub/output.hpp"

#include <cstring>

#include <fmt/format.h>

#include "common/log.hpp"

namespace sortie::hub {
namespace {

constexpr std::size_t kLogsChunk = 1u << 20;      // bytes per output read
constexpr std::size_t kFollowerWindow = 4u << 20; // output queued for one follower at most
// A failed output write (a full disk) is tried again this often, for output_retry (a minute by
// default), with its agent's credit held meanwhile; then its bytes are lost and the job says so.
constexpr std::int64_t kRetryMs = 1'000;

} // namespace

Output::Output(Core& core, Jobs& jobs) : core_(core), jobs_(jobs) {
  auto& ev = core_.events;
  ev.attempt_ended.subscribe([this](Job& job) { attempt_ended(job); });
  ev.final.subscribe([this](Job& job) { attempt_ended(job); });
  ev.started.subscribe([this](Job& job) {
    // Followers waiting for the first start follow this attempt from its beginning.
    if (auto it = followers_.find(job.id); it != followers_.end())
      for (auto& f : it->second)
        if (f->attempt == 0)
          f->attempt = job.attempt;
  });
  ev.forgotten.subscribe([this](JobId id) { followers_.erase(id); });
  ev.client_closed.subscribe([this](const std::shared_ptr<Peer>& peer) {
    for (auto it = followers_.begin(); it != followers_.end();) {
      std::erase_if(it->second, [&](const std::shared_ptr<Follower>& f) {
        if (f->peer == peer)
          f->ended = true;
        return f->peer == peer;
      });
      it = it->second.empty() ? followers_.erase(it) : std::next(it);
    }
  });
}

void Output::register_with(Router& router) {
  router.add(pb::Envelope::kOutput, Role::Agent, [this](const Sender& from, pb::Envelope& env) {
    handle_output(*from.agent, *env.mutable_output());
  });
  router.add(pb::Envelope::kLogs, Role::Client,
             [this](const Sender& from, pb::Envelope& env) { handle_logs(from, env.logs()); });
}

// -------------------------------------------------------------------------------------------
// Output batches

void Output::handle_output(Agent& agent, pb::OutputBatch& out) {
  std::uint64_t bytes = 0;
  auto& b = core_.durable.batch();
  std::vector<store::OutputWrite> tries; // what each chunk's write became (no data)
  for (auto& c : *out.mutable_chunks()) {
    bytes += c.data().size();
    Job* job = jobs_.find(JobId(c.job_id()));
    int stream = c.stream() == pb::STREAM_STDERR ? 1 : 0;
    if (!job || job->agent != agent.id || job->attempt != c.attempt() || c.offset() < 0) {
      log::debug("agent {}: dropping output of job {} attempt {}", agent.node, c.job_id(),
                 c.attempt());
      continue;
    }
    std::int64_t end = c.offset() + static_cast<std::int64_t>(c.data().size());
    job->out_bytes[stream] =
        std::max<std::uint64_t>(job->out_bytes[stream], static_cast<std::uint64_t>(end));
    if (auto it = followers_.find(job->id); it != followers_.end())
      for (auto& f : it->second)
        if (f->attempt == c.attempt() && f->stream == stream)
          deliver(f, c.offset(), c.data());
    auto status = std::make_shared<store::OutputStatus>();
    tries.push_back({job->id.value, c.attempt(), stream, c.offset(), {}, status});
    b.output.push_back({job->id.value, c.attempt(), stream, c.offset(),
                        std::move(*c.mutable_data()), std::move(status)});
  }
  if (bytes == 0)
    return;
  // Credit returns once the bytes are on disk: the agent's memory bounds what is in flight. A
  // write that failed (a full disk) keeps its credit until a later try writes it.
  core_.durable.after_commit(
      [this, id = agent.id, bytes, tries = std::move(tries)](const Result<void>&) mutable {
        std::uint64_t held = 0;
        for (auto& w : tries)
          if (w.status->error != 0) {
            held += w.status->data.size();
            retry(id, std::move(w), 1);
          }
        credit_agent(id, bytes - held);
      });
}

void Output::credit_agent(AgentId id, std::uint64_t bytes) {
  Agent* a = core_.state.find_agent(id);
  if (bytes == 0 || !a || !a->peer || a->peer->closed())
    return;
  pb::Envelope env;
  env.mutable_output_credit()->set_bytes(bytes);
  a->peer->send(env);
}

void Output::retry(AgentId agent, store::OutputWrite w, int tries) {
  int error = w.status->error;
  w.data = std::move(w.status->data);
  std::uint64_t size = w.data.size();
  Job* job = jobs_.find(JobId(w.job_id));
  if (tries * kRetryMs <= core_.config.output_retry_ms && job && job->attempt == w.attempt) {
    retries_.push_back({agent, std::move(w), tries, core_.clock.monotonic_ms() + kRetryMs});
    return;
  }
  // Given up: the bytes are lost, the job says so, and the agent gets its credit back.
  credit_agent(agent, size);
  if (!job || job->attempt != w.attempt)
    return;
  bool first = job->out_lost == 0;
  job->out_lost += size;
  log::error("job {} attempt {}: {} bytes of its output at {} offset {} could not be written: {}",
             job->id, w.attempt, size, w.stream ? "stderr" : "stdout", w.offset,
             std::strerror(error));
  if (first) {
    std::string note = jobs_.output_loss_note(*job);
    job->reason = job->reason.empty() ? note : job->reason + "; " + note;
    core_.durable.mark_dirty(*job);
  }
}

void Output::tick() {
  if (retries_.empty())
    return;
  std::int64_t now = core_.clock.monotonic_ms();
  std::vector<Retry> due;
  std::erase_if(retries_, [&](Retry& r) {
    if (r.due_ms > now)
      return false;
    due.push_back(std::move(r));
    return true;
  });
  for (auto& r : due) {
    r.write.status = std::make_shared<store::OutputStatus>();
    store::OutputWrite meta{r.write.job_id, r.write.attempt, r.write.stream, r.write.offset, {},
                            r.write.status};
    std::uint64_t size = r.write.data.size();
    core_.durable.batch().output.push_back(std::move(r.write));
    core_.durable.after_commit([this, agent = r.agent, meta = std::move(meta), size,
                                tries = r.tries](const Result<void>&) mutable {
      if (meta.status->error == 0)
        credit_agent(agent, size);
      else
        retry(agent, std::move(meta), tries + 1);
    });
  }
}

// -------------------------------------------------------------------------------------------
// Followers

void Output::handle_logs(const Sender& from, const pb::LogsRequest& req) {
  Job* job = jobs_.find(JobId(req.job_id()));
  if (!job)
    return reply_error(from.peer, from.rid, jobs_.missing(JobId(req.job_id())));
  if (req.attempt() > job->attempt)
    return reply_error(from.peer, from.rid,
                       make_error(ErrorCode::NotFound,
                                  fmt::format("job {} has no attempt {} (it has had {})", job->id,
                                              req.attempt(), job->attempt)));
  auto f = std::make_shared<Follower>();
  f->peer = from.peer;
  f->rid = from.rid;
  f->job = job->id;
  f->stream = req.stream() == pb::STREAM_STDERR ? 1 : 0;
  f->follow = req.follow();
  f->attempt = req.attempt() ? req.attempt() : job->attempt;
  if (f->attempt == 0) {
    // Never started. Without follow there is nothing to show (say so); with follow, wait for
    // the first start.
    if (!f->follow && !is_terminal(job->state))
      return reply_error(from.peer, from.rid,
                         make_error(ErrorCode::NotFound,
                                    fmt::format("job {} has not started yet ({}): it has no output "
                                                "so far; `sortie job logs -f {}` waits for it",
                                                job->id, job_state_name(job->state), job->id)));
    if (!f->follow || is_terminal(job->state)) {
      pb::Envelope env;
      env.mutable_logs_data()->set_eof(true);
      return reply(from.peer, env, from.rid);
    }
    f->catching_up = false;
    followers_[job->id].push_back(f);
    return;
  }
  followers_[job->id].push_back(f);
  read_more(f);
}

std::function<void()> Output::resume(const std::shared_ptr<Follower>& f) {
  return [this, alive = core_.alive, f] {
    if (!*alive)
      return;
    f->reading = false;
    read_more(f);
  };
}

void Output::read_more(std::shared_ptr<Follower> f) {
  f->catching_up = true;
  if (f->reading)
    return;
  // A follower never has more than a window of output queued on its connection: past that it
  // waits for the client to read, then continues from the output file.
  if (f->peer->queued_bytes() > kFollowerWindow) {
    f->reading = true;
    f->peer->when_drained(resume(f));
    return;
  }
  f->reading = true;
  core_.durable.store().read_output(f->job.value, f->attempt, f->stream, f->next_offset,
                                    kLogsChunk,
                                    [this, alive = core_.alive, f](Result<std::string> data) {
                                      if (*alive)
                                        on_read(f, std::move(data));
                                    });
}

void Output::on_read(const std::shared_ptr<Follower>& f, Result<std::string> data) {
  f->reading = false;
  if (f->ended || f->peer->closed())
    return drop(f);
  if (!data.ok()) {
    reply_error(f->peer, f->rid, data.error());
    return drop(f);
  }
  std::size_t got = data->size();
  if (got > 0) {
    pb::Envelope env;
    auto* d = env.mutable_logs_data();
    d->set_offset(f->next_offset);
    f->next_offset += static_cast<std::int64_t>(got);
    d->set_data(std::move(*data));
    reply(f->peer, env, f->rid);
  }
  if (got == kLogsChunk)
    return read_more(f);
  // The end of the file. Output received but not yet written is read once the batch holding it
  // is committed.
  const Job* job = jobs_.find(f->job);
  std::uint64_t received = job && job->attempt == f->attempt ? job->out_bytes[f->stream] : 0;
  if (received > static_cast<std::uint64_t>(f->next_offset) && received == f->awaited) {
    // Waited for a commit already and the file still ends short: those bytes could not be
    // written (a full disk). Go on after them.
    f->next_offset = static_cast<std::int64_t>(received);
  } else if (received > static_cast<std::uint64_t>(f->next_offset)) {
    f->awaited = received;
    f->reading = true;
    core_.durable.batch().on_commit.push_back(
        [go = resume(f)](const Result<void>&) { go(); });
    return;
  }
  f->catching_up = false;
  maybe_end(f);
}

void Output::deliver(const std::shared_ptr<Follower>& f, std::int64_t offset,
                     const std::string& data) {
  if (f->ended || f->catching_up)
    return; // a follower reading the file finds this there
  std::int64_t end = offset + static_cast<std::int64_t>(data.size());
  if (end <= f->next_offset)
    return;
  if (offset > f->next_offset || f->peer->queued_bytes() > kFollowerWindow)
    return read_more(f); // behind: continue from the file
  std::int64_t skip = f->next_offset - offset;
  pb::Envelope env;
  auto* d = env.mutable_logs_data();
  d->set_offset(f->next_offset);
  d->set_data(data.substr(static_cast<std::size_t>(skip)));
  reply(f->peer, env, f->rid);
  f->next_offset = end;
}

void Output::drop(const std::shared_ptr<Follower>& f) {
  f->ended = true;
  auto it = followers_.find(f->job);
  if (it != followers_.end()) {
    std::erase(it->second, f);
    if (it->second.empty())
      followers_.erase(it);
  }
}

void Output::maybe_end(const std::shared_ptr<Follower>& f) {
  if (f->ended || f->catching_up)
    return;
  const Job* job = jobs_.find(f->job);
  bool live = job && job->attempt == f->attempt &&
              (job->state == JobState::Assigned || job->state == JobState::Running);
  if (f->follow && live)
    return;
  pb::Envelope env;
  auto* d = env.mutable_logs_data();
  d->set_offset(f->next_offset);
  d->set_eof(true);
  reply(f->peer, env, f->rid);
  drop(f);
}

void Output::attempt_ended(Job& job) {
  auto it = followers_.find(job.id);
  if (it == followers_.end())
    return;
  auto list = it->second; // maybe_end edits the map
  for (auto& f : list)
    if (f->attempt != 0 || is_terminal(job.state))
      maybe_end(f);
}

} // namespace sortie::hub
