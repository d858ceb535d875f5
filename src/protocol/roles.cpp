// SPDX-License-Identifier: Apache-2.0
// The table of which role may send which message (docs/protocol/03-messages.md).
#include "protocol/roles.hpp"

#include <fmt/format.h>

#include "protocol/frame.hpp"

namespace sortie::protocol {
namespace {

constexpr std::uint32_t bit(Role r) { return 1u << static_cast<int>(r); }
constexpr std::uint32_t kClient = bit(Role::Client), kAgent = bit(Role::Agent),
                        kHub = bit(Role::Hub), kEngine = bit(Role::Engine),
                        kRelay = bit(Role::Relay);
constexpr std::uint32_t kConnecting = kClient | kAgent | kEngine | kRelay;
constexpr std::uint32_t kAnyone = kConnecting | kHub;

} // namespace

const char* role_name(Role role) {
  switch (role) {
  case Role::Client:
    return "client";
  case Role::Agent:
    return "agent";
  case Role::Hub:
    return "hub";
  case Role::Engine:
    return "engine";
  case Role::Relay:
    return "relay";
  }
  return "peer";
}

std::uint32_t senders_of(pb::Envelope::BodyCase body) {
  using B = pb::Envelope::BodyCase;
  switch (body) {
  // Handshake (02-handshake.md) and link upkeep.
  case B::kHello:
  case B::kAuth:
    return kConnecting;
  case B::kChallenge:
  case B::kWelcome:
    return kHub;
  case B::kError:
  case B::kHeartbeat:
  case B::kGoodbye:
    return kAnyone;
  // Client requests (03-messages.md §2) and the hub's replies.
  case B::kSubmit:
  case B::kListJobs:
  case B::kGetJob:
  case B::kWait:
  case B::kCancel:
  case B::kLogs:
  case B::kHubStatus:
  case B::kHubStop:
  case B::kPilotAdd:
  case B::kPilotList:
  case B::kPilotCancel:
  case B::kResourceAdd:
  case B::kResourceList:
  case B::kResourceRemove:
  case B::kForget:
    return kClient;
  case B::kSubmitReply:
  case B::kJobList:
  case B::kJobInfo:
  case B::kWaitProgress:
  case B::kCancelReply:
  case B::kLogsData:
  case B::kHubStatusReply:
  case B::kPilotAddReply:
  case B::kPilotListReply:
  case B::kOk:
  case B::kResourceListReply:
  case B::kForgetReply:
    return kHub;
  // The agent link (03-messages.md §3).
  case B::kAgentRegister:
  case B::kJobEvents:
  case B::kOutput:
    return kAgent;
  case B::kAgentRegistered:
  case B::kAssign:
  case B::kKill:
  case B::kJobEventsAck:
  case B::kOutputCredit:
  case B::kShutdown:
  case B::kEngineHost:
    return kHub;
  // Engines (05-tasks.md): an engine's frames reach the hub through its agent, and the hub's
  // through the agent to it; EngineRejoin is the agent's own word to its engines.
  case B::kEngineReady:
  case B::kTaskDone:
    return kEngine;
  case B::kEngineWelcome:
  case B::kTaskRun:
  case B::kTaskDoneAck:
    return kHub;
  case B::kEngineRejoin:
    return kAgent;
  // Pieces of large values (05-tasks.md §5.5): uploaded by clients and engines, sent on by the
  // hub; acknowledged by the hub and by engines.
  case B::kValueChunk:
    return kClient | kEngine | kHub;
  case B::kValueChunkAck:
    return kEngine | kHub;
  // A running task's output, live: printed by engines, pushed by the hub to clients following.
  case B::kTaskOutput:
    return kEngine | kHub;
  // Task requests of clients and their replies.
  case B::kTaskSubmit:
  case B::kTaskWatch:
  case B::kTaskList:
  case B::kTaskForget:
  case B::kEngineList:
    return kClient;
  case B::kTaskSubmitReply:
  case B::kTaskResults:
  case B::kTaskListReply:
  case B::kTaskForgetReply:
  case B::kEngineListReply:
    return kHub;
  case B::BODY_NOT_SET:
    return 0;
  }
  return 0;
}

Error not_allowed(Role role, const pb::Envelope& env) {
  const char* name = role_name(role);
  bool vowel = name[0] == 'a' || name[0] == 'e';
  return make_error(ErrorCode::InvalidArgument,
                    fmt::format("protocol error: {} {} may not send '{}'", vowel ? "an" : "a",
                                name, body_name(env)));
}

} // namespace sortie::protocol
