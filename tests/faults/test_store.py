# SPDX-License-Identifier: Apache-2.0
"""A damaged store is refused with a way to recover, never half-loaded."""
import random



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
