// SPDX-License-Identifier: Apache-2.0
// Names of public enums, shared by the CLI, JSON output and logs.
#include <string>

#include "sortie/job.hpp"
#include "sortie/result.hpp"

namespace sortie {

const char* error_code_name(ErrorCode code) {
  switch (code) {
  case ErrorCode::Ok:
    return "ok";
  case ErrorCode::InvalidArgument:
    return "invalid argument";
  case ErrorCode::NotFound:
    return "not found";
  case ErrorCode::AlreadyExists:
    return "already exists";
  case ErrorCode::FailedPrecondition:
    return "failed precondition";
  case ErrorCode::Unavailable:
    return "unavailable";
  case ErrorCode::Timeout:
    return "timeout";
  case ErrorCode::Cancelled:
    return "cancelled";
  case ErrorCode::PermissionDenied:
    return "permission denied";
  case ErrorCode::Io:
    return "i/o error";
  case ErrorCode::Internal:
    return "internal error";
  }
  return "unknown";
}

const char* job_state_name(JobState state) {
  switch (state) {
  case JobState::Queued:
    return "queued";
  case JobState::Assigned:
    return "assigned";
  case JobState::Running:
    return "running";
  case JobState::Succeeded:
    return "succeeded";
  case JobState::Failed:
    return "failed";
  case JobState::Cancelled:
    return "cancelled";
  case JobState::TimedOut:
    return "timed_out";
  case JobState::Lost:
    return "lost";
  }
  return "unknown";
}

std::optional<JobState> parse_job_state(const std::string& name) {
  for (int s = 1; s <= 8; ++s) {
    auto st = static_cast<JobState>(s);
    if (name == job_state_name(st))
      return st;
  }
  return std::nullopt;
}

bool is_terminal(JobState state) {
  return state == JobState::Succeeded || state == JobState::Failed ||
         state == JobState::Cancelled || state == JobState::TimedOut || state == JobState::Lost;
}

} // namespace sortie
