// SPDX-License-Identifier: Apache-2.0
// The hub's (message, role) -> handler table.
#include "hub/router.hpp"

#include <fmt/format.h>

#include "common/assert.hpp"
#include "protocol/frame.hpp"
#include "protocol/route.hpp"

namespace sortie::hub {

void Router::add(pb::Envelope::BodyCase body, Role role, Handler handler) {
  SORTIE_CHECK(protocol::may_send(role, body),
               "a room registered a message that the protocol does not let this role send");
  bool fresh = handlers_.emplace(key(body, role), std::move(handler)).second;
  SORTIE_CHECK(fresh, "two rooms registered the same message for the same role");
}

void Router::dispatch(const Sender& arrived, pb::Envelope& env) const {
  auto body = env.body_case();
  if (auto r = protocol::check_route(arrived.role, env); !r.ok())
    return refuse(arrived, r.error());
  Sender from = arrived;
  if (env.route_size() > 0) {
    // One hop is an engine behind its agent; agents behind relays come later: a deeper route
    // names a peer this hub cannot know.
    if (env.route_size() > 1)
      return refuse(arrived, make_error(ErrorCode::NotFound,
                                        fmt::format("protocol error: '{}' is routed through {} "
                                                    "hops, but only engines behind their agent "
                                                    "(one hop) are known",
                                                    protocol::body_name(env), env.route_size())));
    from.role = Role::Engine;
    from.via = env.route(0);
    env.clear_route();
    if (!protocol::may_send(Role::Engine, body)) // the agent should have stopped it
      return refuse(arrived, protocol::not_allowed(Role::Engine, env));
  }
  if (!protocol::may_send(from.role, body))
    return refuse(from, protocol::not_allowed(from.role, env));
  auto it = handlers_.find(key(body, from.role));
  if (it == handlers_.end())
    return refuse(from, make_error(ErrorCode::InvalidArgument,
                                   fmt::format("protocol error: '{}' is not taken after the "
                                               "handshake",
                                               protocol::body_name(env))));
  it->second(from, env);
}

void Router::refuse(const Sender& from, const Error& error) {
  if (from.role == Role::Client) {
    reply_error(from.peer, from.rid, error);
  } else if (from.role == Role::Engine) {
    pb::Envelope env;
    net::error_to_pb(error, *env.mutable_error());
    env.set_request_id(from.rid);
    env.add_route(from.via);
    from.peer->send(env);
  } else
    from.peer->close_with_error(error);
}

} // namespace sortie::hub
