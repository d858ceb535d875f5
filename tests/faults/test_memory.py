# SPDX-License-Identifier: Apache-2.0
"""Memory stays bounded whatever a peer does: clients that stop reading job output."""
import hashlib
import subprocess

from conftest import hub_memory_kib, wait_for

LINES = 20_000_000  # `seq 1 LINES`: about 169 MB of output


def expected_digest():
    h = hashlib.sha256()
    h.update("".join(f"{i}\n" for i in range(1, LINES + 1)).encode())
    return h.hexdigest()


def test_followers_that_stop_reading_do_not_grow_the_hub(sortie):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "1")
    job = sortie.submit("seq", "1", str(LINES))
    # Three followers whose standard output nobody reads: each blocks on a full pipe, so the hub
    # sees a client that stops reading.
    followers = [subprocess.Popen([sortie.bin, "job", "logs", "-f", str(job)], env=sortie.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                 for _ in range(3)]
    try:
        sortie.wait_state(job, "succeeded", timeout=120)
        hub = sortie.hub_pid()
        peak_mib = hub_memory_kib(hub) / 1024
        print(f"hub peak with 3 stalled followers: {peak_mib:.0f} MiB")
        # Each follower holds at most a window of output on its connection (4 MiB); the rest
        # is the agent's output credit in flight and the hub itself.
        assert peak_mib < 120, f"hub peaked at {peak_mib:.0f} MiB with 3 stalled followers"
        # The followers, read at last, still get every byte in order, then end with the job.
        digest = expected_digest()
        for f in followers:
            h = hashlib.sha256()
            while chunk := f.stdout.read(1 << 20):
                h.update(chunk)
            assert f.wait(timeout=60) == 0
            assert h.hexdigest() == digest
        assert hub_memory_kib(hub) / 1024 < 120
    finally:
        for f in followers:
            f.kill()
            f.wait()


def test_forgotten_jobs_give_their_memory_back(sortie):
    """docs/architecture.md §6: forgotten jobs' memory is freed (whole chunks of ids), so the
    hub's memory follows the jobs it keeps, not every job ever submitted: cycles of 400,000
    jobs submitted, ended and forgotten do not add up. (What stays after the first cycle is
    mostly SQLite's page cache, bounded at 64 MiB.)"""
    sortie.start()
    hub = sortie.hub_pid()
    before = hub_memory_kib(hub, "VmRSS")
    after = []
    for cycle in range(3):
        sortie.run("submit", "--yes", "--array", "1-400000", "--", "true")
        sortie.run("job", "cancel", "--all")  # ended, so they may be forgotten
        full = hub_memory_kib(hub, "VmRSS")
        assert full - before > 40_000, "400,000 jobs took almost nothing: the test measures nothing"
        p = sortie.run("job", "forget", "--all")
        assert "400000 jobs forgotten" in p.stdout, p.stdout
        after.append(hub_memory_kib(hub, "VmRSS"))
        print(f"cycle {cycle}: hub RSS {before} KiB at start, {full} KiB with 400,000 jobs, "
              f"{after[-1]} KiB after forgetting them")
    assert sortie.jobs() == []
    new = sortie.submit("true")
    assert new == 1_200_001  # ids go on past the forgotten ones
    grown = after[-1] - after[0]
    assert grown < 40_000, f"each cycle left memory behind: {after} KiB"
