# SPDX-License-Identifier: Apache-2.0
"""TLS on links that leave the machine: a hub listening on the root namespace's address of the
test network (scripts/testbeds/netns.sh), an agent and a client in the sx-login namespace, and a
relay in between that records (and, when asked, alters) every byte they exchange."""
import hashlib
import json
import os
import socket
import ssl
import subprocess
import threading

import pytest

from conftest import FAST, wait_for

HUB_ADDRESS = "10.201.0.1"  # the root namespace's end of the test network


@pytest.fixture
def netns_up():
    p = subprocess.run(["ip", "route", "show", "10.201.0.0/24"], capture_output=True, text=True)
    if "unreachable" not in p.stdout or subprocess.run(
            ["ip", "netns", "exec", "sx-login", "true"]).returncode != 0:
        pytest.fail("the network-namespace hosts are not up (scripts/testbeds/netns.sh up)")


class Relay:
    """A TCP relay on HUB_ADDRESS: forwards to the hub, keeps a copy of both directions, and can
    flip one bit in each TLS record sent to the hub after the first `tamper_after` encrypted
    records of a connection."""

    def __init__(self, target, tamper_after=None):
        self.target = target
        self.tamper_after = tamper_after
        self.to_hub = bytearray()
        self.from_hub = bytearray()
        self.first_bytes = []  # the first byte each side sent on each connection
        self.lock = threading.Lock()
        self.listener = socket.create_server((HUB_ADDRESS, 0))
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self):
        while True:
            try:
                peer, _ = self.listener.accept()
            except OSError:
                return
            try:
                hub = socket.create_connection(self.target)
            except OSError:  # the hub has stopped
                peer.close()
                continue
            self.sockets += [peer, hub]
            threading.Thread(target=self._pump, args=(peer, hub, self.to_hub, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(hub, peer, self.from_hub, False),
                             daemon=True).start()

    def _pump(self, src, dst, copy, towards_hub):
        pending = bytearray()  # TLS records not yet complete (parsed only towards the hub)
        encrypted = 0
        first = True
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            with self.lock:
                copy += data
                if first:
                    self.first_bytes.append(data[0])
                    first = False
            if towards_hub and self.tamper_after is not None:
                pending += data
                out = bytearray()
                while len(pending) >= 5 and len(pending) >= 5 + int.from_bytes(pending[3:5], "big"):
                    size = 5 + int.from_bytes(pending[3:5], "big")
                    record = bytearray(pending[:size])
                    del pending[:size]
                    if record[0] == 0x17:  # application data (everything after the hello)
                        encrypted += 1
                        if encrypted > self.tamper_after:
                            record[-1] ^= 0x01
                    out += record
                data = bytes(out)
            try:
                dst.sendall(data)
            except OSError:
                return


def remote_profile(sortie, name, port):
    """A profile holding a copy of hub.json that reaches the hub through `port`, with no unix
    socket: the way a compute node or a colleague's machine sees the hub."""
    hf = sortie.hub_file()
    hf["port"] = port
    hf["socket"] = ""
    d = sortie.home / name
    d.mkdir()
    (d / "hub.json").write_text(json.dumps(hf))
    os.chmod(d / "hub.json", 0o600)
    return d / "hub.json"


def in_namespace(sortie, *args, timeout=60):
    return subprocess.run(["ip", "netns", "exec", "sx-login", sortie.bin, *args], env=sortie.env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(sortie.home))


def test_an_agent_and_a_client_on_another_host_talk_tls_1_3_to_the_pinned_hub(sortie, netns_up):
    sortie.configure(**FAST, listen=f"{HUB_ADDRESS}:0")
    sortie.start()
    hf = sortie.hub_file()
    assert hf["host"] == HUB_ADDRESS
    cert = (sortie.profile / "hub.crt").read_text()
    assert hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert)).hexdigest() == hf["tls_fingerprint"]
    assert (sortie.profile / "hub.key").stat().st_mode & 0o777 == 0o600

    relay = Relay((HUB_ADDRESS, hf["port"]))
    agent = None
    try:
        hub_json = remote_profile(sortie, "remote", relay.port)
        agent = subprocess.Popen(
            ["ip", "netns", "exec", "sx-login", sortie.bin, "agent", "--hub-file", str(hub_json),
             "--pilot", "0", "--node-name", "far-node", "--slots", "1", "--label", "far"],
            env=sortie.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: "node far-node" in (sortie.profile / "hub.log").read_text(), 30,
                 "the agent in sx-login to register")
        secret = "spec-" + os.urandom(8).hex()
        job = sortie.submit("sh", "-c", 'echo "$0 $SORTIE_SECRET"', secret,
                            opts=("--label", "far", "--env", f"SORTIE_SECRET=env-{secret}"))
        sortie.run("job", "wait", str(job))
        assert sortie.job(job)["node"] == "far-node"
        # A client in the namespace reads the output through the relay too.
        logs = in_namespace(sortie, "--profile", "remote", "job", "logs", str(job))
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout == f"{secret} env-{secret}\n"
        with relay.lock:
            to_hub, from_hub, firsts = bytes(relay.to_hub), bytes(relay.from_hub), relay.first_bytes
        # The spec went to the agent, its output came back, and the client read it: all through
        # the relay, and none of it readable there.
        assert len(from_hub) > 2000 and len(to_hub) > 1000
        for blob in (to_hub, from_hub):
            assert secret.encode() not in blob
            assert b"SORTIE_SECRET" not in blob
        assert firsts and all(b == 0x16 for b in firsts), firsts  # every connection opens with TLS
    finally:
        relay.close()
        if agent:
            sortie.run("hub", "stop")
            agent.wait(timeout=60)


def test_an_altered_byte_on_the_wire_is_refused_and_the_hub_carries_on(sortie, netns_up):
    sortie.configure(**FAST, listen=f"{HUB_ADDRESS}:0")
    sortie.start()
    hf = sortie.hub_file()
    # Records 1-3 towards the hub: TLS Finished, Hello, Auth; the 4th (the submission) is altered.
    relay = Relay((HUB_ADDRESS, hf["port"]), tamper_after=3)
    try:
        remote_profile(sortie, "remote", relay.port)
        p = in_namespace(sortie, "--profile", "remote", "submit", "--", "echo", "altered")
        assert p.returncode != 0
        assert "altered" not in p.stdout
        assert sortie.jobs() == [], "an altered submission was acted upon"
        assert "TLS error" in p.stderr and "bad record mac" in p.stderr, p.stderr
        wait_for(lambda: "bad record mac" in (sortie.profile / "hub.log").read_text(), 10,
                 "the hub to log the broken record")
        assert sortie.run("hub", "status").returncode == 0
    finally:
        relay.close()


def test_a_hub_json_naming_another_certificate_is_refused_with_the_way_out(sortie, netns_up):
    sortie.configure(**FAST, listen=f"{HUB_ADDRESS}:0")
    sortie.start()
    hf = sortie.hub_file()
    path = remote_profile(sortie, "stale", hf["port"])
    stale = json.loads(path.read_text())
    stale["tls_fingerprint"] = hashlib.sha256(b"another certificate").hexdigest()
    path.write_text(json.dumps(stale))
    p = in_namespace(sortie, "--profile", "stale", "job", "list")
    assert p.returncode != 0
    assert "is not the one hub.json names" in p.stderr and "copy hub.json" in p.stderr, p.stderr
    assert "not running" not in p.stderr


def test_the_certificate_survives_restarts_so_copies_of_hub_json_keep_working(sortie):
    sortie.start()
    before = sortie.hub_file()["tls_fingerprint"]
    sortie.run("hub", "restart")
    assert sortie.hub_file()["tls_fingerprint"] == before
    with sortie.tls_connect():
        pass


def test_on_a_wildcard_address_hub_json_names_this_machine(sortie):
    # Compute nodes read hub.json from a shared home: 0.0.0.0 or 127.0.0.1 would lead them to
    # themselves. (Local commands use the unix socket.)
    sortie.configure(**FAST, listen="0.0.0.0:0")
    sortie.start()
    assert sortie.hub_file()["host"] == socket.gethostname()
    assert sortie.run("hub", "status").returncode == 0
