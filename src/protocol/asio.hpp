// SPDX-License-Identifier: Apache-2.0
// The Asio names used across sortie's event-loop code. Boost.Asio only (never standalone Asio in
// the same translation unit, TESTBEDS.md §6).
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <functional>
#include <string>
#include <string_view>

namespace sortie {
namespace asio = boost::asio;
using boost::system::error_code;

/// Completion token: results as a tuple (error first) instead of exceptions (STYLE.md §4).
inline constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

template <typename T = void>
using Awaitable = asio::awaitable<T>;

/// Logs, as an error naming `what`, an exception that escaped a root coroutine.
void log_escaped(std::string_view what, std::exception_ptr e);

/// Starts a root coroutine on `ex`: `start` is an Awaitable<void>, or a function object returning
/// one (capture there what must live as long as the coroutine). What escapes it is logged as an
/// error naming `what`, never lost; `then` (optional) runs when it has ended, with whether it
/// ended by an exception. Every coroutine sortie starts on its own goes through here.
template <typename Start>
void spawn_root(const asio::any_io_executor& ex, std::string what, Start&& start,
                std::function<void(bool failed)> then = {}) {
  asio::co_spawn(ex, std::forward<Start>(start),
                 [what = std::move(what), then = std::move(then)](std::exception_ptr e) {
                   if (e)
                     log_escaped(what, e);
                   if (then)
                     then(e != nullptr);
                 });
}
} // namespace sortie
