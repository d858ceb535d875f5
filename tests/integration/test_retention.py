# SPDX-License-Identifier: Apache-2.0
"""Old jobs do not pile up: job_retention and `job forget` remove ended jobs (rows and output),
`job list` shows a bounded recent view, and very large submissions must be confirmed."""
import sqlite3

from conftest import FAST, wait_for


def store_rows(sortie, table):
    """Rows of a table of the store (the hub holds it exclusively: stop it first)."""
    db = sqlite3.connect(f"file:{sortie.profile / 'store.db'}?mode=ro", uri=True)
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def outputs(sortie):
    return sorted(p.name for p in (sortie.profile / "output").iterdir())


def test_ended_jobs_are_forgotten_after_job_retention_and_ids_are_never_reused(sortie):
    sortie.configure(**FAST, job_retention="2s")
    sortie.start()
    sortie.add_pilot("--slots", "2")
    first, last = sortie.submit("echo", "hi", opts=("--array", "1-5"))
    waiting = sortie.submit("true", opts=("--label", "nowhere"))  # never runs: never forgotten
    sortie.run("job", "wait", f"{first}-{last}")
    # (The store writes output files with its next commit; `job logs` would have them already.)
    wait_for(lambda: len(outputs(sortie)) == 5, 10, "the output files")
    wait_for(lambda: [j["id"] for j in sortie.jobs()] == [waiting], 20,
             "the ended jobs to be forgotten")
    wait_for(lambda: outputs(sortie) == [], 10, "their output files to go")
    p = sortie.run("job", "show", first, check=False)
    assert p.returncode != 0 and "forgotten" in p.stderr
    sortie.run("hub", "stop")
    assert store_rows(sortie, "jobs") == 1
    sortie.start()
    assert sortie.submit("true") == waiting + 1  # the forgotten ids are not handed out again


def test_job_forget_removes_ended_jobs_and_keeps_the_others(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "2")
    done = sortie.submit("echo", "done")
    gate = tmp_path / "gate"
    running = sortie.submit("sh", "-c", 'echo started; while [ ! -e "$0" ]; do sleep 0.05; done',
                            str(gate))
    sortie.run("job", "wait", done)
    wait_for(lambda: outputs(sortie) == sorted([str(done), str(running)]), 10,
             "both jobs' output")
    p = sortie.run("job", "forget", "--all")
    assert "1 job forgotten, 1 job not ended kept" in p.stdout, p.stdout
    assert [j["id"] for j in sortie.jobs()] == [running]
    assert outputs(sortie) == [str(running)]
    gate.write_text("")
    sortie.run("job", "wait", running)
    sortie.run("job", "forget", running)
    assert sortie.jobs() == []
    sortie.run("hub", "stop")
    assert store_rows(sortie, "jobs") == store_rows(sortie, "specs") == 0
    assert store_rows(sortie, "groups") == 0


def test_a_dependency_forgotten_after_it_succeeded_still_counts_after_a_restart(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "2")
    a = sortie.submit("true")
    sortie.run("job", "wait", a)
    gate = tmp_path / "gate"
    c = sortie.submit("sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', str(gate))
    b = sortie.submit("echo", "b ran", opts=("--after", f"{a},{c}"))
    sortie.run("job", "forget", a)
    sortie.run("hub", "restart")
    gate.write_text("")
    sortie.run("job", "wait", b)
    assert sortie.run("job", "logs", b).stdout == "b ran\n"


def test_job_list_shows_the_newest_jobs_and_counts_the_rest(sortie):
    sortie.start()
    sortie.submit("true", opts=("--array", "1-150"))
    p = sortie.run("job", "list")
    rows = p.stdout.strip().splitlines()[1:]
    assert len(rows) == 100 and rows[0].split()[0] == "51" and rows[-1].split()[0] == "150"
    assert "showing the newest 100 of 150 jobs (150 queued)" in p.stderr, p.stderr
    assert len(sortie.run("job", "list", "--limit", "0").stdout.strip().splitlines()) == 151
    assert len(sortie.jobs()) == 150  # JSON: every job unless --limit
    assert len(sortie.json("job", "list", "--limit", "7")) == 7


def test_a_very_large_submission_must_be_confirmed(sortie, tmp_path):
    sortie.configure(**FAST, confirm_above=10)
    sortie.start()
    p = sortie.run("submit", "--array", "1-11", "--", "true", check=False)
    assert p.returncode != 0
    assert "would create 11 jobs, more than confirm_above (10)" in p.stderr and "--yes" in p.stderr
    listing = tmp_path / "items"
    listing.write_text("".join(f"{i}\n" for i in range(11)))
    p = sortie.run("map", "--each-line", str(listing), "--", "echo", check=False)
    assert p.returncode != 0 and "--yes" in p.stderr
    assert sortie.jobs() == []
    sortie.run("submit", "--yes", "--array", "1-11", "--", "true")
    sortie.run("submit", "--array", "1-10", "--", "true")  # up to the limit: no question
    assert len(sortie.jobs()) == 21
