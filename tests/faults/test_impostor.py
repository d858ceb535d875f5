# SPDX-License-Identifier: Apache-2.0
"""Someone who holds the profile's token but not an agent's session: an impostor registering as a
live agent over a real TLS connection is refused and logged, and the real agent's job result
stands. Stale and missing tokens are refused with the way out. Frames are encoded here by hand
(there is no protobuf for Debian's Python in the test dependencies)."""
import hashlib
import hmac
import json
import os
import secrets
import socket

from conftest import frame, pb_bytes, pb_fields, pb_int, read_frame, wait_for


def send(sock, envelope):
    sock.sendall(frame(envelope))


def receive(sock):
    """The next frame's envelope fields, skipping heartbeats (field 15); None at end of stream."""
    while True:
        body = read_frame(sock)
        if body is None:
            return None
        env = pb_fields(body)
        if 15 not in env:
            return env


def handshake_as_agent(sock, token_hex, role=2, key=None):
    """The connecting side of the handshake; `key`: raw key bytes (default: the hex token's)."""
    key = key if key is not None else bytes.fromhex(token_hex)
    nonce = secrets.token_bytes(32)
    hello = pb_int(1, 1) + pb_int(2, role) + pb_bytes(3, nonce) + pb_bytes(4, b"impostor")
    send(sock, pb_bytes(10, hello))
    challenge = pb_fields(receive(sock)[11][0])
    hub_nonce = challenge[2][0]
    expected = hmac.new(key, b"sortie-hub-v1" + nonce + hub_nonce, hashlib.sha256).digest()
    assert challenge[3][0] == expected, "the hub proved it knows the token"
    proof = hmac.new(key, b"sortie-peer-v1" + bytes([role]) + hub_nonce + nonce,
                     hashlib.sha256).digest()
    send(sock, pb_bytes(12, pb_bytes(1, proof)))
    assert 13 in receive(sock), "welcome"


ENGINE = 4  # Role.ROLE_ENGINE

# An engine program that hands its direct socket and key to the test, then waits.
ROGUE_ENGINE = """
import os, sys, time
out = sys.argv[1]
with open(out + ".tmp", "w") as f:
    f.write(os.environ["SORTIE_ENGINE_DIRECT_SOCKET"] + "\\n" + os.environ["SORTIE_ENGINE_DIRECT_KEY"])
os.rename(out + ".tmp", out)
while not os.path.exists(out + ".done"):
    time.sleep(0.05)
"""


def test_a_direct_engine_socket_takes_only_its_engine_and_only_engine_frames(sortie, tmp_path):
    """The socket a local pilot's engine gets from the hub (05-tasks.md §5.9): a wrong key is
    refused; a routed frame or one an engine may not send closes that link with the reason; the
    right key and an EngineReady make an engine on a direct link."""
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "1")
    program, handed = tmp_path / "rogue.py", tmp_path / "handed"
    program.write_text(ROGUE_ENGINE)
    sortie.run("engine", "start", "--count", "1", "--", "/usr/bin/python3", str(program),
               str(handed))
    wait_for(handed.exists, 60, "the engine program to start")
    path, key = handed.read_text().split("\n")
    assert path.startswith(str(sortie.profile)) and path.endswith(".sock"), path

    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(path)
        return s

    with connect() as s:  # another key: the hub's proof does not match, and it closes
        try:
            handshake_as_agent(s, None, ENGINE, secrets.token_hex(32).encode())
        except (AssertionError, ConnectionError, TypeError):
            pass
        else:
            raise AssertionError("a wrong key was taken")
    ready = pb_bytes(60, pb_int(3, 0) + pb_int(4, 1) + pb_int(5, os.getpid()))
    for bad, reason in ((ready + pb_int(2, 7), b"a forged route"),  # routed to "link 7"
                        (pb_bytes(66, b""), b"may not send")):     # a client's TaskSubmit
        with connect() as s:
            handshake_as_agent(s, None, ENGINE, key.encode())
            send(s, bad)
            reply = receive(s)
            assert reply is not None and 14 in reply, reply
            assert reason in pb_fields(reply[14][0])[2][0], reply
            assert receive(s) is None, "that link is closed"
    with connect() as s:
        handshake_as_agent(s, None, ENGINE, key.encode())
        send(s, ready)
        assert 61 in receive(s), "EngineWelcome"
        engines = wait_for(lambda: sortie.json("engine", "list"), 30, "the engine to be up")
        assert [e["link"] for e in engines] == ["direct"], engines
    (tmp_path / "handed.done").write_text("")
    # Its job ended: the socket goes with it.
    wait_for(lambda: not os.path.exists(path), 30, "the direct socket to be removed")


def test_an_impostor_with_the_token_cannot_take_over_a_live_agent(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "1")
    gate = tmp_path / "gate"
    job = sortie.submit("sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done; echo real', str(gate))
    sortie.wait_state(job, "running")
    token = sortie.hub_file()["token"]
    for proof in (secrets.token_bytes(32), b""):  # a guessed session proof, and none
        with sortie.tls_connect() as s:
            handshake_as_agent(s, token)
            register = (pb_int(1, 1) + pb_int(2, 1) + pb_bytes(3, b"local-1-1") +
                        pb_int(7, 1) + pb_int(9, os.getpid()) +
                        (pb_bytes(16, proof) if proof else b""))
            send(s, pb_int(1, 7) + pb_bytes(50, register))
            reply = receive(s)
            assert reply is not None and 14 in reply, reply
            error = pb_fields(reply[14][0])
            assert b"registered to another session" in error[2][0], error
            assert receive(s) is None, "the impostor's link is closed"
    log = (sortie.profile / "hub.log").read_text()
    assert "refused a reconnect as agent 1" in log
    # The real agent was not disturbed: its job ends as it ran.
    gate.write_text("")
    sortie.run("job", "wait", job)
    shown = sortie.job(job)
    assert shown["exit_code"] == 0 and shown["attempt"] == 1, shown
    assert sortie.run("job", "logs", job).stdout == "real\n"


def test_stale_and_missing_tokens_are_refused_with_the_way_out(sortie):
    sortie.start()
    stale = sortie.hub_file()
    sortie.run("hub", "stop")
    (sortie.profile / "hub.json").unlink()  # the profile gets a new token at the next start
    sortie.start()
    for name, token in (("stale", stale["token"]), ("missing", "")):
        d = sortie.home / name
        d.mkdir()
        copy = dict(sortie.hub_file(), token=token, socket="")
        (d / "hub.json").write_text(json.dumps(copy))
        os.chmod(d / "hub.json", 0o600)
        p = sortie.run("job", "list", profile=name, check=False)
        assert p.returncode != 0
        if name == "stale":
            assert "could not prove it knows this profile's token" in p.stderr, p.stderr
        else:
            assert "has no valid token" in p.stderr and "restart the hub" in p.stderr, p.stderr
    assert sortie.run("hub", "status").returncode == 0
