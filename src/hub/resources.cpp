// SPDX-License-Identifier: Apache-2.0
// The resource registry and gateway chains.
#include "hub/resources.hpp"

#include <fmt/format.h>

#include "common/log.hpp"
#include "launch/drivers.hpp"

namespace sortie::hub {
namespace {

const pb::ResourceSpec& local_resource() {
  static const pb::ResourceSpec r = [] {
    pb::ResourceSpec spec;
    spec.set_name("local");
    spec.set_type("local");
    return spec;
  }();
  return r;
}

} // namespace

void Resources::register_with(Router& router) {
  router.add(pb::Envelope::kResourceAdd, Role::Client,
             [this](const Sender& from, pb::Envelope& env) { handle_add(from, env.resource_add()); });
  router.add(pb::Envelope::kResourceList, Role::Client,
             [this](const Sender& from, pb::Envelope&) { handle_list(from); });
  router.add(pb::Envelope::kResourceRemove, Role::Client,
             [this](const Sender& from, pb::Envelope& env) {
               handle_remove(from, env.resource_remove());
             });
}

const pb::ResourceSpec* Resources::find(const std::string& name) const {
  if (auto it = resources_.find(name); it != resources_.end())
    return &it->second;
  if (name == "local")
    return &local_resource();
  return nullptr;
}

std::string Resources::names() const {
  std::string known = "local";
  for (const auto& [name, r] : resources_)
    known += ", " + name;
  return known;
}

Result<std::vector<pb::ResourceSpec>> Resources::gateway_chain(const pb::ResourceSpec& resource) const {
  std::vector<pb::ResourceSpec> chain;
  std::string next = resource.gateway();
  while (!next.empty()) {
    const pb::ResourceSpec* g = find(next);
    if (!g)
      return make_error(ErrorCode::NotFound,
                        fmt::format("gateway '{}' of resource '{}' is not defined", next,
                                    resource.name()));
    if (g->type() != "ssh")
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("gateway '{}' is a {} resource: a gateway must be an ssh "
                                    "resource",
                                    next, g->type()));
    for (const auto& seen : chain)
      if (seen.name() == g->name() || g->name() == resource.name())
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("gateways of resource '{}' go round in a circle through "
                                      "'{}'",
                                      resource.name(), g->name()));
    if (chain.size() >= 8)
      return make_error(ErrorCode::InvalidArgument, "more than 8 gateways in a chain");
    chain.insert(chain.begin(), *g);
    next = g->gateway();
  }
  return chain;
}

Result<void> Resources::check(const pb::ResourceSpec& spec) const {
  SORTIE_TRY(launch::check_resource(spec));
  if (spec.name() == "local")
    return make_error(ErrorCode::InvalidArgument,
                      "'local' is this machine's built-in resource: choose another name");
  if (!spec.gateway().empty())
    SORTIE_TRY(gateway_chain(spec));
  return ok_result();
}

void Resources::load(std::vector<store::ResourceRow>& rows) {
  for (auto& row : rows) {
    pb::ResourceSpec spec;
    if (spec.ParseFromString(row.spec))
      resources_[row.name] = spec;
  }
  for (const auto& r : core_.config.resources) {
    if (auto ok = launch::check_resource(r); !ok.ok()) {
      log::error("config.toml: resource '{}': {}", r.name(), ok.error().message);
      continue;
    }
    resources_[r.name()] = r;
  }
}

void Resources::handle_add(const Sender& from, const pb::ResourceAddRequest& req) {
  pb::ResourceSpec spec = req.spec();
  spec.set_from_config(false);
  if (auto r = check(spec); !r.ok())
    return reply_error(from.peer, from.rid,
                       r.error().with_context(fmt::format("resource '{}'", spec.name())));
  if (auto it = resources_.find(spec.name()); it != resources_.end()) {
    if (it->second.from_config())
      return reply_error(from.peer, from.rid,
                         make_error(ErrorCode::AlreadyExists,
                                    fmt::format("resource '{}' is defined in config.toml: change "
                                                "it there",
                                                spec.name())));
    if (!req.replace())
      return reply_error(from.peer, from.rid,
                         make_error(ErrorCode::AlreadyExists,
                                    fmt::format("resource '{}' exists: remove it first, or add "
                                                "--replace",
                                                spec.name())));
  }
  core_.durable.batch().resources.push_back({spec.name(), spec.SerializeAsString()});
  core_.durable.after_commit([this, peer = from.peer, rid = from.rid, spec](const Result<void>& r) {
    if (!r.ok())
      return reply_error(peer, rid, r.error());
    resources_[spec.name()] = spec;
    log::info("resource {} ({} {}) added by {}", spec.name(), spec.type(), spec.location(),
              peer->describe());
    reply_ok(peer, rid);
  });
}

void Resources::handle_list(const Sender& from) {
  pb::Envelope env;
  auto* list = env.mutable_resource_list_reply();
  *list->add_resources() = local_resource();
  for (const auto& [name, r] : resources_)
    *list->add_resources() = r;
  reply(from.peer, env, from.rid);
}

void Resources::handle_remove(const Sender& from, const pb::ResourceRemoveRequest& req) {
  auto refuse = [&](ErrorCode code, std::string message) {
    reply_error(from.peer, from.rid, make_error(code, std::move(message)));
  };
  auto it = resources_.find(req.name());
  if (it == resources_.end())
    return refuse(ErrorCode::NotFound,
                  req.name() == "local" ? std::string("'local' is built in and cannot be removed")
                                        : fmt::format("resource '{}' does not exist", req.name()));
  if (it->second.from_config())
    return refuse(ErrorCode::FailedPrecondition,
                  fmt::format("resource '{}' is defined in config.toml: remove it there",
                              req.name()));
  for (const auto& [id, p] : core_.state.pilots)
    if (p.spec.resource() == req.name() && !is_over(p.state))
      return refuse(ErrorCode::FailedPrecondition,
                    fmt::format("pilot {} on resource '{}' is {}: cancel it first", id,
                                req.name(), pilot_state_name(p.state)));
  for (const auto& [name, r] : resources_)
    if (r.gateway() == req.name())
      return refuse(ErrorCode::FailedPrecondition,
                    fmt::format("resource '{}' is the gateway of '{}'", req.name(), name));
  std::string name = req.name();
  resources_.erase(it);
  core_.durable.batch().resources_removed.push_back(name);
  core_.durable.after_commit([peer = from.peer, rid = from.rid](const Result<void>& r) {
    if (!r.ok())
      return reply_error(peer, rid, r.error());
    reply_ok(peer, rid);
  });
}

} // namespace sortie::hub
