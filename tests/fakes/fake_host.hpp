// SPDX-License-Identifier: Apache-2.0
// A HubHost for handler tests: records stop requests; runs no agent sessions or commands.
#pragma once

#include <vector>

#include "hub/host.hpp"

namespace sortie::testing {

class FakeHost final : public hub::HubHost {
public:
  void request_stop(bool restart) override { stops.push_back(restart); }
  void run_agent_session(std::unique_ptr<net::ByteStream>, std::string,
                         std::function<void(const Error&)> failed) override {
    if (failed)
      failed(make_error(ErrorCode::Unavailable, "this test host runs no agent sessions"));
  }
  launch::ChildWatch* child_watch() override { return nullptr; }
  std::string listen_address() const override { return "127.0.0.1:0"; }

  std::vector<bool> stops;
};

} // namespace sortie::testing
