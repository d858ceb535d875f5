# SPDX-License-Identifier: Apache-2.0
"""Memory stays bounded whatever a peer does: clients that stop reading job output or their
replies."""
import hashlib
import socket
import subprocess

from conftest import frame, hub_memory_kib, pb_bytes, pb_fields, pb_int, read_frame, wait_for
from test_impostor import handshake_as_agent

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


def test_a_client_that_never_reads_its_replies_is_not_read_either(sortie):
    """docs/architecture.md §5, "Connections": a client that keeps asking but does not read the
    replies is not read either while the hub holds 64 MiB unsent for it. 2,000 requests for the
    list of 2,000 jobs (some 270 MB of replies) leave the hub's peak far below that; others are
    served meanwhile; read at last, every reply comes, in order."""
    sortie.start()
    sortie.run("submit", "--yes", "--array", "1-2000", "--", "true")  # queued: no pilot
    hub = sortie.hub_pid()
    before = hub_memory_kib(hub, "VmRSS")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(sortie.profile / "hub.sock"))
        handshake_as_agent(s, sortie.hub_file()["token"], role=1)  # ROLE_CLIENT
        requests = 2000
        s.sendall(b"".join(frame(pb_int(1, i) + pb_bytes(22, b"")) for i in range(1, requests + 1)))
        log = sortie.profile / "hub.log"
        wait_for(lambda: "does not read its replies" in log.read_text(), 60,
                 "the hub to stop reading the client")
        assert len(sortie.jobs("--limit", "0")) == 2000  # others are served meanwhile
        # 64 MiB unsent, and once the buffer that holds them doubling as it grows past that.
        peak = hub_memory_kib(hub) - before
        assert peak < 200_000, f"the hub grew by {peak} KiB for a client that does not read"
        first = None
        for i in range(1, requests + 1):
            while True:
                env = pb_fields(read_frame(s))
                if 15 not in env:  # heartbeats aside
                    break
            assert env[1][0] == i and 23 in env, f"reply {i}: fields {sorted(env)}"
            if first is None:
                first = len(env[23][0])
                assert first > 100_000, f"a list of 2,000 jobs in {first} bytes"
        print(f"{requests} replies of {first} bytes; the hub grew by {peak} KiB at most")
    assert hub_memory_kib(hub) - before < 200_000
