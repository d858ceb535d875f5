// SPDX-License-Identifier: Apache-2.0
// Route stacks: checks, pushes on the way up, pops on the way down.
#include "protocol/route.hpp"

#include <fmt/format.h>

#include "protocol/frame.hpp"

namespace sortie::protocol {

bool may_route(Role role) { return role == Role::Agent || role == Role::Relay; }

Result<void> check_route(Role role, const pb::Envelope& env) {
  if (env.route_size() > 0 && !may_route(role))
    return make_error(ErrorCode::PermissionDenied,
                      fmt::format("protocol error: a forged route: {} {} carries '{}' for "
                                  "others, which its role may not",
                                  role == Role::Agent || role == Role::Engine ? "an" : "a",
                                  role_name(role), body_name(env)));
  if (env.route_size() > kMaxHops)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("protocol error: '{}' has a route of {} hops (at most {})",
                                  body_name(env), env.route_size(), kMaxHops));
  return ok_result();
}

Result<void> RouteTable::up(std::uint64_t link, pb::Envelope& env) const {
  auto it = links_.find(link);
  if (it == links_.end())
    return make_error(ErrorCode::NotFound, fmt::format("no link {} behind this node", link));
  SORTIE_TRY(check_route(it->second, env));
  if (env.route_size() >= kMaxHops)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("protocol error: '{}' would cross more than {} hops",
                                  body_name(env), kMaxHops));
  env.add_route(link);
  return ok_result();
}

Result<std::uint64_t> RouteTable::down(pb::Envelope& env) const {
  if (env.route_size() == 0)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("protocol error: '{}' has no route left to follow",
                                  body_name(env)));
  std::uint64_t link = env.route(env.route_size() - 1);
  if (!links_.contains(link))
    return make_error(ErrorCode::NotFound,
                      fmt::format("'{}' is for link {}, which is not behind this node (gone, "
                                  "or never there)",
                                  body_name(env), link));
  env.mutable_route()->RemoveLast();
  return link;
}

} // namespace sortie::protocol
