# SPDX-License-Identifier: Apache-2.0
"""The engine: the Python process of a job of kind "engine" (``python3 -m sortie.engine``,
started by its agent; docs/engines.md).

It runs the setup function it was started with (``SORTIE_ENGINE_SETUP``), registers with its
agent, then runs the tasks it is given, one at a time, until the agent tells it to stop. A task
is a Python call: its payload is ``cloudpickle.dumps((fn, args, kwargs))``. Functions that
travelled by value (defined in ``__main__``, lambdas, nested functions) run with the engine's
namespace as their globals, so what one call defines the next one sees, as in ipyparallel.

In a task, this module tells where it runs: ``sortie.engine.rank`` and ``size`` (the MPI rank
and size, 0 and 1 outside MPI), ``id`` (the engine id; None during setup), ``label`` and
``job_id``. Outside an engine they are 0, 1, None, None and None.
"""
import base64
import builtins
import io
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import types

import cloudpickle

from . import _sortie
from ._calls import dumps

rank = 0
size = 1
id = None  # the engine id (this module uses no builtin id())
label = None
job_id = None


def main():
    """Runs the engine; its exit status: 0 when told to stop, 1 when the setup failed, 2 when
    not started by an agent."""
    global rank, size, id, label, job_id
    env = os.environ
    if "SORTIE_ENGINE_SOCKET" not in env:
        print("sortie.engine: this is the program of sortie's engine jobs, which an agent "
              "starts (client.start_engines)", file=sys.stderr)
        return 2
    key = env.pop("SORTIE_ENGINE_KEY", "")  # kept from the environment tasks' children inherit
    direct_key = env.pop("SORTIE_ENGINE_DIRECT_KEY", "")
    rank = int(env.get("OMPI_COMM_WORLD_RANK", "0"))
    size = int(env.get("OMPI_COMM_WORLD_SIZE", "1"))
    job_id = int(env["SORTIE_JOB_ID"])
    label = env.get("SORTIE_ENGINE_LABEL") or None
    if size > 1:
        _init_mpi()
    namespace = {"__builtins__": builtins, "__name__": "__main__"}
    setup = env.get("SORTIE_ENGINE_SETUP")
    if setup:
        try:
            _bind(pickle.loads(base64.b64decode(setup)), namespace)()
        except Exception as e:
            print(f"sortie.engine: the setup function raised:\n{_traceback(e)}", end="",
                  file=sys.stderr)
            return 1
    try:
        link = _sortie.EngineLink(env["SORTIE_ENGINE_SOCKET"], key, job_id,
                                  int(env["SORTIE_ATTEMPT"]), rank, size,
                                  env.get("SORTIE_ENGINE_DIRECT_SOCKET", ""), direct_key)
    except _sortie.Error as e:
        print(f"sortie.engine: rank {rank} cannot reach its agent: {e}", file=sys.stderr)
        if size > 1:  # the other ranks would wait for this one for ever: the MPI job ends
            _abort_mpi()
        return 1
    id = link.engine_id
    label = link.label or label
    live = _Live(link)
    try:
        _serve(link, namespace, live)
    except EOFError:
        pass
    finally:
        live.close()
        link.close()
    return 0


def _init_mpi():
    """An MPI rank initialises MPI before it takes tasks, so that every rank is in
    MPI.COMM_WORLD whichever tasks it gets first (MPI_Init waits for all ranks)."""
    try:
        from mpi4py import MPI  # noqa: F401 (importing it initialises MPI)
    except ImportError:
        print("sortie.engine: mpi4py is not installed (Debian: python3-mpi4py): this rank's "
              "tasks cannot use MPI", file=sys.stderr)


def _abort_mpi():
    try:
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(1)
    except ImportError:
        pass


def _serve(link, namespace, live):
    """Takes tasks and sends their results (those of one batch together) until EOFError."""
    while True:
        results = []
        try:
            for task_id, handler, payload, timeout_ms in link.next_tasks(1.0):
                results.append((task_id,) + _run(handler, payload, namespace, live, task_id,
                                                 timeout_ms))
        finally:
            # Also when a task ends the engine (sys.exit): the others of the batch are done.
            if results:
                link.send_results(results)


def _run(handler, payload, namespace, live=None, task_id=0, timeout_ms=0):
    """Runs one task: (ok, value, error_type, error_message, traceback, stdout). A task with a
    timeout is interrupted when it has run that long (_Deadline)."""
    captured = _Capture()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = captured
    if live:
        live.begin(task_id, captured)
    try:
        if handler:
            raise ValueError(f"this engine has no handler {handler!r}")
        fn, args, kwargs = pickle.loads(payload)
        with _Deadline(timeout_ms):
            value = _bind(fn, namespace)(*args, **kwargs)
        try:
            data = dumps(value)
        except Exception as e:
            raise TypeError(f"the task's return value ({_type_name(value)}) cannot be "
                            f"pickled: {e}") from e
        outcome = (True, data, "", "", "")
    except _TimedOut as e:
        outcome = (False, b"", "TaskTimeout", str(e), _traceback(e))
    except Exception as e:
        outcome = (False, _pickled(e), _type_name(e), str(e), _traceback(e))
    finally:
        sys.stdout, sys.stderr = saved
        if live:
            live.end()
    return outcome + (captured.output(),)


class _TimedOut(BaseException):
    """Raised inside a task that ran longer than its timeout. A BaseException, as
    KeyboardInterrupt is, so that the task's own ``except Exception`` does not keep it going."""


class _Deadline:
    """Interrupts the call it wraps after `timeout_ms` (none: 0) with _TimedOut, from a SIGALRM
    timer: Python code is stopped at once, a blocking call such as time.sleep too, and a long
    call into C code when it returns to Python. The engine is then free for its next task."""

    _installed = False
    _armed = None  # the timeout, in ms, while a call runs under one

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms

    def __enter__(self):
        if self.timeout_ms <= 0 or threading.current_thread() is not threading.main_thread():
            return self
        if not _Deadline._installed:
            signal.signal(signal.SIGALRM, _Deadline._expired)
            _Deadline._installed = True
        _Deadline._armed = self.timeout_ms
        signal.setitimer(signal.ITIMER_REAL, self.timeout_ms / 1000)
        return self

    def __exit__(self, *exc):
        if _Deadline._armed is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _Deadline._armed = None
        return False

    @staticmethod
    def _expired(signum, frame):
        timeout_ms, _Deadline._armed = _Deadline._armed, None
        if timeout_ms is not None:
            raise _TimedOut(f"ran longer than its timeout of {_duration(timeout_ms)} on engine "
                            f"{id} (interrupted)")


def _duration(ms):
    """A duration as the hub writes it in its TaskTimeout (common/text.cpp's
    format_duration_ms): 500ms, 1.5s, 30s, 2m05s, 1h30m."""
    if ms < 1000:
        return f"{ms}ms"
    s = ms // 1000
    if s < 60:
        return f"{s}s" if ms % 1000 == 0 or s >= 10 else f"{ms / 1000:.1f}s"
    m = s // 60
    if m < 60:
        return f"{m}m{s % 60:02}s" if s % 60 else f"{m}m"
    h = m // 60
    if h < 48:
        return f"{h}h{m % 60:02}m" if m % 60 else f"{h}h"
    return f"{h // 24}d{h % 24:02}h"


class _Capture(io.StringIO):
    """A task's stdout and stderr, as UTF-8 bytes (what cannot be encoded, escaped)."""

    encoding = "utf-8"

    def output(self):
        text = self.getvalue()
        return text.encode("utf-8", "backslashreplace") if text else b""


class _Live:
    """Sends what the running task prints to the hub as it prints it, for clients following
    it (``Future.follow``): a thread looks every 0.1 s, so a task that ends sooner sends its
    output only with its result. The pieces are bytes from an offset of the task's output as its
    result will carry it."""

    PERIOD = 0.1
    PIECE = 1 << 20  # the most the link takes at once

    def __init__(self, link):
        self._link = link
        self._lock = threading.Lock()  # guards what follows
        self._task = None
        self._capture = None
        self._began = 0.0
        self._chars = 0  # characters of the capture sent
        self._offset = 0  # their bytes
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sortie-output", daemon=True)
        self._thread.start()

    def begin(self, task_id, capture):
        with self._lock:
            self._task, self._capture = task_id, capture
            self._began = time.monotonic()
            self._chars = self._offset = 0

    def end(self):
        with self._lock:
            self._task = self._capture = None

    def close(self):
        self._closed.set()
        self._thread.join()

    def _run(self):
        while not self._closed.wait(self.PERIOD):
            with self._lock:
                if self._task is None or time.monotonic() - self._began < self.PERIOD:
                    continue
                text = self._capture.getvalue()[self._chars:]
                if not text:
                    continue
                data = text.encode("utf-8", "backslashreplace")
                try:
                    for at in range(0, len(data), self.PIECE):
                        self._link.send_output(self._task, self._offset + at,
                                               data[at:at + self.PIECE])
                except Exception:
                    return  # the link is gone: the engine's main loop ends with it
                self._chars += len(text)
                self._offset += len(data)


def _bind(fn, namespace):
    """`fn` with the engine's namespace as its globals, if it travelled by value. The names its
    own globals hold that the namespace lacks are copied in first (names the engine defines
    win); functions among them that travelled with it get the namespace as globals too.
    Functions of importable modules, and other callables, are returned as they are."""
    if not isinstance(fn, types.FunctionType) or fn.__globals__ is namespace:
        return fn
    known = _bound.get(fn)  # a function of a reused pickle (map) comes back as the same object
    if known is not None and known[0] is namespace and known[1] <= namespace.keys():
        return known[2]  # binding it again would copy nothing and make the same function
    module = sys.modules.get(fn.__module__ or "")
    if module is not None and getattr(module, "__dict__", None) is fn.__globals__:
        return fn
    brought = fn.__globals__  # cloudpickle gives the functions of one pickle one such dict
    names = []
    for name, value in brought.items():
        if name.startswith("__") and name.endswith("__"):
            continue
        names.append(name)
        if name in namespace:
            continue
        if isinstance(value, types.FunctionType) and value.__globals__ is brought:
            value = _rebuilt(value, namespace)
        namespace[name] = value
    bound = _rebuilt(fn, namespace)
    if len(_bound) >= 64:
        _bound.clear()
    _bound[fn] = (namespace, frozenset(names), bound)
    return bound


# fn -> (the namespace it was bound to, the names it brought, the function bound to it)
_bound = {}


def _rebuilt(fn, namespace):
    """A copy of the function `fn` whose globals are `namespace`."""
    bound = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__,
                               fn.__closure__)
    bound.__kwdefaults__ = fn.__kwdefaults__
    bound.__qualname__ = fn.__qualname__
    bound.__module__ = fn.__module__
    bound.__doc__ = fn.__doc__
    bound.__dict__.update(fn.__dict__)
    return bound


def _pickled(error):
    """The exception pickled for the client, or b"" when it does not pickle."""
    try:
        return cloudpickle.dumps(error)
    except Exception:
        return b""


def _type_name(obj):
    """The qualified name of obj's type: "ValueError", "mypackage.errors.Bad"."""
    kind = type(obj)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"


def _traceback(error):
    """The formatted traceback, without the engine's own frames at its top."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


if __name__ == "__main__":
    # Run as `python3 -m sortie.engine`, this file is __main__; the attributes tasks read are
    # those of the module `sortie.engine`, so that one runs the engine.
    from sortie import engine as _engine
    sys.exit(_engine.main())
