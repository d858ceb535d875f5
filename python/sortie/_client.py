# SPDX-License-Identifier: Apache-2.0
"""The client: pilots, resources and command jobs through the hub, engines and views, and
function tasks with futures (docs/python.md).

A client holds connections to its profile's hub (``_sortie.Hub``, blocking and not thread-safe:
each call takes one connection from a small pool, so a long ``Job.wait`` in one thread does not
hold up the others) and, from its first function task on, one ``_sortie.Session`` whose results
a daemon thread turns into resolved futures.
"""
import atexit
import base64
import concurrent.futures
import operator
import os
import threading
import time
import weakref

import cloudpickle

from . import _sortie
from ._calls import (Prepickled, TaskOptions, check_callable, describe, handler_name, pack,
                     payload_bytes, reusable)
from ._errors import SortieError, from_native, native_errors
from ._executor import Executor
from ._futures import Future
from ._jobs import FINAL_JOB_STATES, EngineInfo, Job, Pilot, Resource
from ._units import duration_ms, size_bytes
from ._views import View

__all__ = ["Client"]

ENGINE_PYTHON = "/usr/bin/python3"  # the interpreter engine jobs run (`-m sortie.engine`)
SETUP_LIMIT = 64 * 1024  # bytes of base64 the setup function may take in the job's environment
SUBMIT_BATCH = 1000      # calls per submit_tasks request, at most
SUBMIT_BYTES = 32 << 20  # and at most this many bytes of arguments (one call may be larger)
POLL = 0.05              # seconds between looks while waiting for engines to come up
PILOT_POLL = 0.2         # seconds between looks while waiting for pilots
ENDED_PILOT_STATES = frozenset({"ended", "failed", "cancelled"})


class Client:
    """A connection to a profile's hub.

    ``Client()`` connects to the default profile's hub (``$SORTIE_PROFILE`` or "default" under
    ``$SORTIE_HOME``, else ``~/.sortie``) and starts it if none runs; ``profile=`` picks
    another; ``start=False`` only connects (SortieError with code "unavailable" if no hub
    runs); ``connection_file=`` connects with a copy of another profile's ``hub.json``.
    `timeout` is in seconds, for connecting. A client is a context manager; ``close()`` ends
    its connections (tasks keep running: their results stay in the hub).
    """

    def __init__(self, profile=None, start=True, connection_file=None, timeout=10.0):
        self._profile = profile or ""
        self._connection_file = os.fspath(connection_file) if connection_file else ""
        self._timeout = timeout
        with native_errors():
            hub = _sortie.Hub(self._profile, self._connection_file, start, timeout)
        self._lock = threading.Lock()  # guards what follows
        self._idle = [hub]             # hub connections not in use
        self._results = None           # _Results, from the first function task on
        self._closed = False
        self._added_pilots = set()
        _open_clients.add(self)

    # ---- lifetime ------------------------------------------------------------------------

    def close(self):
        """Closes the connections. Futures not yet done fail with SortieError (code
        "cancelled"); their tasks still run and can be collected later by id."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            results = self._results
        if results is not None:
            results.close()
        for hub in idle:
            _close_quietly(hub)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        where = self._connection_file or f"profile {self._profile or 'default'}"
        return f"<sortie.Client {where}{' (closed)' if self._closed else ''}>"

    def status(self):
        """The hub's status: a dict with version, profile, pid, address, agents, pilots,
        slots_total, slots_used, store_commits (transactions its store committed since it
        started)."""
        return self._hub_call("status")

    # ---- resources and pilots ------------------------------------------------------------

    def add_resource(self, name, type, location=None, install_dir=None, tmp_dir=None,
                     gateway=None, ssh_options=None, machinefile=None, replace=False):
        """Defines where pilots can run (docs/resources.md): `type` is "ssh", "slurm", "sge" or
        "local". `replace` overwrites a resource of the same name."""
        spec = {"name": name, "type": type}
        for key, value in (("location", location), ("install_dir", install_dir),
                           ("tmp_dir", tmp_dir), ("gateway", gateway)):
            if value is not None:
                spec[key] = os.fspath(value)
        if ssh_options is not None:
            if isinstance(ssh_options, str):
                raise TypeError("ssh_options is a list of arguments, one per option")
            spec["ssh_options"] = [str(o) for o in ssh_options]
        if machinefile is not None:
            spec["machinefile"] = os.path.abspath(os.fspath(machinefile))
        self._hub_call("add_resource", spec, bool(replace))

    def remove_resource(self, name):
        self._hub_call("remove_resource", name)

    def resources(self):
        """The resources, as ``Resource`` objects (``sortie resource list``)."""
        return [Resource.from_dict(r) for r in self._hub_call("resources")]

    def add_pilot(self, resource="local", nodes=1, slots_per_node=None, time=None, label=None,
                  gpus_per_node=None, memory_per_node=None, queue=None):
        """Starts a pilot on `resource` and returns its id. `time` is its walltime ("2h",
        "30m", "1:30:00" or seconds); `memory_per_node` bytes or "64G"; slots, GPUs and memory
        are detected where not given. ``wait_for_pilots`` waits until it runs."""
        spec = {"resource": resource, "nodes": operator.index(nodes)}
        if slots_per_node is not None:
            spec["slots_per_node"] = operator.index(slots_per_node)
        if time is not None:
            spec["walltime_ms"] = duration_ms(time, "time")
        if label is not None:
            spec["label"] = label
        if gpus_per_node is not None:
            spec["gpus_per_node"] = operator.index(gpus_per_node)
        if memory_per_node is not None:
            spec["memory_per_node"] = size_bytes(memory_per_node, "memory_per_node")
        if queue is not None:
            spec["queue"] = queue
        pilot_id = self._hub_call("add_pilot", spec)
        with self._lock:
            self._added_pilots.add(pilot_id)
        return pilot_id

    def pilots(self):
        """The pilots, as ``Pilot`` objects (``sortie pilot list``)."""
        return [Pilot.from_dict(p) for p in self._hub_call("pilots")]

    def cancel_pilot(self, pilot_id):
        """Cancels a pilot; its running jobs and engines are requeued."""
        self._hub_call("cancel_pilot", pilot_id)

    def wait_for_pilots(self, timeout=600):
        """Waits until every pilot that has not ended, failed or been cancelled runs with all its
        nodes up, and returns those pilots. Raises SortieError if a pilot this client added
        failed, and TimeoutError after `timeout` seconds (None: no limit) naming each pilot
        still waited for, its state and its reason."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pilots = self.pilots()
            with self._lock:
                added = set(self._added_pilots)
            waiting = []
            for p in pilots:
                if p.state == "failed" and p.id in added:
                    raise SortieError(f"pilot {p.id} on {p.resource} failed"
                                      f"{': ' + p.reason if p.reason else ''}")
                if p.state in ENDED_PILOT_STATES:
                    continue
                all_up = p.nodes_up > 0 and p.nodes_up >= p.nodes
                if not (p.state in ("running", "draining") and all_up):
                    waiting.append(p)
            if not waiting:
                return [p for p in pilots if p.state not in ENDED_PILOT_STATES]
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"pilots not running after {timeout}s: " + "; ".join(
                    f"pilot {p.id} {p.state} ({p.nodes_up} of {p.nodes} nodes up)"
                    f"{': ' + p.reason if p.reason else ''}" for p in waiting))
            time.sleep(PILOT_POLL)

    # ---- command jobs --------------------------------------------------------------------

    def submit_job(self, argv, label=None, slots=1, memory=None, gpus=0, name=None, env=None,
                   cwd=None, retries=None, queue_timeout=None, run_timeout=None, priority=0,
                   hosts=None, max_per_node=None):
        """Submits a command job and returns its ``Job``. `argv` is a list of words (nothing
        goes through a shell); `memory` bytes or "4G"; `env` is added to your environment;
        `cwd` defaults to the current directory; `queue_timeout` and `run_timeout` are
        durations; `retries` how often it runs again when its node is lost (default: the hub's
        setting). docs/jobs.md has the rest."""
        return Job(self, self._hub_call("submit_job", _job_spec(
            argv, label, slots, memory, gpus, name, env, cwd, retries, queue_timeout,
            run_timeout, priority, hosts, max_per_node)))

    def submit_map(self, argv, mapfile, group="map", label=None, slots=1, memory=None, gpus=0,
                   env=None, cwd=None, retries=None, queue_timeout=None, run_timeout=None,
                   priority=0, max_per_node=None):
        """One command job per file of a map file (``sortie map --mapfile``, docs/jobs.md):
        each runs on the host the map file names for it, with "{}" in `argv` replaced by the
        file. One group (named `group`), so `max_per_node` limits how many run on a host at
        once. Returns their ``Job``s in the map file's order; the keywords are submit_job's."""
        spec = _job_spec(argv, label, slots, memory, gpus, None, env, cwd, retries,
                         queue_timeout, run_timeout, priority, None, max_per_node)
        first, count = self._hub_call("submit_map", spec, os.fspath(mapfile), group)
        return [Job(self, first + i) for i in range(count)]

    def job(self, job_id):
        """A ``Job`` for an existing job id."""
        return Job(self, operator.index(job_id))

    # ---- engines and views ---------------------------------------------------------------

    def start_engines(self, n, label=None, slots=1, memory=None, restart=False, setup=None,
                      timeout=None, gpus=0, queue_timeout=None, program=None, mpi=False,
                      ranks_per_node=None, env=None):
        """Starts `n` engines (each a job of kind "engine", placed like a command job with
        `label`, `slots`, `memory` and `gpus`) and waits until each is up; returns a View of
        them. `setup` is a function called with no arguments on each engine before it takes
        tasks (again after a restart), with the engine's namespace as its globals. With
        `restart`, an engine that dies is started again. Raises SortieError if an engine's
        job ends before its engine is up (its reason and stderr in the message; with
        `queue_timeout`, an engine job not placed that soon ends timed out, saying why it
        waited), and TimeoutError after `timeout` seconds (the jobs are left as they are).
        `program` (an argument list, or one path) starts a compiled engine (``sortie::Engine``)
        instead of Python's: call its handlers with ``call`` and ``View.call``.

        With `mpi`, the `n` engines are the ranks of one MPI job (mpiexec across the nodes of
        one pilot, `ranks_per_node` on each; default: all on one node), each with `slots` and
        `memory`: ``sortie.engine.rank`` and ``size`` say which, mpi4py's ``MPI.COMM_WORLD``
        works in their tasks, and the view is in rank order. The job ends whole when one rank
        ends (or its node is lost); with `restart` it starts again whole. `env`: variables for
        the engines' environment (a dict), e.g. OpenMPI's ``OMPI_MCA_*`` settings."""
        n = operator.index(n)
        if n < 1:
            raise ValueError(f"start at least one engine, not {n}")
        if ranks_per_node is not None:
            ranks_per_node = operator.index(ranks_per_node)
            if not mpi:
                raise ValueError("ranks_per_node is for MPI engines: start_engines(n, mpi=True, "
                                 "ranks_per_node=k)")
            if not 1 <= ranks_per_node <= n:
                raise ValueError(f"ranks_per_node must be between 1 and n ({n}), not "
                                 f"{ranks_per_node}")
        argv = [ENGINE_PYTHON, "-m", "sortie.engine"]
        if program is not None:
            argv = [os.fspath(program)] if isinstance(program, (str, os.PathLike)) else \
                [os.fspath(a) for a in program]
            if not argv or not argv[0]:
                raise ValueError("program: the engine program's path, then its arguments")
            if setup is not None:
                raise ValueError("setup is for Python engines: a compiled engine (program=) "
                                 "sets itself up")
        extra = {} if env is None else {str(k): str(v) for k, v in dict(env).items()}
        env = dict(extra)
        if setup is not None:
            check_callable(setup)
            try:
                encoded = base64.b64encode(cloudpickle.dumps(setup)).decode("ascii")
            except Exception as e:
                raise TypeError(f"cannot send the setup {describe(setup)}: it cannot be "
                                f"pickled: {e}") from e
            if len(encoded) > SETUP_LIMIT:
                raise ValueError(
                    f"the setup {describe(setup)} takes {len(encoded) // 1024} KiB pickled "
                    f"(base64), over the {SETUP_LIMIT // 1024} KiB an engine's environment "
                    "may hold: let it load its data from a file, or push it once the engines "
                    "are up")
            env["SORTIE_ENGINE_SETUP"] = encoded
        spec = {"argv": argv, "kind": "engine",
                "name": "engine", "slots": operator.index(slots), "gpus": operator.index(gpus),
                "restart": bool(restart), "env": env}
        if label is not None:
            spec["label"] = label
            env["SORTIE_ENGINE_LABEL"] = label
        if memory is not None:
            spec["memory"] = size_bytes(memory, "memory")
        if queue_timeout is not None:
            spec["queue_timeout_ms"] = duration_ms(queue_timeout, "queue_timeout")
        if mpi:
            spec["mpi_ranks"] = n
            spec["ranks_per_node"] = ranks_per_node or 0
            return self._wait_for_engines([self._hub_call("submit_job", spec)], timeout)
        jobs = [self._hub_call("submit_job", spec) for _ in range(n)]
        return self._wait_for_engines(jobs, timeout)

    def engine_info(self, label=None):
        """The engines that are up (with `label`, if given), as ``EngineInfo`` rows in id order:
        where each runs, idle or busy, tasks done (``sortie engine list``)."""
        return sorted((EngineInfo.from_dict(e) for e in self._hub_call("engines", label or "")),
                      key=lambda e: e.id)

    def engines(self, label=None):
        """A View of every live engine (with `label`, if given), in engine id order."""
        live = sorted(self._hub_call("engines", label or ""), key=lambda e: e["id"])
        return View(self, [(e["job"], e["rank"]) for e in live],
                    selection=f"label {label!r}" if label else "no engine is running")

    # ---- function tasks ------------------------------------------------------------------

    def submit(self, fn, *args, label=None, engine=None, retries=0, timeout=None, priority=0,
               **kwargs):
        """Runs ``fn(*args, **kwargs)`` on an engine and returns its Future.

        The keywords label, engine, retries, timeout and priority configure the task and are not
        passed to `fn`: `label` (only engines with it), `engine` (this engine id only; default:
        the least loaded engine that matches), `retries` (times it runs again elsewhere when its
        engine dies; default 0), `timeout` (seconds or "10m": then it fails with TaskTimeout),
        `priority` (higher first; default 0)."""
        return self._submit(fn, args, kwargs, TaskOptions(label, engine, retries, timeout,
                                                          priority))

    def call_async(self, handler, payload=b"", label=None, engine=None, retries=0, timeout=None,
                   priority=0):
        """Calls the handler `handler` of a compiled engine (``sortie::Engine``, started with
        ``start_engines(program=[...])``) with `payload` (bytes); a Future whose result is the
        reply (bytes). The keywords are those of ``submit``. A handler's error is raised as
        RemoteError (type ``sortie::Error(<code>)``)."""
        options = TaskOptions(label, engine, retries, timeout, priority)
        if options.engine:
            self._check_engine(options.engine)
        return self._submit_calls([options.call(payload_bytes(payload), handler=handler_name(
            handler))], raw=True)[0]

    def call(self, handler, payload=b"", label=None, engine=None, retries=0, timeout=None,
             priority=0):
        """``call_async(...).result()``: the handler's reply (bytes)."""
        return self.call_async(handler, payload, label, engine, retries, timeout,
                               priority).result()

    def map(self, fn, *iterables, label=None, engine=None, retries=0, timeout=None, priority=0,
            **kwargs):
        """Submits ``fn(*items, **kwargs)`` for the items of the iterables taken together (as
        the built-in ``map``) and returns their Futures in order. The reserved keywords are
        those of ``submit``; every call is pickled before the first is sent."""
        return self._map(fn, iterables, kwargs, TaskOptions(label, engine, retries, timeout,
                                                            priority))

    def gather(self, futures):
        """The results of `futures` in order (the result of a single future); the first error
        is raised."""
        if isinstance(futures, concurrent.futures.Future):
            return futures.result()
        return [f.result() for f in futures]

    def executor(self, label=None, engine=None, retries=0, timeout=None, priority=0):
        """A ``concurrent.futures.Executor`` submitting through this client with these task
        options (those of ``submit``)."""
        return Executor(self, TaskOptions(label, engine, retries, timeout, priority))

    def future(self, task_id):
        """The Future of an existing task, submitted by any process: its result once it is done
        (at once if it is). An id that does not exist (never, or forgotten) fails the future
        with SortieError, code "not_found"."""
        return self.futures([task_id])[0]

    def futures(self, task_ids):
        """Futures of existing tasks (``future`` for many ids in one request)."""
        return self._results_link().watch([_task_id(t) for t in task_ids])

    def forget(self, futures_or_ids):
        """Deletes the results of these tasks (futures or ids) from the hub; the number
        forgotten. Their ids are unknown afterwards."""
        if isinstance(futures_or_ids, Future) or not hasattr(futures_or_ids, "__iter__"):
            futures_or_ids = [futures_or_ids]
        return self._hub_call("forget_tasks", [_task_id(t) for t in futures_or_ids])

    # ---- internals -----------------------------------------------------------------------

    def _hub_call(self, method, *args):
        """Calls a method of ``_sortie.Hub`` on a connection of the pool."""
        hub = self._take_hub()
        healthy = True
        try:
            return getattr(hub, method)(*args)
        except _sortie.Error as e:
            # A timed-out request may still be answered later: that connection is not reused.
            healthy = e.code not in ("unavailable", "timeout")
            raise from_native(e) from None
        finally:
            self._give_back(hub, healthy)

    def _take_hub(self):
        with self._lock:
            if self._closed:
                raise SortieError("this client is closed", "failed_precondition")
            if self._idle:
                return self._idle.pop()
        with native_errors():
            return _sortie.Hub(self._profile, self._connection_file, False, self._timeout)

    def _give_back(self, hub, healthy):
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(hub)
                return
        _close_quietly(hub)

    def _results_link(self):
        with self._lock:
            if self._closed:
                raise SortieError("this client is closed", "failed_precondition")
            if self._results is None or self._results.ended:
                with native_errors():
                    session = _sortie.Session(self._profile, self._connection_file, False,
                                              self._timeout)
                self._results = _Results(session)
            return self._results

    def _submit(self, fn, args, kwargs, options):
        check_callable(fn)
        payload = pack(reusable(fn), args, kwargs)
        if options.engine:
            self._check_engine(options.engine)
        return self._submit_calls([options.call(payload)])[0]

    def _map(self, fn, iterables, kwargs, options):
        check_callable(fn)
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        function = Prepickled(fn)
        calls = [options.call(pack(function, args, kwargs, item=i))
                 for i, args in enumerate(zip(*iterables))]
        if options.engine and calls:
            self._check_engine(options.engine)
        return self._submit_calls(calls)

    def _submit_calls(self, calls, raw=False):
        """Submits task tuples in batches; their futures, in order (`raw`: their results are
        bytes, not pickled values: calls of compiled engines' handlers)."""
        futures, batch, size = [], [], 0
        for call in calls:
            payload = len(call[1])
            if batch and (len(batch) == SUBMIT_BATCH or size + payload > SUBMIT_BYTES):
                futures += self._results_link().submit(batch, raw)
                batch, size = [], 0
            batch.append(call)
            size += payload
        if batch:
            futures += self._results_link().submit(batch, raw)
        return futures

    def _check_engine(self, engine_id):
        live = sorted(e["id"] for e in self._hub_call("engines", ""))
        if engine_id not in live:
            shown = ", ".join(map(str, live[:20])) + (", ..." if len(live) > 20 else "")
            raise ValueError(f"there is no engine {engine_id}: " +
                             (f"the live engines are {shown}" if live else "no engine runs"))

    def _engine_ids(self, members):
        """The current engine ids of (job, rank) pairs; SortieError naming those not up."""
        current = {(e["job"], e["rank"]): e["id"] for e in self._hub_call("engines", "")}
        missing = [m for m in members if m not in current]
        if missing:
            raise SortieError("engines of this view are not running: " + "; ".join(
                f"job {job} rank {rank} ({self._job_state(job)})" for job, rank in missing),
                "not_found")
        return [current[m] for m in members]

    def _job_state(self, job_id):
        """A job's state and reason, for messages."""
        try:
            info = self._hub_call("job", job_id)
        except SortieError as e:
            return str(e)
        return info["state"] + (f": {info['reason']}" if info.get("reason") else "")

    def _wait_for_engines(self, jobs, timeout):
        """Waits until each job has its engines up; a View of them, in job then rank order."""
        deadline = None if timeout is None else time.monotonic() + timeout
        checked = time.monotonic()
        wanted = set(jobs)
        while True:
            up = {}
            for e in self._hub_call("engines", ""):
                if e["job"] in wanted:
                    up.setdefault(e["job"], []).append(e)
            # Every rank of an MPI engine job.
            up = {job: es for job, es in up.items() if len(es) >= es[0]["size"]}
            if len(up) == len(jobs):
                break
            now = time.monotonic()
            if now - checked >= 10 * POLL:  # the jobs' states, twice a second
                checked = now
                for job in jobs:
                    if job not in up:
                        self._check_engine_job(job)
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"engines not up after {timeout}s (their jobs are left as "
                                   "they are): " + "; ".join(
                                       f"job {job} {self._job_state(job)}"
                                       for job in jobs if job not in up))
            time.sleep(POLL)
        members = [(job, e["rank"]) for job in jobs
                   for e in sorted(up[job], key=lambda e: e["rank"])]
        return View(self, members, selection=f"engine jobs {jobs[0]}..{jobs[-1]}")

    def _check_engine_job(self, job_id):
        """Raises if the engine job ended (its setup failed, its program could not start)."""
        info = self._hub_call("job", job_id)
        if info["state"] not in FINAL_JOB_STATES:
            return
        message = f"engine job {job_id} {info['state']} before its engine was up"
        if info.get("reason"):
            message += f": {info['reason']}"
        stderr = self._hub_call("job_output", job_id, "stderr").decode("utf-8", "replace")
        if stderr.strip():
            message += "\nits stderr ends:\n" + stderr[-3000:].rstrip("\n")
        raise SortieError(message)


class _Results:
    """One Session: the futures of its tasks not yet done, and the daemon thread that reads
    their results and resolves them.

    No lock is held across a request to the hub (the session is thread-safe), so a result can
    arrive before the request that made its task returns: it waits in ``_early`` until then.
    """

    def __init__(self, session):
        self.session = session
        self.ended = False
        self._lock = threading.Lock()
        self._pending = {}  # task id -> Future
        self._early = {}    # task id -> result that came before its future was made
        self._followers = {}  # task id -> queues of Future.follow for its output
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sortie-results", daemon=True)
        self._thread.start()
        _live_results.add(self)

    def submit(self, calls, raw=False):
        self._check_open()
        try:
            ids, arrived = self.session.submit_tasks(calls)
        except _sortie.Error as e:
            raise self._failed(e) from None
        # Results that came with the reply (short tasks) are resolved here, not by the thread.
        return self._register(ids, raw, {r["id"]: r for r in arrived})

    def watch(self, ids):
        self._check_open()
        with self._lock:
            known = {i: self._pending[i] for i in ids if i in self._pending}
        new = [i for i in dict.fromkeys(ids) if i not in known]
        if new:
            try:
                self.session.watch(new)
            except _sortie.Error as e:
                raise self._failed(e) from None
            known.update(zip(new, self._register(new)))
        return [known[i] for i in ids]

    def _register(self, ids, raw=False, arrived=None):
        """The futures of these tasks: existing ones, or new ones (resolved at once when their
        result came early, or is in `arrived`: task id -> result)."""
        futures, early = [], []
        with self._lock:
            for task_id in ids:
                future = self._pending.get(task_id)
                if future is None:
                    future = Future(task_id, self, raw)
                    result = self._early.pop(task_id, None)
                    if result is None and arrived:
                        result = arrived.get(task_id)
                    if result is None:
                        self._pending[task_id] = future
                    else:
                        early.append((future, result))
                futures.append(future)
        for future, result in early:
            future.finish(result)
        return futures

    def close(self):
        _live_results.discard(self)
        self._stopping.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._fail_pending(lambda task: SortieError(
            f"the client was closed before task {task} finished (it was not cancelled: "
            f"collect its result with Client().future({task}))", "cancelled"))
        _close_quietly(self.session)

    def follow(self, task_id, pieces):
        """Puts what task `task_id` prints into the queue `pieces` as (offset, bytes), then
        None once its future is done. False when it is done already (nothing is put)."""
        self._check_open()
        with self._lock:
            if task_id not in self._pending:
                return False
            self._followers.setdefault(task_id, []).append(pieces)
        try:
            self.session.follow([task_id])
        except _sortie.Error as e:
            with self._lock:
                self._followers.pop(task_id, None)
            raise self._failed(e) from None
        return True

    def _run(self):
        while not self._stopping.is_set():
            try:
                results, output = self.session.next_events(0.5)
            except _sortie.Error as e:
                self._end(e)
                return
            if not results and not output:
                continue
            done, ended = [], []
            with self._lock:
                for task_id, offset, data in output:
                    for pieces in self._followers.get(task_id, ()):
                        pieces.put((offset, data))
                for result in results:
                    future = self._pending.pop(result["id"], None)
                    if future is None:
                        self._early[result["id"]] = result
                    else:
                        done.append((future, result))
                    ended.extend(self._followers.pop(result["id"], ()))
            for future, result in done:
                future.finish(result)
            for pieces in ended:
                pieces.put(None)

    def _check_open(self):
        if self.ended:
            raise SortieError("the link to the hub has ended", "unavailable")

    def _failed(self, error):
        """The SortieError to raise for a failed request; ends the session if its link did."""
        if error.code == "unavailable":
            self._end(error)
        return from_native(error)

    def _end(self, error):
        """The session's link ended: its futures fail (the tasks' results stay in the hub)."""
        with self._lock:
            self.ended = True
        self._fail_pending(lambda task: SortieError(
            f"the link to the hub ended before task {task} finished ({error}); its result will "
            f"be kept: collect it with Client().future({task})", "unavailable"))

    def _fail_pending(self, make_error):
        """Fails every pending future (outside the lock: their callbacks may submit)."""
        with self._lock:
            pending, self._pending, self._early = self._pending, {}, {}
            followers, self._followers = self._followers, {}
        for task, future in pending.items():
            future.set_exception(make_error(task))
        for queues in followers.values():
            for pieces in queues:
                pieces.put(None)


def _job_spec(argv, label, slots, memory, gpus, name, env, cwd, retries, queue_timeout,
              run_timeout, priority, hosts, max_per_node):
    """The spec dict of a command job (Client.submit_job's arguments, checked)."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv is a list of words, not a string: nothing goes through a "
                        "shell; write ['sh', '-c', '...'] for one")
    spec = {"argv": [_word(a, "argv") for a in argv], "slots": operator.index(slots),
            "gpus": operator.index(gpus), "priority": operator.index(priority)}
    if not spec["argv"]:
        raise ValueError("argv is empty: give the program to run")
    if label is not None:
        spec["label"] = label
    if memory is not None:
        spec["memory"] = size_bytes(memory, "memory")
    if name is not None:
        spec["name"] = name
    if env is not None:
        spec["env"] = {str(k): _word(v, f"env[{k!r}]") for k, v in dict(env).items()}
    if cwd is not None:
        spec["cwd"] = os.path.abspath(os.fspath(cwd))
    if retries is not None:
        spec["retries"] = operator.index(retries)
    if queue_timeout is not None:
        spec["queue_timeout_ms"] = duration_ms(queue_timeout, "queue_timeout")
    if run_timeout is not None:
        spec["run_timeout_ms"] = duration_ms(run_timeout, "run_timeout")
    if hosts is not None:
        spec["hosts"] = [hosts] if isinstance(hosts, str) else list(hosts)
    if max_per_node is not None:
        spec["max_per_node"] = operator.index(max_per_node)
    return spec


def _task_id(task):
    """The id of a Future or a task id."""
    task_id = task.id if isinstance(task, Future) else operator.index(task)
    if task_id <= 0:
        raise ValueError(f"{task_id} is not a task id")
    return task_id


def _word(value, what):
    """One word of a command line or an environment value, as a string."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"{what}: {value!r} is not a string, a path or a number")


def _close_quietly(link):
    try:
        link.close()
    except _sortie.Error:
        pass


_open_clients = weakref.WeakSet()
# Result threads not closed yet, also of clients already collected (a client made in a function
# that returned): a daemon thread cut off inside the compiled module at exit would abort.
_live_results = set()


@atexit.register
def _close_open_clients():
    """Closes the clients still open at exit, so no result thread is cut off mid-call."""
    for client in list(_open_clients):
        client.close()
    for results in list(_live_results):
        results.close()
