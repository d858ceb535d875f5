// SPDX-License-Identifier: Apache-2.0
// config.toml's [hub], [resources.NAME] and [[pilots]] tables, checked with file:line errors.
#include "hub/config.hpp"

#include "common/files.hpp"

#include <algorithm>

#include <toml++/toml.h>

#include <fmt/format.h>

#include "common/text.hpp"
#include "common/toml.hpp"

namespace sortie::hub {
namespace {

std::string where(const std::filesystem::path& path, const toml::source_region& src) {
  return fmt::format("{}:{}:{}", path.string(), src.begin.line, src.begin.column);
}

/// [resources.NAME] tables: type, location, install_dir, tmp_dir, gateway, ssh_options,
/// machinefile.
Result<void> load_resources(const std::filesystem::path& path,
                            const toml::table& resources,
                            HubConfig& config) {
  for (auto&& [name_node, node] : resources) {
    std::string name(name_node.str());
    auto* t = node.as_table();
    if (!t)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: resources.{} must be a table ([resources.{}])",
                                    where(path, node.source()), name, name));
    pb::ResourceSpec r;
    r.set_name(name);
    r.set_from_config(true);
    for (auto&& [key_node, value] : *t) {
      std::string key(key_node.str());
      std::string at = where(path, value.source());
      if (key == "ssh_options") {
        auto* arr = value.as_array();
        if (!arr)
          return make_error(ErrorCode::InvalidArgument,
                            fmt::format("{}: resources.{}.ssh_options must be an array of strings",
                                        at, name));
        for (auto&& v : *arr) {
          auto s = v.value<std::string>();
          if (!s)
            return make_error(ErrorCode::InvalidArgument,
                              fmt::format("{}: resources.{}.ssh_options must be an array of "
                                          "strings",
                                          where(path, v.source()), name));
          r.add_ssh_options(*s);
        }
        continue;
      }
      auto s = value.value<std::string>();
      if (!s)
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: resources.{}.{} must be a string", at, name, key));
      if (key == "type")
        r.set_type(*s);
      else if (key == "location")
        r.set_location(*s);
      else if (key == "install_dir")
        r.set_install_dir(*s);
      else if (key == "tmp_dir")
        r.set_tmp_dir(*s);
      else if (key == "gateway")
        r.set_gateway(*s);
      else if (key == "machinefile")
        r.set_machinefile(*s);
      else
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: unknown key resources.{}.{}: known keys are type, "
                                      "location, install_dir, tmp_dir, gateway, ssh_options, "
                                      "machinefile",
                                      at, name, key));
    }
    if (r.type().empty())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: resources.{} needs a type (ssh, slurm, sge or local)",
                                    where(path, node.source()), name));
    config.resources.push_back(std::move(r));
  }
  return ok_result();
}

/// [[pilots]] tables: name, resource, nodes, slots_per_node, label, time, queue, options,
/// gpus_per_node, memory_per_node, node_names.
Result<void> load_pilots(const std::filesystem::path& path,
                         const toml::array& pilots,
                         HubConfig& config) {
  int index = 0;
  for (auto&& node : pilots) {
    ++index;
    const auto& t = *node.as_table();
    pb::PilotSpec p;
    p.set_config_name(fmt::format("pilot-{}", index));
    for (auto&& [key_node, value_node] : t) {
      auto& value = value_node; // a plain reference: lambdas below use it (clang 14)
      std::string key(key_node.str());
      std::string at = where(path, value.source());
      auto bad = [&](const char* what) {
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: pilots.{} must be {}", at, key, what));
      };
      auto strings = [&](auto add) -> Result<void> {
        auto* arr = value.as_array();
        if (!arr)
          return bad("an array of strings");
        for (auto&& v : *arr) {
          auto s = v.value<std::string>();
          if (!s)
            return bad("an array of strings");
          add(*s);
        }
        return ok_result();
      };
      auto count = [&](std::int64_t max) -> Result<std::uint32_t> {
        auto v = toml_integer(value);
        if (!v || *v < 0 || *v > max)
          return bad("a whole number");
        return static_cast<std::uint32_t>(*v);
      };
      if (key == "name" || key == "resource" || key == "label" || key == "queue" ||
          key == "time" || key == "memory_per_node") {
        auto s = value.value<std::string>();
        if (!s)
          return bad("a string");
        if (key == "name") {
          p.set_config_name(*s);
        } else if (key == "resource") {
          p.set_resource(*s);
        } else if (key == "label") {
          p.set_label(*s);
        } else if (key == "queue") {
          p.set_queue(*s);
        } else if (key == "time") {
          auto d = parse_duration_ms(*s);
          if (!d.ok())
            return make_error(ErrorCode::InvalidArgument,
                              fmt::format("{}: pilots.time: {}", at, d.error().message));
          p.set_walltime_ms(*d);
        } else {
          auto b = parse_size_bytes(*s);
          if (!b.ok())
            return make_error(ErrorCode::InvalidArgument,
                              fmt::format("{}: pilots.memory_per_node: {}", at, b.error().message));
          p.set_memory_per_node(*b);
        }
      } else if (key == "nodes") {
        SORTIE_ASSIGN_OR_RETURN(n, count(4096));
        p.set_nodes(n);
      } else if (key == "slots_per_node") {
        SORTIE_ASSIGN_OR_RETURN(n, count(4096));
        p.set_slots_per_node(n);
      } else if (key == "gpus_per_node") {
        SORTIE_ASSIGN_OR_RETURN(n, count(64));
        p.set_gpus_per_node(n);
      } else if (key == "options") {
        SORTIE_TRY(strings([&](const std::string& s) { p.add_batch_options(s); }));
      } else if (key == "node_names") {
        SORTIE_TRY(strings([&](const std::string& s) { p.add_node_names(s); }));
      } else {
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: unknown key pilots.{}: known keys are name, resource, "
                                      "nodes, slots_per_node, label, time, queue, options, "
                                      "gpus_per_node, memory_per_node, node_names",
                                      at, key));
      }
    }
    if (p.resource().empty())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: a [[pilots]] table needs resource = \"NAME\"",
                                    where(path, node.source())));
    config.pilots.push_back(std::move(p));
  }
  return ok_result();
}

} // namespace

std::int64_t drain_margin_ms(std::int64_t walltime_ms) {
  return std::clamp<std::int64_t>(walltime_ms / 10, 5'000, 60'000);
}

Result<void> parse_listen(const std::string& text, HubConfig& config) {
  std::string host = text;
  std::string port;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("'{}' is not an address: a '[' without ']'", text));
    host = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':')
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("'{}' is not an address: expected ':' after ']'", text));
      port = text.substr(close + 2);
    }
  } else if (auto colon = text.rfind(':'); colon != std::string::npos) {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (host.empty())
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("'{}' has no host: use host:port, e.g. 127.0.0.1:7714", text));
  config.listen_host = host;
  config.listen_port = 0;
  if (!port.empty()) {
    auto p = parse_int(port, 0, 65535);
    if (!p.ok())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("'{}' has an invalid port: {}", text, p.error().message));
    config.listen_port = static_cast<std::uint16_t>(*p);
  }
  return ok_result();
}

Result<void> load_config_file(const std::filesystem::path& path, HubConfig& config) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    return ok_result();
  auto content = read_file(path); // a regular file only: a FIFO must not hang the hub's start
  if (!content.ok())
    return content.error();
  return parse_config(*content, path, config);
}

Result<void> parse_config(const std::string& content, const std::filesystem::path& path,
                          HubConfig& config) {
  toml::table doc;
  try {
    doc = toml::parse(content, path.string());
  } catch (const toml::parse_error& e) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{}: {}", where(path, e.source()), e.description()));
  }
  for (auto&& [key, node] : doc) {
    // [hub] and [resources.NAME]; anything else is a mistake worth naming.
    if (key.str() != "hub" && key.str() != "resources" && key.str() != "pilots")
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: unknown table '{}': known tables are [hub] and "
                                    "[resources.NAME] and [[pilots]]",
                                    where(path, node.source()), key.str()));
  }
  if (auto* resources = doc["resources"].as_table())
    SORTIE_TRY(load_resources(path, *resources, config));
  if (auto* pilots = doc["pilots"].node()) {
    auto* arr = pilots->as_array();
    if (!arr || !arr->is_array_of_tables())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: pilots must be [[pilots]] tables",
                                    where(path, pilots->source())));
    SORTIE_TRY(load_pilots(path, *arr, config));
  }
  auto* hub = doc["hub"].as_table();
  if (!hub)
    return ok_result();
  for (auto&& [key_node, hub_node] : *hub) {
    auto& node = hub_node; // a plain reference: lambdas below use it (clang 14)
    std::string key(key_node.str());
    std::string at = where(path, node.source());
    auto want_string = [&]() -> Result<std::string> {
      if (auto s = node.value<std::string>())
        return *s;
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: hub.{} must be a string", at, key));
    };
    auto want_duration = [&](std::int64_t& out) -> Result<void> {
      SORTIE_ASSIGN_OR_RETURN(s, want_string());
      auto d = parse_duration_ms(s);
      if (!d.ok())
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: hub.{}: {}", at, key, d.error().message));
      out = *d;
      return ok_result();
    };
    auto want_int = [&](std::int64_t min, std::int64_t max) -> Result<std::int64_t> {
      auto v = toml_integer(node);
      if (!v || *v < min || *v > max)
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: hub.{} must be a whole number in {}..{}", at, key, min,
                                      max));
      return *v;
    };
    if (key == "listen") {
      SORTIE_ASSIGN_OR_RETURN(s, want_string());
      auto r = parse_listen(s, config);
      if (!r.ok())
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: hub.listen: {}", at, r.error().message));
    } else if (key == "heartbeat_interval") {
      SORTIE_TRY(want_duration(config.heartbeat_interval_ms));
      config.heartbeat_deadline_ms = 4 * config.heartbeat_interval_ms;
    } else if (key == "agent_reconnect_window") {
      SORTIE_TRY(want_duration(config.agent_reconnect_window_ms));
    } else if (key == "kill_grace") {
      SORTIE_TRY(want_duration(config.kill_grace_ms));
    } else if (key == "output_retry") {
      SORTIE_TRY(want_duration(config.output_retry_ms));
    } else if (key == "launch_queue") {
      if (auto text = node.value<std::string>(); text && *text == "auto") {
        config.launch_queue = 0;
      } else {
        auto v = toml_integer(node);
        if (!v || *v < 1 || *v > 64)
          return make_error(ErrorCode::InvalidArgument,
                            fmt::format("{}: hub.launch_queue must be \"auto\" or a whole number "
                                        "of rounds in 1..64",
                                        at));
        config.launch_queue = static_cast<std::uint32_t>(*v);
      }
    } else if (key == "lost_retries") {
      SORTIE_ASSIGN_OR_RETURN(v, want_int(0, 1000));
      config.lost_retries = static_cast<std::uint32_t>(v);
    } else if (key == "output_credit") {
      SORTIE_ASSIGN_OR_RETURN(s, want_string());
      auto b = parse_size_bytes(s);
      if (!b.ok() || *b < 65536)
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: hub.output_credit must be a size of at least 64K", at));
      config.output_credit = *b;
    } else if (key == "batch_poll_interval") {
      SORTIE_TRY(want_duration(config.batch_poll_interval_ms));
      if (config.batch_poll_interval_ms < 100)
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: hub.batch_poll_interval must be at least 100ms", at));
    } else if (key == "job_retention") {
      SORTIE_TRY(want_duration(config.job_retention_ms));
    } else if (key == "task_retention") {
      SORTIE_TRY(want_duration(config.task_retention_ms));
    } else if (key == "engine_prefetch") {
      SORTIE_ASSIGN_OR_RETURN(v, want_int(1, 1000));
      config.engine_prefetch = static_cast<std::uint32_t>(v);
    } else if (key == "engine_prefetch_max") {
      SORTIE_ASSIGN_OR_RETURN(v, want_int(1, 1000));
      config.engine_prefetch_max = static_cast<std::uint32_t>(v);
    } else if (key == "confirm_above") {
      SORTIE_ASSIGN_OR_RETURN(v, want_int(0, 10'000'000));
      config.confirm_above = static_cast<std::uint64_t>(v);
    } else if (key == "store_sync") {
      auto s = node.value<std::string>();
      if (!s || (*s != "full" && *s != "normal"))
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}: hub.store_sync must be \"full\" or \"normal\"", at));
      config.store_sync_full = *s == "full";
    } else {
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: unknown key hub.{}: known keys are listen, "
                                    "heartbeat_interval, agent_reconnect_window, kill_grace, output_retry, "
                                    "launch_queue, lost_retries, output_credit, store_sync, batch_poll_interval, "
                                    "job_retention, task_retention, engine_prefetch, engine_prefetch_max, "
                                    "confirm_above",
                                    at, key));
    }
  }
  if (config.heartbeat_interval_ms < 100)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{}: hub.heartbeat_interval must be at least 100ms", path.string()));
  return ok_result();
}

} // namespace sortie::hub
