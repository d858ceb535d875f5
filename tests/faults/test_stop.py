# SPDX-License-Identifier: Apache-2.0
"""`hub stop` returns only when every job process of its pilots has ended; `hub restart` keeps
pilots and running jobs going with zero requeues."""
from pathlib import Path

from conftest import processes_with_env, wait_for

# Traps SIGTERM, takes 2 s to clean up, then leaves a mark.
SLOW_TO_DIE = r'''trap 'sleep 2; echo cleaned > "$1/cleaned"; exit 0' TERM
echo up > "$1/up"; while true; do sleep 0.1; done'''


def job_processes(sortie, job):
    """The job's processes in this test's profile (other tests' hubs have a job 1 too)."""
    ours = set(processes_with_env(f"SORTIE_HOME={sortie.home}".encode()))
    return [p for p in processes_with_env(f"SORTIE_JOB_ID={job}".encode()) if p in ours]


def job_leader(sortie, job):
    """The job's main process: the leader of its session (its children come and go)."""
    leaders = []
    for p in job_processes(sortie, job):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except FileNotFoundError:  # a child (the loop's `sleep`) that ended since it was listed
            continue
        if int(stat[stat.rfind(")") + 2:].split()[3]) == p:
            leaders.append(p)
    return leaders


def test_hub_stop_returns_after_the_jobs_have_ended(sortie, tmp_path):
    sortie.configure(heartbeat_interval="500ms", agent_reconnect_window="4s", kill_grace="6s")
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "2")
    for i in range(2):
        (tmp_path / str(i)).mkdir()
    jobs = [sortie.submit("sh", "-c", SLOW_TO_DIE, "job", str(tmp_path / str(i))) for i in range(2)]
    for i, j in enumerate(jobs):
        wait_for(lambda: (tmp_path / str(i) / "up").exists(), 20, f"job {j} to start")
    sortie.run("hub", "stop")
    # Nothing of the jobs is left, and each had its time to clean up (kill_grace 6 s > 2 s).
    for i, j in enumerate(jobs):
        assert not job_processes(sortie, j), f"job {j} outlived hub stop"
        assert (tmp_path / str(i) / "cleaned").exists(), f"job {j} was not given its grace"
    sortie.start()
    for j in jobs:
        shown = sortie.job(j)
        assert shown["state"] == "queued", shown
        assert "lost" in [h["state"] for h in shown["history"]], shown["history"]


def test_hub_restart_keeps_running_jobs_without_requeueing(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "2")
    done = tmp_path / "done"
    job = sortie.submit("sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.05; done', "job", str(done))
    sortie.wait_state(job, "running")
    [before] = job_leader(sortie, job)
    old_hub = sortie.hub_pid()
    r = sortie.run("hub", "restart")
    assert sortie.hub_pid() != old_hub, r.stdout
    # The same process carries on, under the new hub, and finishes there.
    assert job_leader(sortie, job) == [before]
    shown = sortie.job(job)
    assert shown["state"] == "running" and shown["attempt"] == 1, shown
    done.write_text("")
    shown = sortie.wait_state(job, "succeeded", timeout=60)
    assert shown["attempt"] == 1 and "lost" not in [h["state"] for h in shown["history"]], shown
    assert [p["state"] for p in sortie.json("pilot", "list")] == ["running"]
    # A job submitted now runs on the same pilot at once.
    again = sortie.submit("true")
    sortie.wait_state(again, "succeeded", timeout=30)
