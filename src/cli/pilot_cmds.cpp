// SPDX-License-Identifier: Apache-2.0
// `sortie pilot add|list|wait|cancel` and `sortie resource add|list|rm`.
#include "cli/commands.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include <fmt/format.h>

#include "agent/agent.hpp"
#include "sortie/job_files.hpp"
#include "cli/output.hpp"
#include "common/mapfile.hpp"
#include "common/clock.hpp"
#include "common/files.hpp"
#include "common/hub_file.hpp"
#include "common/log.hpp"
#include "common/profile.hpp"
#include "common/text.hpp"
#include "common/version.hpp"
#include "hub/server.hpp"
#include "launch/process.hpp"
#include "sortie/client.hpp"
#include "store/store.hpp"

extern char** environ;

namespace sortie::cli {

// ---------------------------------------------------------------------------------------------
// pilots


int pilot_add(const Globals& g, const PilotAddArgs& a) {
  PilotSpec spec;
  spec.resource = a.resource;
  spec.slots_per_node = a.slots;
  spec.label = a.label;
  if (!a.node_names.empty())
    spec.node_names = split(a.node_names, ',');
  spec.nodes = a.nodes ? a.nodes : static_cast<std::uint32_t>(spec.node_names.size());
  spec.queue = a.queue;
  spec.batch_options = a.options;
  spec.gpus_per_node = a.gpus_per_node;
  if (!a.memory_per_node.empty()) {
    auto b = parse_size_bytes(a.memory_per_node);
    if (!b.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--memory-per-node: " + b.error().message));
    spec.memory_per_node = *b;
  }
  if (!a.time.empty()) {
    auto t = parse_duration_ms(a.time);
    if (!t.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--time: " + t.error().message));
    spec.walltime_ms = *t;
  }
  auto client = connect(g, true);
  if (!client.ok())
    return fail(client.error());
  auto id = client->add_pilot(spec);
  if (!id.ok())
    return fail(id.error());
  if (a.json)
    std::printf("{\"id\": %llu}\n", static_cast<unsigned long long>(id->value));
  else
    std::printf("%llu\n", static_cast<unsigned long long>(id->value));
  return kExitOk;
}

/// `pilot list` (id 0) and `pilot show ID`.
int pilot_list(const Globals& g, bool as_json, std::uint64_t id) {
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto pilots = client->pilots();
  if (!pilots.ok())
    return fail(pilots.error());
  if (id == 0) {
    std::fputs((as_json ? pilots_json(*pilots) : pilots_table(*pilots)).c_str(), stdout);
    return kExitOk;
  }
  for (const auto& p : *pilots)
    if (p.id.value == id) {
      std::fputs((as_json ? pilots_json({p}) : pilot_detail(p)).c_str(), stdout);
      return kExitOk;
    }
  return fail(make_error(ErrorCode::NotFound,
                         fmt::format("pilot {} does not exist: `sortie pilot list` shows them", id)));
}


/// Until the pilots run with all their nodes (or the first one fails), like dask's
/// wait_for_workers and AMUSE's wait_for_pilots.
int pilot_wait(const Globals& g, const PilotWaitArgs& a) {
  std::int64_t timeout_ms = -1;
  if (!a.timeout.empty()) {
    auto t = parse_duration_ms(a.timeout);
    if (!t.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--timeout: " + t.error().message));
    timeout_ms = *t;
  }
  if (a.ids.empty() && !a.all)
    return fail(make_error(ErrorCode::InvalidArgument,
                           "name the pilots to wait for (ids), or give --all"));
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    auto pilots = client->pilots();
    if (!pilots.ok())
      return fail(pilots.error());
    std::size_t ready = 0, wanted = 0;
    std::string waiting;
    for (auto id : a.ids)
      if (std::none_of(pilots->begin(), pilots->end(),
                       [&](const PilotInfo& p) { return p.id.value == id; }))
        return fail(make_error(ErrorCode::NotFound, fmt::format("pilot {} does not exist", id)));
    for (const auto& p : *pilots) {
      // --all: every pilot not cancelled or ended, failed ones included (so a pilot that failed
      // before we looked makes the wait fail too).
      bool chosen = a.all ? (p.state != "ended" && p.state != "cancelled")
                          : std::find(a.ids.begin(), a.ids.end(), p.id.value) != a.ids.end();
      if (!chosen)
        continue;
      ++wanted;
      if (p.state == "failed" || p.state == "cancelled" || p.state == "ended") {
        const char* how = p.state == "failed" ? "failed" : p.state == "cancelled" ? "was cancelled"
                                                                                 : "has ended";
        std::fprintf(stderr, "sortie: pilot %llu %s%s%s\n",
                     static_cast<unsigned long long>(p.id.value), how,
                     p.reason.empty() ? "" : ": ", printable(p.reason).c_str());
        return kExitFailure;
      }
      bool all_up = p.nodes_up > 0 && p.nodes_up >= p.spec.nodes;
      if ((p.state == "running" || p.state == "draining") && all_up)
        ++ready;
      else
        waiting += fmt::format("{}pilot {} {} ({} of {} nodes up)", waiting.empty() ? "" : ", ",
                               p.id.value, p.state, p.nodes_up,
                               p.spec.nodes ? std::to_string(p.spec.nodes) : "its");
    }
    if (ready == wanted)
      return kExitOk;
    if (timeout_ms >= 0 && std::chrono::steady_clock::now() >= deadline) {
      std::fprintf(stderr, "sortie: timed out waiting for %s\n", waiting.c_str());
      return kExitTimeout;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// ---------------------------------------------------------------------------------------------
// resources


int resource_add(const Globals& g, const ResourceAddArgs& a) {
  ResourceSpec spec;
  spec.name = a.name;
  spec.type = a.type;
  spec.location = a.location;
  spec.install_dir = a.install_dir;
  spec.tmp_dir = a.tmp_dir;
  spec.gateway = a.gateway;
  spec.ssh_options = a.ssh_options;
  if (!a.machinefile.empty()) {
    std::error_code ec;
    auto abs = std::filesystem::absolute(a.machinefile, ec);
    spec.machinefile = ec ? a.machinefile : abs.string();
  }
  auto client = connect(g, true);
  if (!client.ok())
    return fail(client.error());
  if (auto r = client->add_resource(spec, a.replace); !r.ok())
    return fail(r.error());
  return kExitOk;
}

int resource_list(const Globals& g, bool as_json) {
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto list = client->resources();
  if (!list.ok())
    return fail(list.error());
  std::fputs((as_json ? resources_json(*list) : resources_table(*list)).c_str(), stdout);
  return kExitOk;
}

int resource_rm(const Globals& g, const std::string& name) {
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  if (auto r = client->remove_resource(name); !r.ok())
    return fail(r.error());
  return kExitOk;
}

int pilot_cancel(const Globals& g, std::uint64_t id) {
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  if (auto r = client->cancel_pilot(PilotId(id)); !r.ok())
    return fail(r.error());
  std::printf("pilot %llu cancelled\n", static_cast<unsigned long long>(id));
  return kExitOk;
}

} // namespace sortie::cli
