// SPDX-License-Identifier: Apache-2.0
// A hub::Peer that records what the hub sends, for handler tests.
#pragma once

#include <vector>

#include "hub/peer.hpp"

namespace sortie::testing {

class RecordingPeer final : public hub::Peer {
public:
  explicit RecordingPeer(std::string name = "test") : name_(std::move(name)) {}
  // hub::Peer
  void send(const pb::Envelope& env) override {
    if (!closed_)
      sent.push_back(env);
  }
  void close_with_error(const Error& e) override {
    if (!closed_)
      error = e;
    closed_ = true;
  }
  bool closed() const override { return closed_; }
  std::size_t queued_bytes() const override { return queued; }
  void when_drained(std::function<void()> fn) override { drained.push_back(std::move(fn)); }
  std::int64_t silent_ms() const override { return 0; }
  /// Pretends the queue was written: runs what waited for it.
  void drain() {
    queued = 0;
    auto fns = std::move(drained);
    drained.clear();
    for (auto& fn : fns)
      fn();
  }
  std::string describe() const override { return name_; }

  /// Removes and returns the sent messages whose body is `body_case`.
  std::vector<pb::Envelope> take(pb::Envelope::BodyCase body_case) {
    std::vector<pb::Envelope> out, rest;
    for (auto& e : sent)
      (e.body_case() == body_case ? out : rest).push_back(std::move(e));
    sent = std::move(rest);
    return out;
  }

  std::vector<pb::Envelope> sent;
  Error error;
  std::size_t queued = 0; ///< what queued_bytes() reports
  std::vector<std::function<void()>> drained;

private:
  std::string name_;
  bool closed_ = false;
};

} // namespace sortie::testing
