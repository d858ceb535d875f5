// SPDX-License-Identifier: Apache-2.0
// What every room of the hub is given: the shared state, the durable batch, the events, the
// scheduler, engines' direct sockets, the configuration and the clock. Rooms take this and the rooms below them that they
// call (docs/architecture.md, "The hub's rooms"); they never call a room above them: what they
// tell upwards goes through Events.
#pragma once

#include <memory>

#include "common/clock.hpp"
#include "hub/config.hpp"
#include "hub/direct.hpp"
#include "hub/durable.hpp"
#include "hub/events.hpp"
#include "hub/state.hpp"
#include "protocol/asio.hpp"
#include "scheduler/scheduler.hpp"

namespace sortie::hub {

struct Core {
  asio::any_io_executor executor;
  const HubConfig& config;
  const Clock& clock;
  HubState& state;
  Durable& durable;
  Events& events;
  scheduler::Scheduler& scheduler;
  DirectEngines& direct; ///< engines' direct links (local pilots)
  std::shared_ptr<bool> alive; ///< false once the hub is gone: late callbacks do nothing

  /// Runs `fn` on the loop later (not from inside this call), unless the hub is gone by then.
  template <typename Fn>
  void post(Fn fn) const {
    asio::post(executor, [alive = alive, fn = std::move(fn)]() mutable {
      if (*alive)
        fn();
    });
  }
};

} // namespace sortie::hub
