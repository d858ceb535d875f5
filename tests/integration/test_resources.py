# SPDX-License-Identifier: Apache-2.0
"""Resources and remote pilots against the real things: OpenSSH servers on 127.0.0.1 and in
network namespaces, a two-node Slurm (both nodes on this host) and a single-host Grid Engine, all started by
scripts/testbeds/ (scripts/check.sh brings them up first and down after).
"""
import os
import re
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, alive, wait_for

TESTBEDS = ROOT / "scripts" / "testbeds"


def ssh_options():
    return subprocess.run([str(TESTBEDS / "sshd.sh"), "env"], capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.fixture(scope="session")
def sshd():
    opts = ssh_options()
    p = subprocess.run(["ssh", *opts, "-oBatchMode=yes", "-p", "2222", "root@127.0.0.1", "true"],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        pytest.fail(f"the test sshd is not running (scripts/testbeds/sshd.sh up): {p.stderr}")
    return opts


@pytest.fixture(scope="session")
def slurm():
    p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0 or "UP" not in p.stdout:
        pytest.fail(f"Slurm is not running (scripts/testbeds/slurm.sh up): {p.stdout}{p.stderr}")


def processes_where(match):
    """Live processes whose argument list (bytes) satisfies `match`."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            args = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if match(args) and alive(int(d)):
            found.append(int(d))
    return found


def processes_with_arg(word):
    """Live processes whose command line has `word` as one argument."""
    return processes_where(lambda args: word.encode() in args)


def ssh_clients(label):
    """The hub's ssh processes for agents with this label (the remote command is one argument)."""
    return processes_where(lambda args: args[0] == b"ssh" and len(args) > 2 and
                           label.encode() in args[-2])


def pilot(sortie, pid):
    return next(p for p in sortie.json("pilot", "list") if p["id"] == pid)


def run_pilot(sortie, resource, *args, timeout="60s"):
    """Adds a pilot on `resource` and waits until it runs with all its nodes; returns its id."""
    pid = int(sortie.run("pilot", "add", "--resource", resource, *args).stdout)
    sortie.run("pilot", "wait", pid, "--timeout", timeout)
    return pid


def add_ssh_resource(sortie, name, location, opts, *extra):
    sortie.run("resource", "add", name, "--type", "ssh", "--location", location,
               *[f"--ssh-option={o}" for o in opts], *extra)
    # (-F FILE: the test beds' own keys and known hosts, also used for ProxyJump hops.)


@pytest.fixture
def label():
    """A label unique to the test: it is on the command line of every agent the test starts,
    so the test can tell that none is left."""
    word = "t" + uuid.uuid4().hex[:10]
    yield word
    wait_for(lambda: not processes_with_arg(word), 30, f"agents labelled {word} to exit")


def test_ssh_pilot_with_two_nodes_runs_200_jobs(sortie, sshd, label):
    sortie.start()
    add_ssh_resource(sortie, "lab", "root@127.0.0.1:2222,root@127.0.0.1:2223", sshd)
    pid = run_pilot(sortie, "lab", "--slots", "2", "--label", label)
    p = pilot(sortie, pid)
    assert p["state"] == "running" and p["nodes_up"] == 2 == p["nodes"]
    assert p["slots_total"] == 4
    first, last = sortie.submit("sh", "-c", "echo $SORTIE_NODE", opts=["--array", "1-200"])
    sortie.run("job", "wait", f"{first}-{last}", timeout=180)
    jobs = sortie.jobs()
    assert len(jobs) == 200 and all(j["state"] == "succeeded" for j in jobs)
    nodes = {j["node"] for j in jobs}
    assert nodes == {"127.0.0.1-1", "127.0.0.1-2"}
    # Output came back through the ssh links.
    assert sortie.run("job", "logs", first).stdout.strip() in nodes
    sortie.run("pilot", "cancel", pid)
    wait_for(lambda: pilot(sortie, pid)["state"] == "cancelled", 30, "the pilot to be cancelled")


def test_a_silent_ssh_link_is_noticed_and_the_jobs_there_are_killed(sortie, sshd, label):
    sortie.start()
    add_ssh_resource(sortie, "lab", "root@127.0.0.1:2222", sshd)
    pid = run_pilot(sortie, "lab", "--slots", "1", "--label", label)
    marker = f"{uuid.uuid4().int % 1000 + 3000}.5"  # a unique `sleep` argument
    job = sortie.submit("sleep", marker, opts=["--label", label])
    sortie.wait_state(job, "running")
    wait_for(lambda: processes_with_arg(marker), 10, "the job's process")
    # Freeze the ssh client: the link goes silent in both directions, as when a network hangs.
    ssh = ssh_clients(label)
    assert len(ssh) == 1
    os.kill(ssh[0], signal.SIGSTOP)
    try:
        # The hub's heartbeat deadline (2 s here) ends the link; the job is lost and requeued.
        wait_for(lambda: sortie.job(job)["state"] == "queued", 30, "the job to be requeued")
        # The agent's own deadline: it kills the job and exits.
        wait_for(lambda: not processes_with_arg(marker), 30, "the job's process to be killed")
        p = wait_for(lambda: (q := pilot(sortie, pid))["state"] == "ended" and q, 30,
                     "the pilot to end")
        assert "heartbeat deadline" in p["reason"] and "ssh link" in p["reason"], p["reason"]
        shown = sortie.job(job)
        assert any(h["state"] == "lost" for h in shown["history"]), shown["history"]
    finally:
        for s in ssh:
            if alive(s):
                os.kill(s, signal.SIGKILL)
                os.kill(s, signal.SIGCONT)
    sortie.run("job", "cancel", job)


def test_ssh_pilots_end_with_the_hub_that_started_them(sortie, sshd, label):
    sortie.start()
    add_ssh_resource(sortie, "lab", "root@127.0.0.1:2222", sshd)
    pid = run_pilot(sortie, "lab", "--slots", "1", "--label", label)
    marker = f"{uuid.uuid4().int % 1000 + 5000}.5"
    job = sortie.submit("sleep", marker, opts=["--label", label])
    sortie.wait_state(job, "running")
    hub = sortie.hub_pid()
    os.kill(hub, signal.SIGKILL)
    wait_for(lambda: not alive(hub), 10, "the hub to die")
    # The remote agent lost its link with the hub's pipes: it kills its job and exits.
    wait_for(lambda: not processes_with_arg(marker), 30, "the job's process to be killed")
    for ssh in ssh_clients(label):  # the dead hub's ssh processes end by themselves
        wait_for(lambda: not alive(ssh), 30, "the old ssh process to end")
    sortie.start()
    p = pilot(sortie, pid)
    assert p["state"] == "ended" and "the hub restarted" in p["reason"], p
    # The job was lost with it, and waits for another pilot.
    wait_for(lambda: sortie.job(job)["state"] == "queued", 30, "the job to be requeued")
    sortie.run("job", "cancel", job)


def test_a_machinefile_defines_the_nodes_and_their_slots(sortie, sshd, label, tmp_path):
    sortie.start()
    hosts = tmp_path / "hosts"
    hosts.write_text("# two nodes on the test sshd\n127.0.0.1 slots=3\nroot@127.0.0.1:1\n")
    sortie.run("resource", "add", "farm", "--type", "ssh", "--machinefile", hosts,
               *[f"--ssh-option={o}" for o in sshd], "--ssh-option=-p", "--ssh-option=2222")
    pid = run_pilot(sortie, "farm", "--label", label)
    p = pilot(sortie, pid)
    assert p["nodes"] == 2 and p["nodes_up"] == 2 and p["slots_total"] == 4, p
    sortie.run("pilot", "cancel", pid)
    wait_for(lambda: pilot(sortie, pid)["state"] == "cancelled", 30, "the pilot to be cancelled")


def test_install_dir_names_the_remote_binary(sortie, sshd, label, tmp_path):
    # An installed tree elsewhere (as `cmake --install --prefix DIR` makes it).
    (tmp_path / "opt" / "bin").mkdir(parents=True)
    shutil.copy(sortie.bin, tmp_path / "opt" / "bin" / "sortie")
    sortie.start()
    add_ssh_resource(sortie, "lab", "root@127.0.0.1:2222", sshd, "--install-dir",
                     tmp_path / "opt")
    pid = run_pilot(sortie, "lab", "--slots", "1", "--label", label)
    (ssh,) = ssh_clients(label)
    command = Path(f"/proc/{ssh}/cmdline").read_bytes().split(b"\0")[-2].decode()
    assert command.startswith(f"{tmp_path}/opt/bin/sortie agent --stdio"), command
    sortie.run("pilot", "cancel", pid)
    wait_for(lambda: pilot(sortie, pid)["state"] == "cancelled", 30, "the pilot to be cancelled")
    # A wrong one: the remote shell cannot find it, and the pilot says so.
    add_ssh_resource(sortie, "broken", "root@127.0.0.1:2222", sshd, "--install-dir", "/nonexistent")
    pid = int(sortie.run("pilot", "add", "--resource", "broken").stdout)
    p = wait_for(lambda: (q := pilot(sortie, pid))["state"] == "failed" and q, 60,
                 "the pilot to fail")
    assert "/nonexistent/bin/sortie" in p["reason"] and "exit status 127" in p["reason"], p


def test_ssh_errors_reach_the_pilot(sortie, sshd):
    sortie.start()
    # A port where nothing listens: ssh fails, and the pilot says how.
    add_ssh_resource(sortie, "nowhere", "root@127.0.0.1:2299", sshd)
    pid = int(sortie.run("pilot", "add", "--resource", "nowhere").stdout)
    r = sortie.run("pilot", "wait", pid, "--timeout", "60s", check=False)
    assert r.returncode == 1
    p = pilot(sortie, pid)
    assert p["state"] == "failed"
    assert "ssh to root@127.0.0.1 ended (exit status 255)" in p["reason"], p["reason"]
    assert "Connection refused" in p["reason"], p["reason"]


def test_resource_definitions_are_checked(sortie, sshd):
    sortie.start()
    r = sortie.run("resource", "add", "x", "--type", "pbs", check=False)
    assert r.returncode == 2 and "resource type 'pbs' is not known" in r.stderr
    r = sortie.run("resource", "add", "x", "--type", "ssh", check=False)
    assert r.returncode == 2 and "needs --location" in r.stderr
    r = sortie.run("resource", "add", "x", "--type", "ssh", "--location", "-oProxyCommand=x",
                   check=False)
    assert r.returncode == 2 and "is not a host" in r.stderr
    r = sortie.run("resource", "add", "x", "--type", "ssh", "--location", "h", "--gateway", "gw",
                   check=False)
    assert r.returncode != 0 and "gateway 'gw'" in r.stderr
    add_ssh_resource(sortie, "gw", "root@127.0.0.1:2222", sshd)
    add_ssh_resource(sortie, "inner", "root@127.0.0.1:2223", sshd, "--gateway", "gw")
    r = sortie.run("resource", "rm", "gw", check=False)
    assert r.returncode != 0 and "is the gateway of 'inner'" in r.stderr
    r = sortie.run("pilot", "add", "--resource", "nope", check=False)
    assert r.returncode != 0 and "resource 'nope' is not defined" in r.stderr
    names = [x["name"] for x in sortie.json("resource", "list")]
    assert names == ["local", "gw", "inner"]
    # Resources are stored: they are there after a restart.
    sortie.run("hub", "stop")
    sortie.start()
    assert [x["name"] for x in sortie.json("resource", "list")] == ["local", "gw", "inner"]


def test_resources_and_pilots_declared_in_config_toml(sortie, sshd, label):
    options = ", ".join(f'"{o}"' for o in sshd)
    (sortie.profile / "config.toml").write_text(f"""
[hub]
heartbeat_interval = "500ms"
kill_grace = "1s"

[resources.lab]
type = "ssh"
location = "root@127.0.0.1:2222"
ssh_options = [{options}]

[[pilots]]
name = "workstation"
resource = "lab"
slots_per_node = 2
label = "{label}"
""")
    sortie.start()
    sortie.run("pilot", "wait", "--all", "--timeout", "60s")
    (p,) = sortie.json("pilot", "list")
    assert p["resource"] == "lab" and p["state"] == "running" and p["slots_total"] == 2
    lab = next(r for r in sortie.json("resource", "list") if r["name"] == "lab")
    assert lab["from_config"] and lab["type"] == "ssh"
    r = sortie.run("resource", "rm", "lab", check=False)
    assert r.returncode != 0 and "defined in config.toml" in r.stderr
    job = sortie.submit("true", opts=["--label", label])
    sortie.run("job", "wait", job)
    local = sortie.add_pilot("--resource", "local", "--slots", "1")
    # Declared pilots start with every hub start (ssh pilots end with the hub). A hub stop ends
    # every kind of pilot the same way.
    sortie.run("hub", "stop")
    sortie.start()
    sortie.run("pilot", "wait", "--all", "--timeout", "60s", check=False)
    pilots = sortie.json("pilot", "list")
    assert [q["state"] for q in pilots] == ["ended", "ended", "running"], pilots
    assert pilots[1]["id"] == local
    assert [q["reason"] for q in pilots[:2]] == ["the hub stopped"] * 2, pilots
    sortie.run("hub", "stop")
    # A mistake in a [[pilots]] table names its place.
    text = (sortie.profile / "config.toml").read_text().replace("slots_per_node", "slotz")
    (sortie.profile / "config.toml").write_text(text)
    r = sortie.run("hub", "start", check=False)
    assert r.returncode != 0
    assert re.search(r"config\.toml:\d+:\d+: unknown key pilots\.slotz", r.stderr), r.stderr


def test_ssh_pilot_through_a_gateway(sortie, sshd, label):
    """ProxyJump through another ssh resource (here both are the test sshds on loopback; the
    network-namespace version with an unreachable compute host is in test_netns.py)."""
    sortie.start()
    add_ssh_resource(sortie, "login", "root@127.0.0.1:2222", sshd)
    add_ssh_resource(sortie, "compute", "root@127.0.0.1:2223", sshd, "--gateway", "login")
    pid = run_pilot(sortie, "compute", "--slots", "2", "--label", label)
    job = sortie.submit("sh", "-c", "echo $SSH_CONNECTION", opts=["--label", label])
    sortie.run("job", "wait", job)
    # The agent's ssh session reached sshd :2223 from the jump host's side.
    assert sortie.run("job", "logs", job).stdout.split()[-1] == "2223"
    ssh = ssh_clients(label)
    args = Path(f"/proc/{ssh[0]}/cmdline").read_bytes().split(b"\0")
    assert b"-J" in args and b"root@127.0.0.1:2222" in args
    sortie.run("pilot", "cancel", pid)
    wait_for(lambda: pilot(sortie, pid)["state"] == "cancelled", 30, "the pilot to be cancelled")
    # Chains: compute2 -> compute -> login becomes -J login,compute (outermost first).
    add_ssh_resource(sortie, "compute2", "root@127.0.0.1:2222", sshd, "--gateway", "compute")
    pid = run_pilot(sortie, "compute2", "--slots", "1", "--label", label)
    args = Path(f"/proc/{ssh_clients(label)[0]}/cmdline").read_bytes().split(b"\0")
    assert args[args.index(b"-J") + 1] == b"root@127.0.0.1:2222,root@127.0.0.1:2223"
    sortie.run("pilot", "cancel", pid)
    # A circle of gateways is refused.
    r = sortie.run("resource", "add", "login", "--type", "ssh", "--location", "root@127.0.0.1",
                   "--gateway", "compute2", "--replace", check=False)
    assert r.returncode == 2 and "go round in a circle" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# Batch systems: the same tests for Slurm and Grid Engine

SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}


def batch_job_state(system, batch_id):
    """What the batch system says of the job: its state word, or "" once it is gone."""
    if system == "slurm":
        return subprocess.run(["squeue", "-h", "-j", batch_id, "-o", "%T"], capture_output=True,
                              text=True).stdout.strip()
    env = dict(os.environ, **SGE_ENV)
    out = subprocess.run(["/usr/lib/gridengine/qstat"], capture_output=True, text=True,
                         env=env).stdout
    for line in out.splitlines():
        cols = line.split()
        if cols and cols[0] == batch_id:
            return cols[4]
    return ""


@pytest.fixture(scope="session")
def sge():
    env = dict(os.environ, **SGE_ENV)
    p = subprocess.run(["/usr/lib/gridengine/qconf", "-sql"], capture_output=True, text=True,
                       env=env, timeout=30)
    if p.returncode != 0 or "all.q" not in p.stdout:
        pytest.fail(f"Grid Engine is not running (scripts/testbeds/sge.sh up): {p.stderr}")


def batch_profile(request, sortie, system):
    """A started hub with resource `cluster` on the batch system's test bed."""
    request.getfixturevalue(system)
    if system == "sge":
        # As on a cluster's login node: the Grid Engine environment is set up.
        sortie.env.update(SGE_ENV)
        sortie.env["PATH"] = "/usr/lib/gridengine:" + sortie.env["PATH"]
    sortie.configure(heartbeat_interval="500ms", agent_reconnect_window="4s", kill_grace="1s",
                     batch_poll_interval="500ms")
    sortie.start()
    sortie.run("resource", "add", "cluster", "--type", system)
    sortie.system = system
    return sortie


@pytest.fixture(params=["slurm", "sge"])
def batch(request, sortie):
    return batch_profile(request, sortie, request.param)


def test_slurm_pilot_on_two_nodes_starts_an_agent_on_each(request, sortie):
    s = batch_profile(request, sortie, "slurm")
    pid = run_pilot(s, "cluster", "--nodes", "2", "--slots-per-node", "2", timeout="90s")
    p = pilot(s, pid)
    assert p["nodes_up"] == 2 and p["slots_total"] == 4, p
    first, last = s.submit("sh", "-c", 'echo "$SLURMD_NODENAME"', opts=["--array", "1-40"])
    s.run("job", "wait", f"{first}-{last}", timeout=120)
    jobs = s.jobs()
    assert {j["node"] for j in jobs} == {"n1", "n2"}  # the test bed's two slurmd
    for j in jobs[:10]:
        assert s.run("job", "logs", j["id"]).stdout.strip() == j["node"]
    s.run("pilot", "cancel", pid)
    wait_for(lambda: batch_job_state("slurm", p["batch_id"]) == "", 60, "the batch job to end")
    wait_for(lambda: not s.agent_pids(), 30, "its agents to exit")


@pytest.mark.hostile_home
@pytest.mark.parametrize("system", ["slurm", "sge"])
def test_hostile_paths_reach_batch_scripts_and_ssh_lines_as_plain_words(request, sortie, system,
                                                                         sshd, label, tmp_path):
    """The profile directory (in the batch script's agent line) and an install dir (in the ssh
    command line) hold quotes, `$(...)`, backquotes and `;`: the pilots run only if each is
    passed as one word, unexpanded."""
    assert "$(true)" in str(sortie.home)
    s = batch_profile(request, sortie, system)
    pid = run_pilot(s, "cluster", "--slots", "1", "--label", label, timeout="90s")
    job = s.submit("sh", "-c", 'echo "$SORTIE_NODE"', opts=["--label", label])
    s.run("job", "wait", job, timeout=120)
    s.run("pilot", "cancel", pid)
    opt = sortie.home.parent / "opt"
    (opt / "bin").mkdir(parents=True)
    shutil.copy(sortie.bin, opt / "bin" / "sortie")
    add_ssh_resource(s, "lab", "root@127.0.0.1:2222", sshd, "--install-dir", opt)
    pid = run_pilot(s, "lab", "--slots", "1", "--label", label)
    job = s.submit("true", opts=["--label", label])
    s.run("job", "wait", job)
    s.run("pilot", "cancel", pid)
    wait_for(lambda: pilot(s, pid)["state"] == "cancelled", 30, "the ssh pilot to end")


def test_batch_pilot_runs_200_jobs_and_cancel_removes_its_batch_job(batch):
    s = batch
    pid = run_pilot(s, "cluster", "--slots", "2", timeout="90s")
    p = pilot(s, pid)
    assert p["state"] == "running" and p["batch_id"], p
    batch_id = p["batch_id"]
    assert batch_job_state(s.system, batch_id) in ("RUNNING", "r", "t")
    log = (s.profile / "hub.log").read_text()
    assert f"pilot {pid}: submitting -> pending (batch job {batch_id})" in log
    assert f"pilot {pid}: pending -> running" in log
    first, last = s.submit("true", opts=["--array", "1-200"])
    s.run("job", "wait", f"{first}-{last}", timeout=180)
    assert all(j["state"] == "succeeded" for j in s.jobs())
    s.run("pilot", "cancel", pid)
    wait_for(lambda: batch_job_state(s.system, batch_id) == "", 60,
             "the batch system to show the pilot's job gone")
    wait_for(lambda: pilot(s, pid)["state"] == "cancelled", 30, "the pilot to be cancelled")
    wait_for(lambda: not s.agent_pids(), 30, "its agents to exit")


def test_batch_pilot_with_a_walltime_drains_then_ends(batch):
    s = batch
    pid = run_pilot(s, "cluster", "--slots", "1", "--time", "1m", timeout="90s")
    script = (s.profile / "logs" / f"pilot-{pid}.{s.system}.sh").read_text()
    assert ("#SBATCH --time=0:01:00" if s.system == "slurm" else "#$ -l h_rt=0:01:00") in script
    # Shortly before the minute is over it takes no new jobs...
    wait_for(lambda: pilot(s, pid)["state"] == "draining", 90, "the pilot to drain")
    job = s.submit("true")
    assert s.job(job)["state"] == "queued"
    # ...then it ends on its own, and the job stays queued for another pilot.
    p = wait_for(lambda: (q := pilot(s, pid))["state"] == "ended" and q, 90, "the pilot to end")
    assert "walltime of 1m" in p["reason"], p["reason"]
    wait_for(lambda: batch_job_state(s.system, p["batch_id"]) == "", 60, "the batch job to end")
    assert s.job(job)["state"] == "queued"
    s.run("job", "cancel", job)


def kill_hub_and_restart(sortie):
    pid = sortie.hub_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10, "the hub to die")
    sortie.start()


def test_batch_pilot_survives_a_hub_restart(batch):
    s = batch
    pid = run_pilot(s, "cluster", "--slots", "2", timeout="90s")
    batch_id = pilot(s, pid)["batch_id"]
    kill_hub_and_restart(s)
    # The new hub follows the batch job again, and the agents reconnect to it.
    s.run("pilot", "wait", pid, "--timeout", "60s")
    assert pilot(s, pid)["batch_id"] == batch_id
    first, last = s.submit("true", opts=["--array", "1-10"])
    s.run("job", "wait", f"{first}-{last}", timeout=60)
    s.run("pilot", "cancel", pid)
    wait_for(lambda: batch_job_state(s.system, batch_id) == "", 60, "the batch job to end")
    wait_for(lambda: pilot(s, pid)["state"] == "cancelled", 30, "the pilot to be cancelled")


def test_batch_refusal_shows_the_batch_systems_message(batch):
    s = batch
    pid = int(s.run("pilot", "add", "--resource", "cluster", "--queue", "nope").stdout)
    p = wait_for(lambda: (q := pilot(s, pid))["state"] == "failed" and q, 30, "the pilot to fail")
    want = (r"sbatch refused the pilot: exit status 1: sbatch: error: invalid partition "
            r"specified: nope") if s.system == "slurm" else \
        r'qsub refused the pilot: exit status 1: Unable to run job: .*unknown queue "nope"'
    assert re.search(want, p["reason"]), p["reason"]
    r = s.run("pilot", "wait", pid, "--timeout", "5s", check=False)
    assert r.returncode == 1 and "refused the pilot" in r.stderr


# ---------------------------------------------------------------------------------------------
# Network namespaces: a compute host reachable only through a login host

@pytest.fixture(scope="session")
def netns(sshd):
    p = subprocess.run(["ip", "route", "show", "10.201.0.0/24"], capture_output=True, text=True)
    if "unreachable" not in p.stdout:
        pytest.fail("the network-namespace hosts are not up (scripts/testbeds/netns.sh up)")
    return sshd


def test_ssh_gateway_reaches_a_compute_host_behind_a_login_host(sortie, netns, label):
    # From here the compute host cannot be reached at all...
    direct = subprocess.run(["ssh", *netns, "-oBatchMode=yes", "root@10.201.0.130", "true"],
                            capture_output=True, text=True, timeout=30)
    assert direct.returncode == 255 and "No route to host" in direct.stderr
    # ...but through the login host it can, and the pilot's agent runs there.
    sortie.start()
    add_ssh_resource(sortie, "login", "root@10.201.0.11", netns)
    add_ssh_resource(sortie, "compute", "root@10.201.0.130", netns, "--gateway", "login")
    pid = run_pilot(sortie, "compute", "--slots", "2", "--label", label)
    first, last = sortie.submit("hostname", opts=["--array", "1-20", "--label", label])
    sortie.run("job", "wait", f"{first}-{last}", timeout=120)
    outputs = {sortie.run("job", "logs", j).stdout.strip() for j in range(first, last + 1)}
    assert outputs == {"sx-compute"}
    assert {j["node"] for j in sortie.jobs()} == {"10.201.0.130"}
    sortie.run("pilot", "cancel", pid)
    wait_for(lambda: pilot(sortie, pid)["state"] == "cancelled", 30, "the pilot to be cancelled")


@pytest.mark.parametrize("wrapper, seen", [
    # A login script that talks on standard output before the protocol.
    ('echo "Welcome to the cluster"\nexec "$(dirname "$0")/sortie.real" "$@"', "Welcome"),
    # A remote side that never answers.
    ('exec sleep 600', "handshake not completed"),
])
def test_an_ssh_pilot_whose_agent_never_speaks_fails_with_what_was_seen(
        sortie, sshd, tmp_path, wrapper, seen):
    (tmp_path / "opt" / "bin").mkdir(parents=True)
    shutil.copy(sortie.bin, tmp_path / "opt" / "bin" / "sortie.real")
    script = tmp_path / "opt" / "bin" / "sortie"
    script.write_text("#!/bin/sh\n" + wrapper + "\n")
    script.chmod(0o755)
    sortie.start()
    add_ssh_resource(sortie, "chatty", "root@127.0.0.1:2222", sshd, "--install-dir",
                     tmp_path / "opt")
    pid = int(sortie.run("pilot", "add", "--resource", "chatty").stdout)
    r = sortie.run("pilot", "wait", pid, "--timeout", "60s", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    p = pilot(sortie, pid)
    assert p["state"] == "failed", p
    assert "did not register" in p["reason"] and seen in p["reason"], p["reason"]


@pytest.mark.parametrize("system", ["slurm", "sge"])
def test_two_batch_pilots_on_one_node_both_run_jobs(request, sortie, system):
    s = batch_profile(request, sortie, system)
    # Both on one node: Slurm's n1; Grid Engine has a single execution host.
    place = ["--option=--nodelist=n1"] if system == "slurm" else []
    pilots = [run_pilot(s, "cluster", "--slots", "1", "--label", f"p{k}", *place, timeout="90s")
              for k in range(2)]
    nodes = {pilot(s, p)["id"]: pilot(s, p) for p in pilots}
    assert all(p["state"] == "running" and p["nodes_up"] == 1 for p in nodes.values()), nodes
    jobs = [s.submit("true", opts=["--label", f"p{k}"]) for k in range(2)]
    s.run("job", "wait", *jobs, timeout=120)
    shown = [s.job(j) for j in jobs]
    assert all(j["state"] == "succeeded" for j in shown), shown
    assert len({j["node"] for j in shown}) == 1, shown  # one node, two pilots
    for p in pilots:
        s.run("pilot", "cancel", p)


def test_a_batch_option_that_is_not_an_option_is_refused(request, sortie):
    s = batch_profile(request, sortie, "slurm")
    r = s.run("pilot", "add", "--resource", "cluster", "--option", "evil.sh", check=False)
    assert r.returncode != 0 and "is not an option of the batch system" in r.stderr, r.stderr


def test_a_pilot_that_waits_in_the_batch_queue_says_why(request, sortie):
    s = batch_profile(request, sortie, "slurm")
    # The test bed's partition has two nodes: a pilot of five waits (or is refused) with
    # Slurm's own reason, which `pilot list` shows.
    pid = int(s.run("pilot", "add", "--resource", "cluster", "--nodes", "5").stdout)
    p = wait_for(lambda: (q := pilot(s, pid))["reason"] and q, 30, "the pilot to say why it waits")
    assert "waiting in the batch queue: " in p["reason"] or p["state"] == "failed", p
    assert "Partition" in p["reason"] or "node" in p["reason"].lower(), p["reason"]
    s.run("pilot", "cancel", pid)


def test_an_ssh_pilot_says_which_of_its_nodes_failed(sortie, sshd, label):
    sortie.start()
    add_ssh_resource(sortie, "pair", "root@127.0.0.1:2222,root@127.0.0.1:2299", sshd)
    pid = int(sortie.run("pilot", "add", "--resource", "pair", "--slots", "1", "--label",
                         label).stdout)
    p = wait_for(lambda: (q := pilot(sortie, pid))["nodes_up"] == 1 and
                 "ssh to root@127.0.0.1 ended" in q["reason"] and q, 60,
                 "the pilot to run on one node and say why the other is missing")
    assert p["state"] == "running" and "Connection refused" in p["reason"], p
    shown = sortie.run("pilot", "show", pid).stdout
    assert "1 of 2 up" in shown and "Connection refused" in shown, shown
    assert len(sortie.run("pilot", "list").stdout.splitlines()) == 2  # a header, one line
    sortie.run("pilot", "cancel", pid)
    wait_for(lambda: pilot(sortie, pid)["state"] == "cancelled", 30, "the pilot to be cancelled")
