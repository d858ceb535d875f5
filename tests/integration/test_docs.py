# SPDX-License-Identifier: Apache-2.0
"""The examples in docs/ run as written."""
import re
import subprocess
from pathlib import Path

from conftest import ROOT


def toml_blocks(doc):
    return re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)


def test_the_job_file_example_in_docs_jobs_md(sortie, tmp_path):
    [example] = [b for b in toml_blocks("jobs.md") if "[[job]]" in b]
    path = tmp_path / "job.toml"
    path.write_text(example)
    sortie.start()
    out = sortie.run("submit", "--file", path).stdout.strip()
    jobs = sortie.jobs()
    # 100 "small" array jobs and one "big", one group named "sims", defaults from the top level.
    assert len(jobs) == 101, out
    assert {j["group"] for j in jobs} == {jobs[0]["group"]}
    big = [j for j in jobs if j["name"] == "big"]
    assert len(big) == 1
    shown = sortie.job(big[0]["id"])
    assert shown["spec"]["argv"] == ["python3", "sim.py", "--seed", "7"], shown["spec"]
    assert sorted(j["array_index"] for j in jobs if j["array_index"] is not None) == \
        list(range(1, 101))
    sortie.run("job", "cancel", "--all")


def test_the_cpp_example_runs_its_job_where_and_as_it_was_called(sortie, tmp_path):
    """examples/cpp/submit_and_wait.cpp is the README's C++ example, whole. Its job runs in the
    caller's directory (JobSpec::cwd's default) with the caller's environment (export_env)."""
    readme = (ROOT / "README.md").read_text()
    [snippet] = re.findall(r"```cpp\n(.*?)```", readme, re.S)
    source = (ROOT / "examples" / "cpp" / "submit_and_wait.cpp").read_text()
    for call in ("sortie::Client::connect()", "client->submit(spec)",
                 "client->wait(sortie::JobSelector::range(submitted->first_id))",
                 "client->output(submitted->first_id, sortie::OutputStream::Stdout"):
        assert call in snippet and call in source, call
    example = Path(sortie.bin).parent / "sortie-example-submit"
    sortie.start()
    sortie.add_pilot("--slots", "1")
    here = tmp_path / "the caller's dir"
    here.mkdir()
    p = subprocess.run([str(example), "sh", "-c", 'pwd; echo "$SX_FROM_CALLER"'],
                       env=dict(sortie.env, SX_FROM_CALLER="yes"), cwd=here,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{here}\nyes\n", p.stdout


def test_the_python_example_runs_as_the_readme_shows_it(sortie, tmp_path):
    """examples/engines_pi.py is the README's Python example and the demo's second part."""
    import pytest
    from test_python import BUILD, PYTHON
    if "SORTIE_SANITIZE:BOOL=ON" in (BUILD / "CMakeCache.txt").read_text(errors="replace"):
        pytest.skip("the sanitizer build has no Python module")
    readme = (ROOT / "README.md").read_text()
    [snippet] = re.findall(r"```python\n(.*?)```", readme, re.S)
    source = (ROOT / "examples" / "engines_pi.py").read_text()
    for line in snippet.strip().splitlines():
        assert line in source, line
    # Without SORTIE_EXE: the package finds the sortie of its own tree to start the hub with.
    env = dict(sortie.env, PYTHONPATH=str(BUILD / "python"))
    env.pop("SORTIE_EXE", None)
    p = subprocess.run([PYTHON, str(ROOT / "examples" / "engines_pi.py")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    estimate = float(p.stdout.split("pi is about ")[1].split()[0])
    assert abs(estimate - 3.1416) < 0.02 and "4000000 samples in 40 tasks on 2 engines" in p.stdout


def test_the_quick_start_of_docs_python_md_runs_as_written(sortie, tmp_path):
    """The first Python example of docs/python.md, whole, prints what its comment says."""
    import pytest
    from test_python import BUILD, PYTHON
    if "SORTIE_SANITIZE:BOOL=ON" in (BUILD / "CMakeCache.txt").read_text(errors="replace"):
        pytest.skip("the sanitizer build has no Python module")
    [first, *_] = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "python.md").read_text(), re.S)
    script = tmp_path / "quick_start.py"
    script.write_text(first)
    p = subprocess.run([PYTHON, str(script)], env=dict(sortie.env, PYTHONPATH=str(BUILD / "python")),
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str([x ** 2 for x in range(10)]), p.stdout
