# SPDX-License-Identifier: Apache-2.0
"""A damaged store is refused with a way to recover, never half-loaded."""
import random
import sqlite3

import pytest



def damage(path, nbytes=8192, seed=7):
    """Random bytes in the middle of the file, as a failing disk would leave."""
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    start = len(data) // 2 + 123
    data[start:start + nbytes] = bytes(rng.getrandbits(8) for _ in range(nbytes))
    path.write_bytes(bytes(data))


def test_a_damaged_store_is_refused_and_can_be_recovered(sortie):
    sortie.start()
    first, last = sortie.submit("true", opts=("--array", "1-3000"))
    assert (first, last) == (1, 3000)
    sortie.run("hub", "stop")
    store = sortie.profile / "store.db"
    assert not (sortie.profile / "store.db-wal").exists() or \
        (sortie.profile / "store.db-wal").stat().st_size == 0
    damage(store)

    # The hub does not start on it, and says what is wrong and what to do.
    r = sortie.run("hub", "start", check=False)
    assert r.returncode != 0
    assert "damaged" in r.stderr and "sortie hub check --recover" in r.stderr, r.stderr

    r = sortie.run("hub", "check", check=False)
    assert r.returncode == 1 and "is damaged" in r.stdout, r.stdout + r.stderr

    r = sortie.run("hub", "check", "--recover")
    assert "recovered into" in r.stdout, r.stdout
    assert list(sortie.profile.glob("store.db.damaged-*")), "the damaged store is kept"
    assert sortie.run("hub", "check").returncode == 0

    sortie.start()
    # Whatever was readable is back (the damaged pages' rows are gone), nothing else changed.
    ids = [j["id"] for j in sortie.jobs()]
    assert 0 < len(ids) < 3000 and ids == sorted(ids) and max(ids) <= 3000, len(ids)
    # The recovered store takes new work and keeps it across a restart.
    new = sortie.submit("true")
    assert new > max(ids)
    sortie.run("hub", "stop")
    sortie.start()
    assert sortie.job(new)["state"] == "queued"
    assert sortie.run("hub", "status").returncode == 0


def stopped_store_with_jobs(sortie, n=3000):
    sortie.start()
    sortie.submit("true", opts=("--array", f"1-{n}"))
    sortie.run("hub", "stop")
    return sortie.profile / "store.db"


def refused(sortie, *words):
    """hub start fails, names the store and says what to do; the store is left as it was."""
    store = sortie.profile / "store.db"
    before = store.read_bytes()
    r = sortie.run("hub", "start", check=False)
    assert r.returncode != 0, r.stdout
    assert str(store) in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert store.read_bytes() == before, "a refused store must not be touched"
    return r.stderr


def test_a_truncated_store_is_refused_and_what_is_left_can_be_recovered(sortie):
    store = stopped_store_with_jobs(sortie)
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2])
    refused(sortie, "damaged", "sortie hub check --recover")
    r = sortie.run("hub", "check", "--recover")
    assert "recovered into" in r.stdout, r.stdout
    sortie.start()
    ids = [j["id"] for j in sortie.jobs()]
    assert len(ids) < 3000 and ids == sorted(ids)
    # However many rows were lost, their ids are not handed out again (the ids file).
    new = sortie.submit("true")
    assert new > 3000 and f"New jobs get ids from {new}" in r.stdout, (new, r.stdout)


@pytest.mark.damages_store
def test_a_foreign_file_as_store_is_refused(sortie):
    store = stopped_store_with_jobs(sortie, 10)
    store.write_bytes(b"name,value\nnot,a database\n" * 200)
    refused(sortie, "not a sortie store", "move it away")


@pytest.mark.damages_store
def test_a_store_from_a_newer_sortie_is_refused(sortie):
    store = stopped_store_with_jobs(sortie, 10)
    db = sqlite3.connect(store)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    refused(sortie, "schema version 99", "newer than this sortie's")


def test_a_store_cut_to_nothing_is_not_taken_for_a_new_one(sortie):
    store = stopped_store_with_jobs(sortie, 10)
    store.write_bytes(b"")
    for leftover in sortie.profile.glob("store.db-*"):
        leftover.unlink()
    refused(sortie, "is empty, but a hub has run on this profile before", "delete it")
    store.unlink()  # the user's way to start afresh on purpose
    sortie.start()
    assert sortie.jobs() == []
