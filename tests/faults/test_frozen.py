# SPDX-License-Identifier: Apache-2.0
"""Never two live copies: an agent frozen past its lease (kill -STOP) is ended by its keeper
before the hub runs its job elsewhere. The overlap is judged from the jobs' own timestamps."""
import os
import signal
import time
from pathlib import Path

from conftest import alive, wait_for

# Each attempt writes its start time, then a timestamp every 50 ms while it lives.
JOB = r'''f="$1/attempt-$SORTIE_ATTEMPT"; date +%s%N > "$f.start"
while true; do date +%s%N >> "$f.alive"; sleep 0.05; done'''


def last_ns(path):
    lines = Path(path).read_text().split()
    return int(lines[-1]) if lines else 0


def running_on_a_first_pilot(sortie, tmp_path):
    """A job writing its timestamps on a first pilot, and a second pilot to take it over; the job
    and the first pilot's agent."""
    sortie.start()
    first = sortie.add_pilot("--resource", "local", "--slots", "1", "--label", "a")
    job = sortie.submit("sh", "-c", JOB, "job", str(tmp_path))
    sortie.wait_state(job, "running")
    wait_for(lambda: (tmp_path / "attempt-1.alive").exists(), 10, "attempt 1 to write")
    sortie.add_pilot("--resource", "local", "--slots", "1")
    [agent] = sortie.agent_pids(f"local-{first}-1")
    return job, agent


def test_a_frozen_agent_never_runs_a_job_twice_at_once(sortie, tmp_path):
    job, agent = running_on_a_first_pilot(sortie, tmp_path)
    os.kill(agent, signal.SIGSTOP)
    try:
        shown = wait_for(lambda: (j := sortie.job(job))["attempt"] == 2 and
                         j["state"] == "running" and j, 60, "the job to run again elsewhere")
        wait_for(lambda: (tmp_path / "attempt-2.start").exists(), 10, "attempt 2 to start")
        # The keeper ended the frozen agent and its job; thawing it changes nothing.
        wait_for(lambda: not alive(agent), 10, "the frozen agent to be ended by its keeper")
    finally:
        try:
            os.kill(agent, signal.SIGCONT)
        except ProcessLookupError:
            pass
    time.sleep(0.5)  # let a wrongly surviving attempt 1 write once more (it would show below)
    start2 = int((tmp_path / "attempt-2.start").read_text())
    end1 = last_ns(tmp_path / "attempt-1.alive")
    assert end1 < start2, f"attempts overlapped by {(end1 - start2) / 1e6:.0f} ms"
    assert "lost" in [h["state"] for h in shown["history"]], shown
    sortie.run("job", "cancel", job)


def test_kill_9_of_an_agent_never_runs_a_job_twice_at_once(sortie, tmp_path):
    # The hub sees the agent die at once; the new attempt still waits for the agent's keeper to
    # have killed the old one.
    job, agent = running_on_a_first_pilot(sortie, tmp_path)
    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: (tmp_path / "attempt-2.start").exists(), 30, "attempt 2 to start")
    time.sleep(0.5)  # let a wrongly surviving attempt 1 write once more (it would show below)
    start2 = int((tmp_path / "attempt-2.start").read_text())
    end1 = last_ns(tmp_path / "attempt-1.alive")
    assert end1 < start2, f"attempts overlapped by {(end1 - start2) / 1e6:.0f} ms"
    sortie.run("job", "cancel", job)
