// SPDX-License-Identifier: Apache-2.0
// What happens in the hub that other rooms care about, as signals they subscribe to: a job's
// attempt started or ended, a job reached its final state, work became schedulable, an agent
// came, went away or is gone, a client left. The room where a thing happens emits it and knows
// nothing of who listens (waiters, log followers, dependents, pilots, the scheduler adapter).
//
// Observers run synchronously, in the order they subscribed, inside the emitting call: an
// observer may change state (a dependent is cancelled, which emits `final` for it in turn) but
// must not subscribe.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hub/state.hpp"

namespace sortie::hub {

template <typename... Args>
class Signal {
public:
  using Observer = std::function<void(Args...)>;
  void subscribe(Observer fn) { observers_.push_back(std::move(fn)); }
  void emit(Args... args) const {
    for (const auto& fn : observers_)
      fn(args...);
  }

private:
  std::vector<Observer> observers_;
};

struct Events {
  /// An attempt's process started (the agent said so).
  Signal<Job&> started;
  /// An attempt ended without the job ending: lost and requeued, or failed and retried.
  Signal<Job&> attempt_ended;
  /// A job reached its final state (succeeded, failed, cancelled, timed out, lost for good).
  Signal<Job&> final;
  /// Jobs became runnable or room to run them appeared: a scheduling turn is due.
  Signal<> schedulable;
  /// These ended jobs were forgotten: their records are gone.
  Signal<JobId> forgotten;
  /// An agent registered (`reconnected`: one the hub knew, back on a new link).
  Signal<Agent&, bool> agent_up;
  /// An agent's link ended; it may come back within its lease.
  Signal<Agent&> agent_away;
  /// An agent is gone for good (its jobs are already lost or requeued).
  Signal<Agent&, const std::string&> agent_gone;
  /// A client's connection ended.
  Signal<const std::shared_ptr<Peer>&> client_closed;
};

} // namespace sortie::hub
