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

namespace sortie {
namespace asio = boost::asio;
using boost::system::error_code;

/// Completion token: results as a tuple (error first) instead of exceptions (STYLE.md §4).
inline constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

template <typename T = void>
using Awaitable = asio::awaitable<T>;
} // namespace sortie
