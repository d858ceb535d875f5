// SPDX-License-Identifier: Apache-2.0
// sortie::Result<T> and sortie::Error: expected failures as values (STYLE.md §4).
//
// Debian 12's g++ 12 has no std::expected, so this is a small one of our own. Codes stay few and
// generic; the message names what went wrong and how to fix it, the context names the object
// (job, agent, host, file, command line) involved.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace sortie {

enum class ErrorCode : std::uint8_t {
  Ok = 0,
  InvalidArgument,
  NotFound,
  AlreadyExists,
  FailedPrecondition,
  Unavailable,
  Timeout,
  Cancelled,
  PermissionDenied,
  Io,
  Internal,
};

/// A short lower-case name of a code, e.g. "invalid argument".
const char* error_code_name(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::Internal;
  std::string message;
  std::string context;

  /// "message (context)" or just the message.
  std::string to_string() const {
    return context.empty() ? message : message + " (" + context + ")";
  }
  /// Returns a copy with `what` prepended to the context, for callers adding where it happened.
  Error with_context(const std::string& what) const {
    return Error{code, message, context.empty() ? what : what + ": " + context};
  }
};

inline Error make_error(ErrorCode code, std::string message, std::string context = {}) {
  return Error{code, std::move(message), std::move(context)};
}

template <typename T>
class [[nodiscard]] Result {
public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

private:
  Error error_;
  bool ok_ = true;
};

inline Result<void> ok_result() { return Result<void>(); }

} // namespace sortie

/// Evaluates `expr` (a Result); on error returns the error from the enclosing function.
#define SORTIE_TRY(expr)                                                                           \
  do {                                                                                             \
    auto&& sortie_try_result_ = (expr);                                                            \
    if (!sortie_try_result_.ok())                                                                  \
      return std::move(sortie_try_result_).error();                                                \
  } while (0)

/// Declares `var` from the value of a Result, or returns its error.
#define SORTIE_ASSIGN_OR_RETURN(var, expr)                                                         \
  auto var##_result_ = (expr);                                                                     \
  if (!var##_result_.ok())                                                                         \
    return std::move(var##_result_).error();                                                       \
  auto var = std::move(var##_result_).value()
