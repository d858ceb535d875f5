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
import struct


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def lenfield(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def intfield(num, value):
    return varint(num << 3) + varint(value)


def fields(data):
    """The fields of a protobuf message: {number: [values]} (bytes or ints)."""
    out, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        num, kind = key >> 3, key & 7
        if kind == 0:
            value, i = read_varint(data, i)
        elif kind == 2:
            n, i = read_varint(data, i)
            value, i = data[i:i + n], i + n
        else:
            raise AssertionError(f"unexpected wire type {kind}")
        out.setdefault(num, []).append(value)
    return out


def read_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def send(sock, envelope):
    sock.sendall(struct.pack(">I", len(envelope)) + envelope)


def receive(sock):
    """The next frame's envelope fields, skipping heartbeats (field 15); None at end of stream."""
    while True:
        head = b""
        while len(head) < 4:
            chunk = sock.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        (n,) = struct.unpack(">I", head)
        body = b""
        while len(body) < n:
            chunk = sock.recv(n - len(body))
            if not chunk:
                return None
            body += chunk
        env = fields(body)
        if 15 not in env:
            return env


def handshake_as_agent(sock, token_hex):
    key = bytes.fromhex(token_hex)
    nonce = secrets.token_bytes(32)
    hello = intfield(1, 1) + intfield(2, 2) + lenfield(3, nonce) + lenfield(4, b"impostor")
    send(sock, lenfield(10, hello))
    challenge = fields(receive(sock)[11][0])
    hub_nonce = challenge[2][0]
    expected = hmac.new(key, b"sortie-hub-v1" + nonce + hub_nonce, hashlib.sha256).digest()
    assert challenge[3][0] == expected, "the hub proved it knows the token"
    proof = hmac.new(key, b"sortie-peer-v1" + bytes([2]) + hub_nonce + nonce, hashlib.sha256).digest()
    send(sock, lenfield(12, lenfield(1, proof)))
    assert 13 in receive(sock), "welcome"


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
            register = (intfield(1, 1) + intfield(2, 1) + lenfield(3, b"local-1-1") +
                        intfield(7, 1) + intfield(9, os.getpid()) +
                        (lenfield(16, proof) if proof else b""))
            send(s, intfield(1, 7) + lenfield(50, register))
            reply = receive(s)
            assert reply is not None and 14 in reply, reply
            error = fields(reply[14][0])
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
