# SPDX-License-Identifier: Apache-2.0
"""Files the hub reads cannot freeze it: a FIFO (or a device) is refused, not waited on."""
import os

from conftest import wait_for


def test_a_fifo_as_config_toml_is_refused_at_start(sortie):
    config = sortie.profile / "config.toml"
    config.unlink()
    os.mkfifo(config)
    r = sortie.run("hub", "start", check=False, timeout=60)
    assert r.returncode != 0
    assert "not a regular file" in r.stderr and "config.toml" in r.stderr, r.stderr


def test_a_fifo_as_machinefile_fails_the_pilot_not_the_hub(sortie, tmp_path):
    sortie.start()
    fifo = tmp_path / "machines"
    os.mkfifo(fifo)
    r = sortie.run("resource", "add", "lab", "--type", "ssh", "--location", "root@127.0.0.1",
                   "--machinefile", fifo, check=False)
    if r.returncode == 0:  # refused when the pilot starts rather than when it is defined
        r = sortie.run("pilot", "add", "--resource", "lab", check=False)
        if r.returncode == 0:
            pid = int(r.stdout)
            p = wait_for(lambda: (q := [x for x in sortie.json("pilot", "list")
                                        if x["id"] == pid][0])["state"] == "failed" and q,
                         30, "the pilot to fail")
            r.stderr = p["reason"]
    assert "not a regular file" in r.stderr, r.stderr
    # The hub still answers everyone.
    assert sortie.run("hub", "status", timeout=10).returncode == 0
