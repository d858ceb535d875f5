# SPDX-License-Identifier: Apache-2.0
"""Fixtures for integration tests: real hub and agent processes in a temporary profile.

Every process a test starts carries SORTIE_HOME=<its temporary directory> in its environment
(the hub, its agents and their jobs inherit it), so teardown finds and kills whatever is left,
and fails the test if anything was.
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sortie_binary():
    path = os.environ.get("SORTIE_BIN") or str(ROOT / "build" / "dev" / "apps" / "sortie")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no sortie binary at {path}: build first or set SORTIE_BIN")
    return path


def processes_with_env(entry: bytes):
    """Pids of live processes whose environment holds `entry` (e.g. b'SORTIE_HOME=/tmp/x')."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            if stat[stat.rfind(")") + 2] in "ZX":
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if entry in env:
            found.append(int(d))
    return found


def alive(pid):
    """A thread of `pid` still runs: a killed process's first thread is a zombie while another
    can still be finishing a write, holding the process's files and locks."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2] not in "ZX":
            return True
    return False


def wait_for(predicate, timeout=30.0, what="condition"):
    """Polls `predicate` until it is true; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# Protobuf by hand, for tests that speak the protocol themselves (Debian's Python has no
# protobuf in the test dependencies): varints, length-delimited and varint fields, frames.
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_bytes(field, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def pb_int(field, value) -> bytes:
    return varint(field << 3) + varint(value)


def pb_fields(data):
    """The fields of a protobuf message: {number: [values]} (bytes or ints)."""
    out, i = {}, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        num, kind = key >> 3, key & 7
        if kind == 0:
            value, i = _read_varint(data, i)
        elif kind == 2:
            n, i = _read_varint(data, i)
            value, i = data[i:i + n], i + n
        else:
            raise AssertionError(f"unexpected wire type {kind}")
        out.setdefault(num, []).append(value)
    return out


def _read_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def read_frame(sock):
    """The next frame's bytes, or None at the end of the stream."""
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
    return body


class Sortie:
    """Runs `sortie` commands against one temporary profile."""

    def __init__(self, home: Path):
        self.home = home
        self.profile = home / "default"
        self.bin = sortie_binary()
        self.env = dict(os.environ)
        self.env["SORTIE_HOME"] = str(home)
        self.env.pop("SORTIE_PROFILE", None)

    def run(self, *args, check=True, timeout=120, profile=None):
        cmd = [self.bin] + (["--profile", profile] if profile else []) + [str(a) for a in args]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout,
                           cwd=str(self.home))
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout: {p.stdout}\n"
                                 f"stderr: {p.stderr}")
        return p

    def json(self, *args, **kw):
        return json.loads(self.run(*args, "--json", **kw).stdout)

    def configure(self, **hub):
        self.profile.mkdir(parents=True, exist_ok=True)
        lines = ["[hub]"] + [f'{k} = {json.dumps(v)}' for k, v in hub.items()]
        (self.profile / "config.toml").write_text("\n".join(lines) + "\n")

    def start(self):
        return self.run("hub", "start")

    def hub_file(self):
        return json.loads((self.profile / "hub.json").read_text())

    def hub_pid(self):
        return self.hub_file()["pid"]

    def tls_connect(self, timeout=10, hf=None):
        """A TCP connection to the hub with TLS under it, as sortie's own peers make it: TLS 1.3,
        the hub's certificate checked against hub.json's tls_fingerprint (no authority)."""
        hf = hf or self.hub_file()
        raw = socket.create_connection((hf["host"], hf["port"]), timeout=timeout)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        s = ctx.wrap_socket(raw)
        seen = hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()
        assert seen == hf["tls_fingerprint"], "the hub's certificate is not the pinned one"
        return s

    def submit(self, *cmd, opts=()):
        out = self.run("submit", *opts, "--", *cmd).stdout.strip()
        first, _, last = out.partition("-")
        return int(first) if not last else (int(first), int(last))

    def jobs(self, *args):
        return self.json("job", "list", *args)

    def job(self, job_id):
        return self.json("job", "show", job_id)

    def wait_state(self, job_id, states, timeout=30):
        states = {states} if isinstance(states, str) else set(states)
        return wait_for(lambda: (j := self.job(job_id))["state"] in states and j,
                        timeout, f"job {job_id} to be {states}")

    def add_pilot(self, *args, wait=True):
        pid = int(self.run("pilot", "add", *args).stdout.strip())
        if wait:
            wait_for(lambda: any(p["id"] == pid and p["state"] == "running" and
                                 p["nodes_up"] == p["nodes"] for p in self.json("pilot", "list")),
                     30, f"pilot {pid} to run")
        return pid

    def agent_pids(self, node=None):
        """Agent processes (not their keepers, which share the command line)."""
        found = []
        for p in processes_with_env(b"SORTIE_HOME=" + str(self.home).encode()):
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
                comm = Path(f"/proc/{p}/comm").read_text().strip()
            except OSError:
                continue
            if b"agent" in cmd and comm != "sortie-keeper" and \
                    (node is None or node.encode() in cmd):
                found.append(p)
        return found


FAST = dict(heartbeat_interval="500ms", agent_reconnect_window="4s", kill_grace="1s")


# A directory name every shell would misread unless sortie quotes it: `$(true)` and the
# backquotes would vanish, the quotes and `;` end words. A profile under it works only if every
# script and command line that names it quotes it.
HOSTILE_DIR = "it's $(true) `true` a;b \"q\""


def pytest_configure(config):
    config.addinivalue_line("markers", "hostile_home: the profile lives under HOSTILE_DIR")
    config.addinivalue_line("markers", "damages_store: the test leaves a damaged store on purpose")


@pytest.fixture
def sortie(tmp_path, request):
    home = tmp_path / "home"
    if request.node.get_closest_marker("hostile_home"):
        home = tmp_path / HOSTILE_DIR / "home"
    home.mkdir(parents=True)
    s = Sortie(home)
    s.configure(**FAST)
    yield s
    entry = b"SORTIE_HOME=" + str(home).encode()
    try:
        subprocess.run([s.bin, "hub", "stop"], env=s.env, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pass
    # Whatever is still there after a clean stop was left behind by sortie.
    try:
        wait_for(lambda: not processes_with_env(entry), 15, "sortie's processes to exit")
        leftover = []
    except pytest.fail.Exception:
        leftover = processes_with_env(entry)
    for pid in leftover:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Whatever the test did, the store it leaves is intact (tests that damage it on purpose say
    # so with the damages_store marker).
    intact = None
    if (s.profile / "store.db").exists() and not request.node.get_closest_marker("damages_store"):
        p = subprocess.run([s.bin, "hub", "check"], env=s.env, capture_output=True, text=True,
                           timeout=120)
        intact = p.returncode == 0 or "is running" in p.stderr, p.stdout + p.stderr
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed or leftover:
        for log in sorted(s.profile.glob("*.log")) + sorted((s.profile / "logs").glob("*.log")):
            print(f"===== {log.name} =====\n{log.read_text(errors='replace')[-6000:]}")
    shutil.rmtree(home, ignore_errors=True)
    assert not leftover, f"processes left behind: {leftover}"
    assert intact is None or intact[0], f"the store is not intact: {intact[1]}"


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
