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

void Router::dispatch(const Sender& from, pb::Envelope& env) const {
  auto body = env.body_case();
  if (!protocol::may_send(from.role, body))
    return refuse(from, protocol::not_allowed(from.role, env));
  if (auto r = protocol::check_route(from.role, env); !r.ok())
    return refuse(from, r.error());
  // Nothing routes through a peer yet (engines behind agents and agents behind relays come
  // later): a routed frame names a peer this hub cannot know.
  if (env.route_size() > 0)
    return refuse(from, make_error(ErrorCode::NotFound,
                                   fmt::format("protocol error: '{}' is routed through {} hops, "
                                               "but no peer behind this link is known",
                                               protocol::body_name(env), env.route_size())));
  auto it = handlers_.find(key(body, from.role));
  if (it == handlers_.end())
    return refuse(from, make_error(ErrorCode::InvalidArgument,
                                   fmt::format("protocol error: '{}' is not taken after the "
                                               "handshake",
                                               protocol::body_name(env))));
  it->second(from, env);
}

void Router::refuse(const Sender& from, const Error& error) {
  if (from.role == Role::Client)
    reply_error(from.peer, from.rid, error);
  else
    from.peer->close_with_error(error);
}

} // namespace sortie::hub
