// SPDX-License-Identifier: Apache-2.0
// sortie::Engine: a compiled engine's handler table and its serving loop over an EngineLink.
#include "sortie/engine.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <unordered_map>

#include <fmt/format.h>

#include "sortie/tasks.hpp"

namespace sortie {

struct Engine::Impl {
  std::unordered_map<std::string, Handler> handlers;
  std::unique_ptr<EngineLink> link;
  std::uint32_t rank = 0, size = 1;
  std::string no_label;

  static std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  TaskResult run(const EngineLink::Task& task) {
    TaskResult r;
    r.id = task.id;
    r.start_ms = now_ms();
    r.state = TaskOutcome::Failed;
    auto it = handlers.find(task.handler);
    if (it == handlers.end()) {
      r.error_type = engine_error_type(ErrorCode::NotFound);
      std::string known;
      for (const auto& [name, h] : handlers)
        known += (known.empty() ? "" : ", ") + name;
      r.error_message = task.handler.empty()
                            ? fmt::format("this is a compiled engine: call one of its handlers "
                                          "({}) by name, not a Python function",
                                          known.empty() ? "none" : known)
                            : fmt::format("this engine has no handler '{}' (it has: {})",
                                          task.handler, known.empty() ? "none" : known);
    } else {
      try {
        auto out = it->second(task.payload);
        if (out.ok()) {
          r.state = TaskOutcome::Done;
          r.value = std::move(*out);
        } else {
          r.error_type = engine_error_type(out.error().code);
          r.error_message = out.error().to_string();
        }
      } catch (const std::exception& e) {
        r.error_type = "exception";
        r.error_message = e.what();
      } catch (...) {
        r.error_type = "exception";
        r.error_message = "an exception that is not a std::exception";
      }
    }
    r.end_ms = now_ms();
    return r;
  }
};

Engine::Engine() : impl_(std::make_unique<Impl>()) {}
Engine::~Engine() = default;

void Engine::on(std::string name, Handler handler) {
  impl_->handlers[std::move(name)] = std::move(handler);
}

std::uint64_t Engine::id() const { return impl_->link ? impl_->link->id() : 0; }
std::uint32_t Engine::rank() const { return impl_->rank; }
std::uint32_t Engine::size() const { return impl_->size; }
const std::string& Engine::label() const {
  return impl_->link ? impl_->link->label() : impl_->no_label;
}

Result<void> Engine::serve() {
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "");
  };
  std::string socket = env("SORTIE_ENGINE_SOCKET"), key = env("SORTIE_ENGINE_KEY");
  if (socket.empty())
    return make_error(ErrorCode::InvalidArgument,
                      "this program is a sortie engine: start it as one (`sortie engine start "
                      "--count N -- PROGRAM ARGS`, or start_engines(program=...) in Python), "
                      "which gives it SORTIE_ENGINE_SOCKET and SORTIE_ENGINE_KEY");
  EngineLink::DirectSocket direct{env("SORTIE_ENGINE_DIRECT_SOCKET"),
                                  env("SORTIE_ENGINE_DIRECT_KEY")};
  ::unsetenv("SORTIE_ENGINE_KEY"); // not for the processes it starts
  ::unsetenv("SORTIE_ENGINE_DIRECT_KEY");
  auto number = [&](const char* name, std::uint32_t fallback) {
    std::string v = env(name);
    return v.empty() ? fallback : static_cast<std::uint32_t>(std::strtoul(v.c_str(), nullptr, 10));
  };
  impl_->rank = number("OMPI_COMM_WORLD_RANK", 0);
  impl_->size = number("OMPI_COMM_WORLD_SIZE", 1);
  SORTIE_ASSIGN_OR_RETURN(link, EngineLink::connect(socket, key, impl_->rank, impl_->size, "cpp",
                                                          30'000, direct));
  impl_->link = std::move(link);
  while (true) {
    auto tasks = impl_->link->next(1000);
    if (!tasks.ok()) {
      if (tasks.error().code == ErrorCode::Unavailable)
        return ok_result(); // the agent ended the engine (or is gone)
      return tasks.error();
    }
    std::vector<TaskResult> results;
    results.reserve(tasks->size());
    for (const auto& t : *tasks)
      results.push_back(impl_->run(t));
    if (!results.empty())
      SORTIE_TRY(impl_->link->send(std::move(results)));
  }
}

int Engine::run() {
  auto r = serve();
  if (r.ok())
    return 0;
  std::fprintf(stderr, "sortie engine: %s\n", r.error().to_string().c_str());
  return 1;
}

} // namespace sortie
