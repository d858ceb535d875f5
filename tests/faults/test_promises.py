# SPDX-License-Identifier: Apache-2.0
"""Promises that broke once: each reproduction, kept as a test."""
import json
import subprocess
import time

from conftest import wait_for


def pilots(sortie):
    return sortie.json("pilot", "list")


def test_a_job_that_kills_its_agent_uses_its_retries_not_every_pilot(sortie):
    sortie.start()
    for _ in range(6):
        sortie.add_pilot("--resource", "local", "--slots", "1")
    # The job's parent is its agent: every attempt kills the node it runs on before the agent can
    # report that it started.
    job = sortie.submit("sh", "-c", "kill -9 $PPID; sleep 5")
    shown = sortie.wait_state(job, "lost", timeout=60)
    # The first attempt and lost_retries (3) more, each counted although never reported started.
    assert shown["attempt"] == 4, shown
    assert "its node was lost 4 times" in shown["reason"], shown["reason"]
    running = [p for p in pilots(sortie) if p["state"] == "running"]
    assert len(running) == 2, pilots(sortie)


def test_retries_zero_means_one_attempt_when_its_node_is_lost(sortie):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "1")
    sortie.add_pilot("--resource", "local", "--slots", "1")
    job = sortie.submit("sh", "-c", "kill -9 $PPID; sleep 5", opts=("--retries", "0"))
    shown = sortie.wait_state(job, "lost", timeout=60)
    assert shown["attempt"] == 1 and "lost 1 time," in shown["reason"], shown


def test_wait_timeout_fires_although_heartbeats_keep_coming(sortie):
    # Heartbeats every 500 ms (the fixture's configuration) must not push the deadline.
    sortie.start()
    job = sortie.submit("sleep", "600")  # no pilot: it stays queued
    t0 = time.monotonic()
    r = sortie.run("job", "wait", job, "--timeout", "3s", check=False, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 4, r
    assert took < 20, f"job wait --timeout 3s returned after {took:.1f}s"
    sortie.run("job", "cancel", job)


def test_numbers_that_would_wrap_are_refused(sortie):
    sortie.start()
    cases = [
        (["--slots", str(1 << 20), "--mpi", "4096"], "slots"),
        (["--array", "-9223372036854775808-9223372036854775807"], "more than"),
        (["--memory", "99999999T"], "too large"),
        (["--memory", "4000P"], "more than any node has"),
    ]
    for opts, words in cases:
        r = sortie.run("submit", *opts, "--", "true", check=False)
        assert r.returncode != 0, (opts, r.stdout)
        assert words in r.stderr, (opts, r.stderr)
    assert sortie.jobs() == []


def test_a_bare_memory_number_is_mebibytes(sortie):
    sortie.start()
    job = sortie.submit("true", opts=("--memory", "100"))
    spec = sortie.job(job)
    text = json.dumps(spec)
    assert str(100 << 20) in text or "100 MiB" in text or "100M" in text, text
    sortie.run("job", "cancel", job)
