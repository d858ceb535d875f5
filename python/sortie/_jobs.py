# SPDX-License-Identifier: Apache-2.0
"""Command jobs, pilots, resources and engines as the client returns them: ``Job`` (a handle
that asks the hub), and ``Pilot``, ``Resource`` and ``EngineInfo`` (snapshots, the rows of
``sortie pilot list``, ``sortie resource list`` and ``sortie engine list``)."""
import dataclasses

from ._errors import SortieError

__all__ = ["Job", "Pilot", "Resource", "EngineInfo"]

FINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out", "lost"})


class Job:
    """A command job: ``Client.submit_job`` returns one. Every method asks the hub."""

    def __init__(self, client, job_id):
        self._client = client
        self.id = job_id

    def info(self):
        """The job's record: a dict with id, state, exit_code, signal, reason, node, attempt,
        submit_ms, start_ms, end_ms, kind."""
        return self._client._hub_call("job", self.id)

    def state(self):
        """"queued", "assigned", "running", "succeeded", "failed", "cancelled", "timed_out" or
        "lost"."""
        return self.info()["state"]

    @property
    def exit_code(self):
        """The exit code once the job's process exited; None before, and when a signal ended
        it (see ``signal``)."""
        return self.info()["exit_code"]

    @property
    def signal(self):
        """The signal that ended the job's process, or None."""
        return self.info()["signal"]

    def wait(self, timeout=None):
        """Waits until the job has ended (in any final state) and returns it; TimeoutError after
        `timeout` seconds. A job that failed does not raise: look at ``state()`` and
        ``exit_code``."""
        try:
            self._client._hub_call("wait_jobs", [self.id], timeout)
        except SortieError as e:
            if e.code != "timeout":
                raise
            raise TimeoutError(f"job {self.id} has not ended after {timeout}s (it is "
                               f"{self.state()})") from None
        return self

    def stdout(self):
        """The job's standard output so far, as text."""
        return self._client._hub_call("job_output", self.id, "stdout").decode("utf-8", "replace")

    def stderr(self):
        """The job's standard error so far, as text."""
        return self._client._hub_call("job_output", self.id, "stderr").decode("utf-8", "replace")

    def cancel(self):
        """Cancels the job (its processes get SIGTERM, then SIGKILL); True if it had not ended."""
        return self._client._hub_call("cancel_jobs", [self.id]) > 0

    def __eq__(self, other):
        return isinstance(other, Job) and other._client is self._client and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<sortie.Job {self.id}>"


def _from_dict(cls, row):
    """An instance of the dataclass `cls` from a dict of the compiled module (extra keys are
    ignored, so a newer hub's additions do not break an older client)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in row.items() if k in names})


@dataclasses.dataclass(frozen=True)
class Pilot:
    """A pilot as the hub saw it when listed. ``state`` is one of defined, submitting, pending,
    running, draining, ended, failed, cancelled; ``end_ms`` is when its walltime ends, in Unix
    milliseconds, when it has one."""
    id: int
    resource: str
    state: str
    nodes: int
    nodes_up: int
    slots_used: int
    slots_total: int
    label: str = ""
    reason: str = ""
    end_ms: int = 0

    from_dict = classmethod(_from_dict)


@dataclasses.dataclass(frozen=True)
class Resource:
    """A resource: where pilots can run (docs/resources.md)."""
    name: str
    type: str
    location: str = ""
    install_dir: str = ""
    tmp_dir: str = ""
    gateway: str = ""
    ssh_options: tuple = ()
    machinefile: str = ""

    from_dict = classmethod(_from_dict)

    def __post_init__(self):
        object.__setattr__(self, "ssh_options", tuple(self.ssh_options))


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    """An engine that is up (``Client.engine_info``, ``sortie engine list``): its id, its job and
    MPI rank, where it runs, its label, whether it runs a task now ("busy") or not ("idle"),
    the tasks it finished, its kind ("python" or "cpp"), and its link to the hub ("direct" for
    an engine of a local pilot, else "agent": through its agent)."""
    id: int
    job: int
    node: str
    label: str
    state: str
    rank: int = 0
    size: int = 1
    pid: int = 0
    tasks_done: int = 0
    running: int = 0
    started_ms: int = 0
    kind: str = ""
    link: str = ""

    from_dict = classmethod(_from_dict)
