// SPDX-License-Identifier: Apache-2.0
// sortie._sortie: the Python package's compiled half (docs/python.md), a thin pybind11 layer over
// the C++ client library: Hub (sortie::Client plus a Session for engine and task queries),
// Session (task calls and pushed results) and EngineLink (the engine process's side). Every
// blocking call releases the GIL. Errors are raised as sortie._sortie.Error with a `code`.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>

#include "sortie/client.hpp"
#include "sortie/job_files.hpp"
#include "sortie/tasks.hpp"

namespace py = pybind11;
using namespace sortie;

namespace {

py::object g_error; // sortie._sortie.Error

/// The error's code as Python sees it: "invalid_argument", "not_found", ...
std::string code_name(ErrorCode c) {
  std::string name = error_code_name(c);
  std::replace(name.begin(), name.end(), ' ', '_');
  return name;
}

[[noreturn]] void raise(const Error& e) {
  py::object exc = g_error(e.to_string());
  exc.attr("code") = code_name(e.code);
  PyErr_SetObject(g_error.ptr(), exc.ptr());
  throw py::error_already_set();
}

void check(const Result<void>& r) {
  if (!r.ok())
    raise(r.error());
}

template <typename T>
T take(Result<T> r) {
  if constexpr (std::is_void_v<T>) {
    check(r);
  } else {
    if (!r.ok())
      raise(r.error());
    return std::move(*r);
  }
}

ConnectOptions options(const std::string& profile, const std::string& connection_file, bool start,
                       double timeout) {
  ConnectOptions o;
  o.profile = profile;
  o.hub_file = connection_file;
  o.start_if_needed = start && connection_file.empty();
  o.timeout_ms = static_cast<std::int64_t>(timeout * 1000);
  o.client_name = "python";
  return o;
}

std::int64_t ms(const std::optional<double>& seconds) {
  return seconds ? static_cast<std::int64_t>(*seconds * 1000) : -1;
}

template <typename T>
T get(const py::dict& d, const char* key, T fallback) {
  return d.contains(key) && !d[key].is_none() ? d[key].cast<T>() : fallback;
}

JobSpec job_spec(const py::dict& d) {
  JobSpec s;
  s.argv = get<std::vector<std::string>>(d, "argv", {});
  s.label = get<std::string>(d, "label", "");
  s.name = get<std::string>(d, "name", "");
  s.slots = get<std::uint32_t>(d, "slots", 1);
  s.memory_bytes = get<std::uint64_t>(d, "memory", 0);
  s.gpus = get<std::uint32_t>(d, "gpus", 0);
  for (const auto& [k, v] : get<std::map<std::string, std::string>>(d, "env", {}))
    s.env.emplace_back(k, v);
  s.cwd = get<std::string>(d, "cwd", "");
  if (d.contains("retries") && !d["retries"].is_none())
    s.retries = d["retries"].cast<std::uint32_t>();
  s.queue_timeout_ms = get<std::int64_t>(d, "queue_timeout_ms", 0);
  s.run_timeout_ms = get<std::int64_t>(d, "run_timeout_ms", 0);
  s.priority = get<std::int32_t>(d, "priority", 0);
  s.hosts = get<std::vector<std::string>>(d, "hosts", {});
  s.max_per_node = get<std::uint32_t>(d, "max_per_node", 0);
  s.kind = get<std::string>(d, "kind", "");
  s.restart = get<bool>(d, "restart", false);
  s.mpi_ranks = get<std::uint32_t>(d, "mpi_ranks", 0);
  s.ranks_per_node = get<std::uint32_t>(d, "ranks_per_node", 0);
  return s;
}

py::object opt(bool has, std::int64_t v) { return has ? py::object(py::int_(v)) : py::none(); }

py::dict job_dict(const JobInfo& j) {
  py::dict d;
  d["id"] = j.id.value;
  d["state"] = job_state_name(j.state);
  d["exit_code"] = opt(j.exit_code.has_value(), j.exit_code.value_or(0));
  d["signal"] = opt(j.signal.has_value(), j.signal.value_or(0));
  d["reason"] = j.reason;
  d["node"] = j.node;
  d["attempt"] = j.attempt;
  d["submit_ms"] = j.submit_ms;
  d["start_ms"] = j.start_ms;
  d["end_ms"] = j.end_ms;
  d["kind"] = j.spec && !j.spec->kind.empty() ? j.spec->kind : std::string("command");
  d["name"] = j.name;
  return d;
}

py::dict pilot_dict(const PilotInfo& p) {
  py::dict d;
  d["id"] = p.id.value;
  d["resource"] = p.spec.resource;
  d["state"] = p.state;
  d["nodes"] = p.spec.nodes;
  d["nodes_up"] = p.nodes_up;
  d["slots_used"] = p.slots_used;
  d["slots_total"] = p.slots_total;
  d["label"] = p.spec.label;
  d["reason"] = p.reason;
  d["end_ms"] = p.end_ms;
  return d;
}

py::dict resource_dict(const ResourceSpec& r) {
  py::dict d;
  d["name"] = r.name;
  d["type"] = r.type;
  d["location"] = r.location;
  d["install_dir"] = r.install_dir;
  d["tmp_dir"] = r.tmp_dir;
  d["gateway"] = r.gateway;
  d["ssh_options"] = r.ssh_options;
  d["machinefile"] = r.machinefile;
  return d;
}

py::dict engine_dict(const EngineInfo& e) {
  py::dict d;
  d["id"] = e.id;
  d["job"] = e.job.value;
  d["node"] = e.node;
  d["label"] = e.label;
  d["state"] = e.busy ? "busy" : "idle";
  d["rank"] = e.rank;
  d["size"] = e.size;
  d["pid"] = e.pid;
  d["tasks_done"] = e.tasks_done;
  d["running"] = e.running;
  d["started_ms"] = e.started_ms;
  d["kind"] = e.kind;
  d["link"] = e.link;
  return d;
}

py::dict task_dict(const TaskInfo& t) {
  py::dict d;
  d["id"] = t.id;
  d["state"] = t.state;
  d["engine"] = t.engine;
  d["label"] = t.label;
  d["handler"] = t.handler;
  d["submit_ms"] = t.submit_ms;
  d["start_ms"] = t.start_ms;
  d["end_ms"] = t.end_ms;
  d["error_type"] = t.error_type;
  d["error_message"] = t.error_message;
  d["attempts"] = t.attempts;
  return d;
}

py::dict result_dict(const TaskResult& r) {
  py::dict d;
  d["id"] = r.id;
  d["state"] = task_outcome_name(r.state);
  d["value"] = py::bytes(r.value);
  d["error_type"] = r.error_type;
  d["error_message"] = r.error_message;
  d["traceback"] = r.traceback;
  d["stdout"] = py::bytes(r.output);
  d["engine"] = r.engine;
  return d;
}

/// One blocking connection (sortie::Client) and, made when first needed, a Session for the
/// engine and task queries.
class Hub {
public:
  Hub(const std::string& profile, const std::string& connection_file, bool start, double timeout)
      : options_(options(profile, connection_file, start, timeout)) {
    py::gil_scoped_release release;
    auto c = Client::connect(options_);
    if (!c.ok()) {
      py::gil_scoped_acquire again;
      raise(c.error());
    }
    client_.emplace(std::move(*c));
  }

  template <typename Fn>
  auto call(Fn fn) {
    Client& c = client();
    std::optional<decltype(fn(c))> out;
    {
      py::gil_scoped_release release;
      out.emplace(fn(c));
    }
    return take(std::move(*out));
  }

  Session& session() {
    if (!session_) {
      Result<std::unique_ptr<Session>> s = make_error(ErrorCode::Internal, "");
      {
        py::gil_scoped_release release;
        auto o = options_;
        o.start_if_needed = false;
        s = Session::connect(o);
      }
      session_ = take(std::move(s));
    }
    return *session_;
  }

  Client& client() {
    if (!client_)
      raise(make_error(ErrorCode::Unavailable, "the connection was closed"));
    return *client_;
  }

  void close() {
    py::gil_scoped_release release;
    if (session_)
      session_->close();
    session_.reset();
    client_.reset();
  }

private:
  ConnectOptions options_;
  std::optional<Client> client_;
  std::unique_ptr<Session> session_;
};

template <typename T, typename Fn>
T unlocked(Fn fn) {
  std::optional<Result<T>> out;
  {
    py::gil_scoped_release release;
    out.emplace(fn());
  }
  return take(std::move(*out));
}

void unlocked_void(const std::function<Result<void>()>& fn) {
  std::optional<Result<void>> out;
  {
    py::gil_scoped_release release;
    out.emplace(fn());
  }
  check(*out);
}

} // namespace

PYBIND11_MODULE(_sortie, m) {
  m.doc() = "sortie's compiled client library (use the `sortie` package)";
  g_error = py::reinterpret_borrow<py::object>(
      PyErr_NewExceptionWithDoc("sortie._sortie.Error", "An error reported by sortie; .code says "
                                "which kind", nullptr, nullptr));
  g_error.attr("code") = "internal";
  m.attr("Error") = g_error;

  py::class_<Hub>(m, "Hub")
      .def(py::init<const std::string&, const std::string&, bool, double>(),
           py::arg("profile") = "", py::arg("connection_file") = "", py::arg("start") = true,
           py::arg("timeout") = 10.0)
      .def("submit_job",
           [](Hub& h, const py::dict& spec) {
             JobSpec s = job_spec(spec);
             return h.call([&](Client& c) { return c.submit(s); }).first_id.value;
           })
      .def("submit_map",
           [](Hub& h, const py::dict& spec, const std::string& mapfile, const std::string& group) {
             JobSpec tmpl = job_spec(spec);
             auto specs = [&] {
               py::gil_scoped_release release;
               return jobs_from_map_file(tmpl, mapfile);
             }();
             if (!specs.ok())
               raise(specs.error());
             auto s = h.call([&](Client& c) { return c.submit_batch(*specs, group); });
             return py::make_tuple(s.first_id.value, s.count);
           })
      .def("job", [](Hub& h, std::uint64_t id) {
        return job_dict(h.call([&](Client& c) { return c.job(JobId(id)); }));
      })
      .def("wait_jobs",
           [](Hub& h, const std::vector<std::uint64_t>& ids, std::optional<double> timeout) {
             JobSelector sel;
             for (auto id : ids)
               sel.ranges.push_back({JobId(id), JobId(id)});
             auto p = h.call([&](Client& c) { return c.wait(sel, {}, ms(timeout)); });
             py::dict d;
             d["total"] = p.total;
             d["finished"] = p.finished;
             d["succeeded"] = p.succeeded;
             d["failed"] = p.failed;
             d["cancelled"] = p.cancelled;
             d["done"] = p.done;
             return d;
           },
           py::arg("ids"), py::arg("timeout") = py::none())
      .def("job_output",
           [](Hub& h, std::uint64_t id, const std::string& stream) {
             std::string out;
             auto which = stream == "stderr" ? OutputStream::Stderr : OutputStream::Stdout;
             h.call([&](Client& c) {
               return c.output(JobId(id), which, false, [&](std::string_view d) {
                 out.append(d);
                 return true;
               });
             });
             return py::bytes(out);
           },
           py::arg("id"), py::arg("stream") = "stdout")
      .def("cancel_jobs",
           [](Hub& h, const std::vector<std::uint64_t>& ids) {
             JobSelector sel;
             for (auto id : ids)
               sel.ranges.push_back({JobId(id), JobId(id)});
             return h.call([&](Client& c) { return c.cancel(sel, "cancelled from Python"); })
                 .cancelled;
           })
      .def("add_pilot",
           [](Hub& h, const py::dict& d) {
             PilotSpec p;
             p.resource = get<std::string>(d, "resource", "local");
             p.nodes = get<std::uint32_t>(d, "nodes", 0);
             p.slots_per_node = get<std::uint32_t>(d, "slots_per_node", 0);
             p.label = get<std::string>(d, "label", "");
             p.walltime_ms = get<std::int64_t>(d, "walltime_ms", 0);
             p.gpus_per_node = get<std::uint32_t>(d, "gpus_per_node", 0);
             p.memory_per_node = get<std::uint64_t>(d, "memory_per_node", 0);
             p.queue = get<std::string>(d, "queue", "");
             return h.call([&](Client& c) { return c.add_pilot(p); }).value;
           })
      .def("pilots",
           [](Hub& h) {
             py::list out;
             for (const auto& p : h.call([](Client& c) { return c.pilots(); }))
               out.append(pilot_dict(p));
             return out;
           })
      .def("cancel_pilot",
           [](Hub& h, std::uint64_t id) {
             Client& c = h.client();
             unlocked_void([&] { return c.cancel_pilot(PilotId(id)); });
           })
      .def("add_resource",
           [](Hub& h, const py::dict& d, bool replace) {
             ResourceSpec r;
             r.name = get<std::string>(d, "name", "");
             r.type = get<std::string>(d, "type", "");
             r.location = get<std::string>(d, "location", "");
             r.install_dir = get<std::string>(d, "install_dir", "");
             r.tmp_dir = get<std::string>(d, "tmp_dir", "");
             r.gateway = get<std::string>(d, "gateway", "");
             r.ssh_options = get<std::vector<std::string>>(d, "ssh_options", {});
             r.machinefile = get<std::string>(d, "machinefile", "");
             Client& c = h.client();
             unlocked_void([&] { return c.add_resource(r, replace); });
           },
           py::arg("spec"), py::arg("replace") = false)
      .def("resources",
           [](Hub& h) {
             py::list out;
             for (const auto& r : h.call([](Client& c) { return c.resources(); }))
               out.append(resource_dict(r));
             return out;
           })
      .def("remove_resource",
           [](Hub& h, const std::string& name) {
             Client& c = h.client();
             unlocked_void([&] { return c.remove_resource(name); });
           })
      .def("status",
           [](Hub& h) {
             auto s = h.call([](Client& c) { return c.hub_status(); });
             py::dict d;
             d["version"] = s.version;
             d["profile"] = s.profile;
             d["pid"] = s.pid;
             d["address"] = s.address;
             d["agents"] = s.agents;
             d["pilots"] = s.pilots;
             d["slots_total"] = s.slots_total;
             d["slots_used"] = s.slots_used;
             d["store_commits"] = s.store_commits;
             return d;
           })
      .def("engines",
           [](Hub& h, const std::string& label) {
             Session& s = h.session();
             py::list out;
             for (const auto& e : unlocked<std::vector<EngineInfo>>([&] { return s.engines(label); }))
               out.append(engine_dict(e));
             return out;
           },
           py::arg("label") = "")
      .def("tasks",
           [](Hub& h, const std::vector<std::uint64_t>& ids, std::uint64_t limit) {
             Session& s = h.session();
             py::list out;
             for (const auto& t : unlocked<std::vector<TaskInfo>>([&] { return s.tasks(ids, limit); }))
               out.append(task_dict(t));
             return out;
           },
           py::arg("ids") = std::vector<std::uint64_t>{}, py::arg("limit") = 0)
      .def("forget_tasks",
           [](Hub& h, const std::vector<std::uint64_t>& ids) {
             Session& s = h.session();
             return unlocked<TaskForgetSummary>([&] { return s.forget(ids); }).forgotten;
           })
      .def("close", &Hub::close);

  py::class_<Session, std::unique_ptr<Session>>(m, "Session")
      .def(py::init([](const std::string& profile, const std::string& connection_file, bool start,
                       double timeout) {
             auto o = options(profile, connection_file, start, timeout);
             return unlocked<std::unique_ptr<Session>>([&] { return Session::connect(o); });
           }),
           py::arg("profile") = "", py::arg("connection_file") = "", py::arg("start") = true,
           py::arg("timeout") = 10.0)
      .def("submit_tasks",
           [](Session& s, const py::list& calls) {
             std::vector<TaskCall> list;
             list.reserve(calls.size());
             for (const auto& item : calls) {
               auto t = item.cast<py::tuple>();
               if (t.size() != 7)
                 throw py::value_error("a call is (handler, payload, engine, label, retries, "
                                       "timeout_ms, priority)");
               TaskCall c;
               c.handler = t[0].cast<std::string>();
               c.payload = t[1].cast<std::string>();
               c.engine = t[2].cast<std::uint64_t>();
               c.label = t[3].cast<std::string>();
               c.retries = t[4].cast<std::uint32_t>();
               c.timeout_ms = t[5].cast<std::int64_t>();
               c.priority = t[6].cast<std::int32_t>();
               list.push_back(std::move(c));
             }
             // The results that came with the reply (short tasks) are this thread's to give:
             // the results thread is not woken for them.
             std::vector<TaskResult> arrived;
             auto ids = unlocked<std::vector<std::uint64_t>>(
                 [&] { return s.submit(std::move(list), true, &arrived); });
             py::list results;
             for (const auto& r : arrived)
               results.append(result_dict(r));
             return py::make_tuple(ids, results);
           })
      .def("watch",
           [](Session& s, const std::vector<std::uint64_t>& ids) {
             unlocked_void([&] { return s.watch(ids); });
           })
      .def("follow",
           [](Session& s, const std::vector<std::uint64_t>& ids) {
             unlocked_void([&] { return s.follow(ids); });
           })
      .def("next_events",
           [](Session& s, double timeout) {
             auto events = unlocked<TaskEvents>(
                 [&] { return s.next_events(static_cast<std::int64_t>(timeout * 1000)); });
             py::list results, output;
             for (const auto& r : events.results)
               results.append(result_dict(r));
             for (const auto& o : events.output)
               output.append(py::make_tuple(o.id, o.offset, py::bytes(o.data)));
             return py::make_tuple(results, output);
           },
           py::arg("timeout"))
      .def("next_results",
           [](Session& s, double timeout) {
             auto results = unlocked<std::vector<TaskResult>>(
                 [&] { return s.next_results(static_cast<std::int64_t>(timeout * 1000)); });
             py::list out;
             for (const auto& r : results)
               out.append(result_dict(r));
             return out;
           },
           py::arg("timeout"))
      .def("close", [](Session& s) {
        py::gil_scoped_release release;
        s.close();
      });

  py::class_<EngineLink, std::unique_ptr<EngineLink>>(m, "EngineLink")
      .def(py::init([](const std::string& socket, const std::string& key, std::uint64_t job,
                       std::uint32_t attempt, std::uint32_t rank, std::uint32_t size,
                       const std::string& direct_socket, const std::string& direct_key) {
             (void)job; // the agent tells the hub which job this is
             (void)attempt;
             return unlocked<std::unique_ptr<EngineLink>>([&] {
               return EngineLink::connect(socket, key, rank, size, "python", 30'000,
                                          {direct_socket, direct_key});
             });
           }),
           py::arg("socket_path"), py::arg("key"), py::arg("job") = 0, py::arg("attempt") = 0,
           py::arg("rank") = 0, py::arg("size") = 1, py::arg("direct_socket") = "",
           py::arg("direct_key") = "")
      .def_property_readonly("engine_id", &EngineLink::id)
      .def_property_readonly("label", &EngineLink::label)
      .def("next_tasks",
           [](EngineLink& e, double timeout) {
             std::optional<Result<std::vector<EngineLink::Task>>> got;
             {
               py::gil_scoped_release release;
               got.emplace(e.next(static_cast<std::int64_t>(timeout * 1000)));
             }
             if (!got->ok()) {
               if (got->error().code == ErrorCode::Unavailable)
                 throw py::error_already_set(
                     (PyErr_SetString(PyExc_EOFError, got->error().to_string().c_str()),
                      py::error_already_set()));
               raise(got->error());
             }
             py::list out;
             for (auto& t : **got)
               out.append(py::make_tuple(t.id, t.handler, py::bytes(t.payload), t.timeout_ms));
             return out;
           })
      .def("send_results",
           [](EngineLink& e, const py::list& results) {
             std::vector<TaskResult> list;
             for (const auto& item : results) {
               auto t = item.cast<py::tuple>();
               TaskResult r;
               r.id = t[0].cast<std::uint64_t>();
               r.state = t[1].cast<bool>() ? TaskOutcome::Done : TaskOutcome::Failed;
               r.value = t[2].cast<std::string>();
               r.error_type = t[3].cast<std::string>();
               r.error_message = t[4].cast<std::string>();
               r.traceback = t[5].cast<std::string>();
               r.output = t[6].cast<std::string>();
               list.push_back(std::move(r));
             }
             unlocked_void([&] { return e.send(std::move(list)); });
           })
      .def("send_output",
           [](EngineLink& e, std::uint64_t task, std::uint64_t offset, const py::bytes& data) {
             std::string bytes = data;
             unlocked_void([&] { return e.send_output(task, offset, bytes); });
           })
      .def("close", [](EngineLink&) {});
}
