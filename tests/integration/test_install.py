# SPDX-License-Identifier: Apache-2.0
"""`cmake --install` gives a tree that other programs build against (README, "The C++ library"):
find_package(sortie) + target_link_libraries(app sortie::client), and the program runs against a
real hub, started from the installed sortie by the library (connect-or-start)."""
import subprocess
from pathlib import Path

import pytest

CMAKELISTS = """
cmake_minimum_required(VERSION 3.25)
project(uses_sortie LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(sortie 0.1 REQUIRED)
add_executable(app main.cpp)
target_link_libraries(app PRIVATE sortie::client)
target_compile_definitions(app PRIVATE SORTIE_EXE="${SORTIE_EXECUTABLE}")
"""

MAIN = r"""
#include <cstdio>
#include <sortie/client.hpp>

int main() {
  sortie::ConnectOptions options;
  options.start_if_needed = true;  // connect-or-start
  options.sortie_exe = SORTIE_EXE; // the installed sortie (find_package says where)
  auto client = sortie::Client::connect(options);
  if (!client) { std::fprintf(stderr, "%s\n", client.error().to_string().c_str()); return 1; }
  sortie::PilotSpec pilot;
  pilot.slots_per_node = 1;
  if (auto p = client->add_pilot(pilot); !p) return 2;
  sortie::JobSpec spec;
  spec.argv = {"echo", "built against the installed tree"};
  auto submitted = client->submit(spec);
  if (!submitted) return 3;
  auto done = client->wait(sortie::JobSelector::one(submitted->first_id));
  if (!done || !done->all_succeeded()) return 4;
  std::string out;
  auto r = client->output(submitted->first_id, sortie::OutputStream::Stdout, false,
                          [&](std::string_view d) { out += d; return true; });
  if (!r) return 5;
  std::fputs(out.c_str(), stdout);
  return 0;
}
"""


def run(cmd, **kw):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}:\n{p.stdout}\n{p.stderr}"
    return p


def test_a_program_builds_against_the_installed_tree_and_runs(sortie, tmp_path):
    build = Path(sortie.bin).parents[1]
    prefix = tmp_path / "prefix"
    run(["cmake", "--install", build, "--prefix", prefix])
    for f in ("bin/sortie", "include/sortie/client.hpp", "include/sortie/job_files.hpp",
              "lib/cmake/sortie/sortieConfig.cmake"):
        assert (prefix / f).exists(), f
    assert list((prefix / "lib").glob("libsortie_client.so*")), "no shared library installed"

    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(CMAKELISTS)
    (app / "main.cpp").write_text(MAIN)
    configure = ["cmake", "-S", app, "-B", app / "build", "-G", "Ninja",
                 f"-DCMAKE_PREFIX_PATH={prefix}"]
    if "SORTIE_SANITIZE:BOOL=ON" in (build / "CMakeCache.txt").read_text():
        # A library built with AddressSanitizer needs its runtime in the program too.
        flags = "-fsanitize=address,undefined"
        configure += [f"-DCMAKE_CXX_FLAGS={flags}", f"-DCMAKE_EXE_LINKER_FLAGS={flags}"]
    run(configure)
    run(["cmake", "--build", app / "build"])

    # No hub runs for the profile yet: the program starts one (from the installed sortie).
    assert sortie.run("hub", "status", check=False).returncode == 3
    p = run([app / "build" / "app"], env=sortie.env)
    assert p.stdout == "built against the installed tree\n"
    status = sortie.json("hub", "status")
    assert status["pid"] == sortie.hub_pid()
    exe = Path(f"/proc/{sortie.hub_pid()}/exe").resolve()
    assert exe == (prefix / "bin" / "sortie").resolve()


def test_the_hub_allocates_with_jemalloc(sortie):
    """docs/architecture.md §8: the sortie binary links jemalloc (scripts/setup.sh installs it),
    with the settings of apps/jemalloc_conf.cpp; a build that lost it would run on glibc's malloc
    without a word."""
    cache = (Path(sortie.bin).parents[1] / "CMakeCache.txt").read_text(errors="replace")
    if "SORTIE_SANITIZE:BOOL=ON" in cache:
        pytest.skip("the sanitizer build keeps the sanitizers' allocator (CMakeLists.txt)")
    sortie.start()
    maps = Path(f"/proc/{sortie.hub_pid()}/maps").read_text()
    assert "libjemalloc.so" in maps, "the hub does not allocate with jemalloc"
    p = subprocess.run([sortie.bin, "--version"], env={**sortie.env, "MALLOC_CONF": "stats_print:true"},
                       capture_output=True, text=True, timeout=30)
    assert "opt.dirty_decay_ms: 1000" in p.stderr + p.stdout
