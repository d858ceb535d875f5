# SPDX-License-Identifier: Apache-2.0
"""SIGSTOP of the hub. Shorter than the agents' lease: nothing is lost, nothing runs again. Longer:
the keepers end the jobs when the lease runs out, and the thawed hub runs them again only after
that, never two attempts at once (judged from the jobs' own timestamps)."""
import os
import signal
import time

from conftest import alive, wait_for
from test_frozen import JOB, last_ns


def freeze_hub(sortie, seconds):
    hub = sortie.hub_pid()
    os.kill(hub, signal.SIGSTOP)
    try:
        time.sleep(seconds)  # the fault itself: the hub frozen this long
    finally:
        os.kill(hub, signal.SIGCONT)
    return hub


def test_a_hub_frozen_for_less_than_the_lease_loses_nothing(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "1")
    job = sortie.submit("sh", "-c", JOB, "job", str(tmp_path))
    wait_for(lambda: (tmp_path / "attempt-1.alive").exists(), 10, "the job to run")
    # Past the agents' link deadline (4 heartbeats of 500 ms), within their reconnect window (4 s).
    hub = freeze_hub(sortie, 3)
    assert alive(hub)
    before = last_ns(tmp_path / "attempt-1.alive")
    wait_for(lambda: last_ns(tmp_path / "attempt-1.alive") > before, 10, "the job to go on")
    shown = sortie.job(job)
    assert shown["state"] == "running" and shown["attempt"] == 1, shown
    quick = sortie.submit("true")
    sortie.run("job", "cancel", job)
    sortie.wait_state(job, "cancelled")
    assert sortie.job(job)["attempt"] == 1
    sortie.run("job", "wait", quick)
    assert not (tmp_path / "attempt-2.start").exists()


def test_a_hub_frozen_past_the_lease_never_runs_a_job_twice_at_once(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "1")
    job = sortie.submit("sh", "-c", JOB, "job", str(tmp_path))
    wait_for(lambda: (tmp_path / "attempt-1.alive").exists(), 10, "the job to run")
    [agent] = sortie.agent_pids()
    # Past the lease (6.5 s with these settings): the agent cannot renew it, its keeper ends it.
    freeze_hub(sortie, 8)
    wait_for(lambda: not alive(agent), 10, "the agent to give up")
    sortie.add_pilot("--resource", "local", "--slots", "1")
    shown = wait_for(lambda: (j := sortie.job(job))["attempt"] == 2 and j["state"] == "running"
                     and j, 60, "the job to run again")
    wait_for(lambda: (tmp_path / "attempt-2.start").exists(), 10, "attempt 2 to start")
    start2 = int((tmp_path / "attempt-2.start").read_text())
    end1 = last_ns(tmp_path / "attempt-1.alive")
    assert end1 < start2, f"attempts overlapped by {(end1 - start2) / 1e6:.0f} ms"
    assert "lost" in [h["state"] for h in shown["history"]], shown
    sortie.run("job", "cancel", job)
