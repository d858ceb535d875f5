// SPDX-License-Identifier: Apache-2.0
// The resource registry: where pilots can run (the built-in 'local', and ssh, slurm and sge
// resources from `sortie resource add` and config.toml, which wins), and the gateway chains that
// reach them. Takes ResourceAddRequest, ResourceListRequest and ResourceRemoveRequest.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "hub/room.hpp"
#include "hub/router.hpp"
#include "store/store.hpp"

namespace sortie::hub {

class Resources {
public:
  explicit Resources(Core& core) : core_(core) {}
  void register_with(Router& router);

  /// Resources from the store, then config.toml's (which win).
  void load(std::vector<store::ResourceRow>& rows);
  const pb::ResourceSpec* find(const std::string& name) const;
  /// Every defined name, for messages ("local, lab, cluster").
  std::string names() const;
  /// The gateways to hop through to reach `resource`, outermost first.
  Result<std::vector<pb::ResourceSpec>> gateway_chain(const pb::ResourceSpec& resource) const;

private:
  Result<void> check(const pb::ResourceSpec& spec) const;
  void handle_add(const Sender& from, const pb::ResourceAddRequest& req);
  void handle_list(const Sender& from);
  void handle_remove(const Sender& from, const pb::ResourceRemoveRequest& req);

  Core& core_;
  std::map<std::string, pb::ResourceSpec> resources_;
};

} // namespace sortie::hub
