// SPDX-License-Identifier: Apache-2.0
// A compiled engine (docs/engines.md, "C++ engines"): a small N-body integrator served as
// sortie's engine, the way AMUSE runs Hermite or Bonsai as remote workers. Its state (the
// particles and the model time) lives between calls. Start it as engines:
//
//   sortie engine start --count 2 --label CPU -- sortie-example-nbody --dt 0.001
//
// Handlers (all values little-endian doubles):
//   set_state  n x (mass, x, y, z, vx, vy, vz)  -> ""        (time back to 0)
//   evolve     t_end                             -> the model time reached (leapfrog, step dt)
//   get_state  ""                                -> time, then n x (mass, x, y, z, vx, vy, vz)
//   energy     ""                                -> kinetic + potential energy (G = 1)
#include <sortie/engine.hpp>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kFields = 7; // mass, position, velocity

struct Model {
  std::vector<double> p; // n * kFields
  double time = 0, dt = 0.001, softening = 1e-4;

  std::size_t n() const { return p.size() / kFields; }

  void accelerations(std::vector<double>& a) const {
    a.assign(n() * 3, 0.0);
    for (std::size_t i = 0; i < n(); ++i)
      for (std::size_t j = i + 1; j < n(); ++j) {
        double d[3], r2 = softening * softening;
        for (int k = 0; k < 3; ++k) {
          d[k] = p[j * kFields + 1 + k] - p[i * kFields + 1 + k];
          r2 += d[k] * d[k];
        }
        double inv3 = 1.0 / (r2 * std::sqrt(r2));
        for (int k = 0; k < 3; ++k) {
          a[i * 3 + k] += p[j * kFields] * d[k] * inv3;
          a[j * 3 + k] -= p[i * kFields] * d[k] * inv3;
        }
      }
  }

  void evolve(double t_end) { // kick-drift-kick leapfrog
    std::vector<double> a;
    while (time < t_end) {
      double h = std::min(dt, t_end - time);
      accelerations(a);
      for (std::size_t i = 0; i < n(); ++i)
        for (int k = 0; k < 3; ++k) {
          p[i * kFields + 4 + k] += 0.5 * h * a[i * 3 + k];
          p[i * kFields + 1 + k] += h * p[i * kFields + 4 + k];
        }
      accelerations(a);
      for (std::size_t i = 0; i < n(); ++i)
        for (int k = 0; k < 3; ++k)
          p[i * kFields + 4 + k] += 0.5 * h * a[i * 3 + k];
      time += h;
    }
  }

  double energy() const {
    double e = 0;
    for (std::size_t i = 0; i < n(); ++i) {
      const double* q = &p[i * kFields];
      e += 0.5 * q[0] * (q[4] * q[4] + q[5] * q[5] + q[6] * q[6]);
      for (std::size_t j = i + 1; j < n(); ++j) {
        const double* r = &p[j * kFields];
        double d2 = softening * softening;
        for (int k = 1; k <= 3; ++k)
          d2 += (q[k] - r[k]) * (q[k] - r[k]);
        e -= q[0] * r[0] / std::sqrt(d2);
      }
    }
    return e;
  }
};

std::string bytes_of(const std::vector<double>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(double));
}

sortie::Result<std::vector<double>> doubles_of(const std::string& s, const char* what) {
  if (s.size() % sizeof(double) != 0)
    return sortie::make_error(sortie::ErrorCode::InvalidArgument,
                              std::string(what) + ": expected little-endian doubles, got " +
                                  std::to_string(s.size()) + " bytes");
  std::vector<double> v(s.size() / sizeof(double));
  std::memcpy(v.data(), s.data(), s.size());
  return v;
}

} // namespace

int main(int argc, char** argv) {
  Model model;
  for (int i = 1; i + 1 < argc; i += 2)
    if (std::string(argv[i]) == "--dt")
      model.dt = std::stod(argv[i + 1]);

  sortie::Engine engine;
  engine.on("set_state", [&](const std::string& in) -> sortie::Result<std::string> {
    SORTIE_ASSIGN_OR_RETURN(v, doubles_of(in, "set_state"));
    if (v.size() % kFields != 0)
      return sortie::make_error(sortie::ErrorCode::InvalidArgument,
                                "set_state: 7 doubles per particle (mass, x, y, z, vx, vy, vz)");
    model.p = std::move(v);
    model.time = 0;
    return std::string();
  });
  engine.on("evolve", [&](const std::string& in) -> sortie::Result<std::string> {
    SORTIE_ASSIGN_OR_RETURN(v, doubles_of(in, "evolve"));
    if (v.size() != 1 || !(v[0] >= model.time))
      return sortie::make_error(sortie::ErrorCode::InvalidArgument,
                                "evolve: one double, the end time, not before the model time " +
                                    std::to_string(model.time));
    if (model.n() == 0)
      return sortie::make_error(sortie::ErrorCode::FailedPrecondition,
                                "evolve: no particles (call set_state first)");
    model.evolve(v[0]);
    return bytes_of({model.time});
  });
  engine.on("get_state", [&](const std::string&) -> sortie::Result<std::string> {
    std::vector<double> out{model.time};
    out.insert(out.end(), model.p.begin(), model.p.end());
    return bytes_of(out);
  });
  engine.on("energy", [&](const std::string&) -> sortie::Result<std::string> {
    return bytes_of({model.energy()});
  });
  return engine.run();
}
