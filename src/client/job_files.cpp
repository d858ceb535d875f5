// SPDX-License-Identifier: Apache-2.0
// Jobs from files and ranges: job files (TOML tables to JobSpecs, errors at file:line), map
// files, lists of lines and arrays with "{}" substitution.
#include "sortie/job_files.hpp"

#include <toml++/toml.h>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/mapfile.hpp"
#include "common/text.hpp"
#include "common/toml.hpp"

namespace sortie {
namespace {

const char* const kJobKeys[] = {"command", "argv", "env", "export", "cwd", "slots", "memory", "gpus", "label",
                                "name", "hosts", "prefer_hosts", "max_per_node", "priority",
                                "queue_timeout", "run_timeout", "time_request", "retries",
                                "retry_on_failure", "after", "array", "mpi", "ranks_per_node"};

class Reader {
public:
  Reader(std::string name, std::filesystem::path base) : name_(std::move(name)), base_(std::move(base)) {}

  Error err(const toml::node& node, const std::string& key, const std::string& what) const {
    const auto& src = node.source();
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{}:{}:{}: {}: {}", name_, src.begin.line, src.begin.column, key, what));
  }

  Result<std::vector<std::string>> strings(const toml::node& node, const std::string& key,
                                           bool comma_list) const {
    std::vector<std::string> out;
    if (auto s = node.value<std::string>()) {
      if (!comma_list)
        return err(node, key, "must be an array of strings, e.g. [\"python3\", \"sim.py\"]");
      for (auto& part : split(*s, ','))
        if (!trim(part).empty())
          out.emplace_back(trim(part));
      return out;
    }
    const auto* arr = node.as_array();
    if (!arr)
      return err(node, key, "must be an array of strings");
    for (const auto& e : *arr) {
      auto s = e.value<std::string>();
      if (!s)
        return err(e, key, "must contain only strings");
      out.push_back(*s);
    }
    return out;
  }

  Result<std::int64_t> integer(const toml::node& node, const std::string& key, std::int64_t min,
                               std::int64_t max) const {
    auto v = toml_integer(node);
    if (!v || *v < min || *v > max)
      return err(node, key, fmt::format("must be a whole number in {}..{}", min, max));
    return *v;
  }

  Result<std::int64_t> duration(const toml::node& node, const std::string& key) const {
    auto s = node.value<std::string>();
    if (!s)
      return err(node, key, "must be a duration string like \"90s\", \"15m\" or \"2h\"");
    auto d = parse_duration_ms(*s);
    if (!d.ok())
      return err(node, key, d.error().message);
    return *d;
  }

  /// Applies one table's keys to `entry`.
  Result<void> apply(const toml::table& table, SubmitItem& entry, bool top) const {
    JobSpec& spec = entry.spec;
    for (auto&& [k, node] : table) {
      std::string key(k.str());
      if (top && (key == "group" || key == "job"))
        continue;
      bool known = false;
      for (const char* name : kJobKeys)
        known = known || key == name;
      if (!known)
        return err(node, key,
                   "unknown key; job keys are command, env, export, cwd, slots, memory, gpus, label, name, "
                   "hosts, prefer_hosts, max_per_node, priority, queue_timeout, run_timeout, "
                   "time_request, retries, retry_on_failure, after, array, mpi, ranks_per_node");
      if (key == "command" || key == "argv") {
        SORTIE_ASSIGN_OR_RETURN(v, strings(node, key, false));
        if (v.empty())
          return err(node, key, "is empty: give the program and its arguments");
        spec.argv = std::move(v);
      } else if (key == "env") {
        const auto* t = node.as_table();
        if (!t)
          return err(node, key, "must be a table of NAME = \"value\"");
        spec.env.clear();
        for (auto&& [ek, ev] : *t) {
          auto v = ev.value<std::string>();
          if (!v)
            return err(ev, std::string(ek.str()), "environment values must be strings");
          spec.env.emplace_back(std::string(ek.str()), *v);
        }
      } else if (key == "export") {
        auto v = node.value<std::string>();
        if (!v)
          return err(node, key, "must be a string: \"ALL\", \"NONE\" or \"NAME,NAME=VALUE,...\"");
        spec.export_env = *v;
      } else if (key == "cwd") {
        auto v = node.value<std::string>();
        if (!v)
          return err(node, key, "must be a string");
        spec.cwd = (base_ / *v).lexically_normal().string();
      } else if (key == "slots") {
        SORTIE_ASSIGN_OR_RETURN(v, integer(node, key, 1, 4096));
        spec.slots = static_cast<std::uint32_t>(v);
      } else if (key == "memory") {
        if (auto n = toml_integer(node); n && *n > 0) {
          spec.memory_bytes = static_cast<std::uint64_t>(*n);
        } else if (auto s = node.value<std::string>()) {
          auto b = parse_size_bytes(*s);
          if (!b.ok())
            return err(node, key, b.error().message);
          spec.memory_bytes = *b;
        } else {
          return err(node, key, "must be a size like \"4G\" or a number of bytes");
        }
      } else if (key == "gpus") {
        SORTIE_ASSIGN_OR_RETURN(v, integer(node, key, 0, 64));
        spec.gpus = static_cast<std::uint32_t>(v);
      } else if (key == "label" || key == "name") {
        auto v = node.value<std::string>();
        if (!v)
          return err(node, key, "must be a string");
        (key == "label" ? spec.label : spec.name) = *v;
      } else if (key == "hosts" || key == "prefer_hosts") {
        SORTIE_ASSIGN_OR_RETURN(v, strings(node, key, true));
        (key == "hosts" ? spec.hosts : spec.prefer_hosts) = std::move(v);
      } else if (key == "max_per_node") {
        SORTIE_ASSIGN_OR_RETURN(v, integer(node, key, 0, 1'000'000));
        spec.max_per_node = static_cast<std::uint32_t>(v);
      } else if (key == "priority") {
        SORTIE_ASSIGN_OR_RETURN(v, integer(node, key, -1'000'000, 1'000'000));
        spec.priority = static_cast<std::int32_t>(v);
      } else if (key == "queue_timeout") {
        SORTIE_ASSIGN_OR_RETURN(v, duration(node, key));
        spec.queue_timeout_ms = v;
      } else if (key == "run_timeout") {
        SORTIE_ASSIGN_OR_RETURN(v, duration(node, key));
        spec.run_timeout_ms = v;
      } else if (key == "time_request") {
        SORTIE_ASSIGN_OR_RETURN(v, duration(node, key));
        spec.time_request_ms = v;
      } else if (key == "retries") {
        SORTIE_ASSIGN_OR_RETURN(v, integer(node, key, 0, 1000));
        spec.retries = static_cast<std::uint32_t>(v);
      } else if (key == "mpi") {
        SORTIE_ASSIGN_OR_RETURN(v, integer(node, key, 1, 4096));
        spec.mpi_ranks = static_cast<std::uint32_t>(v);
      } else if (key == "ranks_per_node") {
        SORTIE_ASSIGN_OR_RETURN(v, integer(node, key, 1, 4096));
        spec.ranks_per_node = static_cast<std::uint32_t>(v);
      } else if (key == "retry_on_failure") {
        auto v = node.value<bool>();
        if (!v)
          return err(node, key, "must be true or false");
        spec.retry_on_failure = *v;
      } else if (key == "after") {
        spec.after.clear();
        const auto* arr = node.as_array();
        if (!arr)
          return err(node, key, "must be an array of job ids, e.g. [12, 13]");
        for (const auto& e : *arr) {
          auto v = toml_integer(e);
          if (!v || *v < 1)
            return err(e, key, "job ids are whole numbers from 1");
          spec.after.push_back(JobId(static_cast<std::uint64_t>(*v)));
        }
      } else if (key == "array") {
        auto v = node.value<std::string>();
        if (!v)
          return err(node, key, "must be a string like \"1-100\" or \"0-99:2\"");
        auto r = parse_array_range(*v);
        if (!r.ok())
          return err(node, key, r.error().message);
        entry.array = *r;
      }
    }
    return ok_result();
  }

private:
  std::string name_;
  std::filesystem::path base_;
};

} // namespace

Result<JobFile> parse_job_file(const std::string& text,
                               const std::string& name,
                               const std::filesystem::path& base_dir) {
  toml::table doc;
  try {
    doc = toml::parse(text, name);
  } catch (const toml::parse_error& e) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{}:{}:{}: {}", name, e.source().begin.line,
                                  e.source().begin.column, e.description()));
  }
  Reader reader(name, base_dir);
  JobFile file;
  if (auto* g = doc.get("group")) {
    auto v = g->value<std::string>();
    if (!v)
      return reader.err(*g, "group", "must be a string");
    file.group = *v;
  }
  SubmitItem defaults;
  SORTIE_TRY(reader.apply(doc, defaults, true));
  if (auto* jobs = doc.get("job")) {
    const auto* arr = jobs->as_array();
    if (!arr || !arr->is_array_of_tables())
      return reader.err(*jobs, "job", "must be [[job]] tables");
    for (const auto& t : *arr) {
      SubmitItem e = defaults;
      SORTIE_TRY(reader.apply(*t.as_table(), e, false));
      if (e.spec.argv.empty())
        return reader.err(t, "job", "has no command: set command = [\"program\", \"args\"...]");
      file.jobs.push_back(std::move(e));
    }
  } else {
    if (defaults.spec.argv.empty())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: no command: set command = [\"program\", \"args\"...] or "
                                    "add [[job]] tables",
                                    name));
    file.jobs.push_back(std::move(defaults));
  }
  return file;
}

Result<JobFile> read_job_file(const std::filesystem::path& path) {
  SORTIE_ASSIGN_OR_RETURN(text, read_file(path));
  auto base = std::filesystem::absolute(path).parent_path();
  return parse_job_file(text, path.string(), base);
}

std::vector<std::string> substitute_item(const std::vector<std::string>& command,
                                         const std::string& item) {
  std::vector<std::string> out;
  bool used = false;
  for (const auto& arg : command) {
    std::string a;
    for (std::size_t i = 0; i < arg.size();) {
      if (arg.compare(i, 2, "{}") == 0) {
        a += item;
        i += 2;
        used = true;
      } else {
        a += arg[i++];
      }
    }
    out.push_back(std::move(a));
  }
  if (!used)
    out.push_back(item);
  return out;
}

namespace {

/// One job of a list: the template with its item, on `host` when given.
JobSpec job_for_item(const JobSpec& tmpl, const std::string& item, const std::string& host) {
  JobSpec s = tmpl;
  s.argv = substitute_item(tmpl.argv, item);
  if (s.name.empty()) // named after its item, as listings show it
    s.name = item.substr(0, 256);
  if (!host.empty())
    s.hosts = {host};
  return s;
}

Result<void> check_template(const JobSpec& tmpl) {
  if (tmpl.argv.empty())
    return make_error(ErrorCode::InvalidArgument,
                      "no command given: PROGRAM [ARGS...], with {} where each item goes");
  return ok_result();
}

} // namespace

Result<std::vector<JobSpec>> jobs_from_map_text(const JobSpec& tmpl, std::string_view text,
                                                const std::string& name) {
  SORTIE_TRY(check_template(tmpl));
  SORTIE_ASSIGN_OR_RETURN(entries, parse_mapfile(text, name));
  std::vector<JobSpec> out;
  out.reserve(entries.size());
  for (const auto& e : entries)
    out.push_back(job_for_item(tmpl, e.file, e.host));
  return out;
}

Result<std::vector<JobSpec>> jobs_from_map_file(const JobSpec& tmpl,
                                                const std::filesystem::path& path) {
  SORTIE_ASSIGN_OR_RETURN(text, read_file(path));
  return jobs_from_map_text(tmpl, text, path.string());
}

Result<std::vector<JobSpec>> jobs_from_lines(const JobSpec& tmpl,
                                             const std::filesystem::path& path) {
  SORTIE_TRY(check_template(tmpl));
  SORTIE_ASSIGN_OR_RETURN(text, read_file(path));
  std::vector<JobSpec> out;
  for (const auto& raw : split(text, '\n')) {
    std::string line(trim(raw)); // surrounding spaces (and a CR) are not part of the item
    if (!line.empty())
      out.push_back(job_for_item(tmpl, line, ""));
  }
  return out;
}

Result<std::vector<JobSpec>> jobs_from_range(const JobSpec& tmpl, const ArrayRange& range) {
  SORTIE_TRY(check_template(tmpl));
  if (range.count() > 1'000'000)
    return make_error(ErrorCode::InvalidArgument, "--array: at most 1,000,000 jobs");
  std::vector<JobSpec> out;
  out.reserve(static_cast<std::size_t>(range.count()));
  for (std::int64_t i = range.first; i <= range.last; i += range.step)
    out.push_back(job_for_item(tmpl, std::to_string(i), ""));
  return out;
}

} // namespace sortie
