# SPDX-License-Identifier: Apache-2.0
"""Output written while the disk is full is not lost silently: the hub tries again (holding the
agent's credit) and, if the space never comes, the job says how much is missing. The full disk
is a small tmpfs mounted over the profile's output directory (this needs root, as CI is)."""
import errno
import os
import subprocess

from conftest import wait_for

LINES = 60
JOB = f"for i in $(seq 1 {LINES}); do printf '%02d %0100d\\n' $i 0; done"


def fill(directory):
    """Fills a tmpfs to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return filler


class FullOutputDisk:
    def __init__(self, sortie):
        self.dir = sortie.profile / "output"
        self.dir.mkdir(parents=True, exist_ok=True)

    def __enter__(self):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "sortie-full",
                        str(self.dir)], check=True)
        self.filler = fill(self.dir)
        return self

    def __exit__(self, *exc):
        r = subprocess.run(["umount", "-l", str(self.dir)], capture_output=True, text=True)
        assert r.returncode == 0, f"umount {self.dir}: {r.stderr}"


def logs(sortie, job):
    return sortie.run("job", "logs", job).stdout


def test_output_waits_for_space_and_arrives_whole(sortie):
    sortie.configure(heartbeat_interval="500ms", agent_reconnect_window="4s", kill_grace="1s",
                     output_retry="60s")
    with FullOutputDisk(sortie) as disk:
        sortie.start()
        sortie.add_pilot("--resource", "local", "--slots", "1")
        job = sortie.submit("sh", "-c", JOB)
        sortie.wait_state(job, "succeeded", timeout=60)
        disk.filler.unlink()  # space comes back: the held output is written on the next try
        expected = "".join(f"{i:02d} {0:0100d}\n" for i in range(1, LINES + 1))
        wait_for(lambda: logs(sortie, job) == expected, 30, "the whole output")
        assert "could not be written" not in sortie.job(job)["reason"]
        sortie.run("hub", "stop")


def test_output_that_can_never_be_written_is_reported_on_the_job(sortie):
    sortie.configure(heartbeat_interval="500ms", agent_reconnect_window="4s", kill_grace="1s",
                     output_retry="2s")
    with FullOutputDisk(sortie):
        sortie.start()
        sortie.add_pilot("--resource", "local", "--slots", "1")
        job = sortie.submit("sh", "-c", JOB)
        sortie.wait_state(job, "succeeded", timeout=60)
        shown = wait_for(lambda: "could not be written" in (j := sortie.job(job))["reason"] and j,
                         30, "the job to report its lost output")
        assert "missing from its output files" in shown["reason"], shown["reason"]
        # Nothing was made up: no NUL bytes stand for the lines that were lost.
        assert "\0" not in logs(sortie, job)
        sortie.run("hub", "stop")
