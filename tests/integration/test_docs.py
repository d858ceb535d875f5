# SPDX-License-Identifier: Apache-2.0
"""The examples in docs/ run as written."""
import re

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
