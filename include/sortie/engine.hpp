// SPDX-License-Identifier: Apache-2.0
// A compiled engine (docs/engines.md, "C++ engines"): a program that registers named handlers
// (bytes in, bytes out) and serves them as one of sortie's engines. Started as an engine job
// (`sortie engine start --count 2 --label GPU -- ./nbody`), it reaches the hub through its agent;
// clients call its handlers by name (Client::call, Python client.call / view.call). What the
// handlers keep between calls is the engine's state.
//
//   int main() {
//     sortie::Engine engine;
//     std::vector<double> state;
//     engine.on("set_state", [&](const std::string& in) -> sortie::Result<std::string> {
//       state = decode(in);
//       return std::string();
//     });
//     return engine.run(); // 0 when told to stop
//   }
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "sortie/result.hpp"

namespace sortie {

class Engine {
public:
  /// A handler's reply, or a sortie::Error that the caller receives (its code and message). A
  /// handler that throws fails the call with the exception's what().
  using Handler = std::function<Result<std::string>(const std::string& payload)>;

  Engine();
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// Registers `handler` under `name` (replacing one of that name). Before serve().
  void on(std::string name, Handler handler);
  /// Connects to its agent (SORTIE_ENGINE_SOCKET and SORTIE_ENGINE_KEY, which an engine job
  /// gets) and runs calls one at a time, in the order they come, until the agent ends the
  /// engine (then ok). Outside an engine job: InvalidArgument saying how engines start.
  Result<void> serve();
  /// serve(), printing its error to stderr: the program's exit status (0 when told to stop).
  int run();

  /// Known once serving: the engine's id, its MPI rank and size (0 and 1 outside MPI), label.
  std::uint64_t id() const;
  std::uint32_t rank() const;
  std::uint32_t size() const;
  const std::string& label() const;

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace sortie
