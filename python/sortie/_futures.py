# SPDX-License-Identifier: Apache-2.0
"""Futures of function tasks, how a task's result becomes a value or an exception, and the
helpers that wait on several futures.

``Future`` is a ``concurrent.futures.Future``, so ``concurrent.futures.wait`` and
``as_completed`` work on it as on any other; the client's result thread resolves it.
``AsyncResult`` is the ipyparallel-style handle of a call on a view's engines.
"""
import codecs
import concurrent.futures
import pickle
import queue
import threading
import time

from ._errors import EngineLost, RemoteError, SortieError, TaskTimeout

__all__ = ["Future", "AsyncResult", "as_completed", "wait", "FIRST_COMPLETED",
           "FIRST_EXCEPTION", "ALL_COMPLETED"]

_PENDING = concurrent.futures._base.PENDING
_FINISHED = concurrent.futures._base.FINISHED
_MAKING = threading.Lock()  # makes a Future's Condition, or settles a Future without one

FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION
ALL_COMPLETED = concurrent.futures.ALL_COMPLETED


class Future(concurrent.futures.Future):
    """The result of one function task, which has a durable id.

    ``id`` is the task id (give it to ``Client.future`` in any process, later, to collect the
    result); ``engine`` is the id of the engine that ran it, once done (0 when it never ran);
    ``stdout()`` is what the task printed. Tasks cannot be cancelled: ``cancel()`` returns False.
    """

    def __init__(self, task_id, results=None, raw=False):
        # concurrent.futures.Future.__init__, but its Condition is made when first needed
        # (_condition): most futures of a map are settled before anyone waits on them.
        self._made_condition = None
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks = []
        self.id = task_id
        self.engine = 0
        self._stdout = b""
        self._results = results  # the client's result thread, for follow()
        self._raw = raw  # a compiled engine's reply: bytes, not a pickled value

    def follow(self, timeout=None):
        """Yields what the task prints (stdout and stderr, as str pieces) as it prints it, until
        it is done; then the rest of its output. Pieces reach the hub at most every 0.1 s while
        the task runs; a follower that begins late first gets the last 64 KiB printed. When text
        is skipped (a late start, or a reader that fell behind), a line says how much:
        ``stdout()`` has all of it once the task is done. TimeoutError when the task is not done
        after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pieces = queue.SimpleQueue()
        following = self._results is not None and not self.done() and \
            self._results.follow(self.id, pieces)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        got = 0  # bytes of the output yielded (or said to be skipped)
        while following:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"task {self.id} is not done after {timeout}s")
            try:
                piece = pieces.get(timeout=left)
            except queue.Empty:
                continue
            if piece is None:
                break
            offset, data = piece
            if offset < got and offset == 0:  # it runs again, elsewhere, from the start
                decoder.reset()
                got = 0
                yield "\n[sortie: the task runs again on another engine; its output restarts]\n"
            if offset > got:
                decoder.reset()
                yield f"[sortie: {offset - got} bytes of output not shown here; " \
                      f"stdout() has them once the task is done]\n"
                got = offset
            if offset + len(data) <= got:
                continue
            text = decoder.decode(data[got - offset:])
            got = offset + len(data)
            if text:
                yield text
        self.stdout(None if deadline is None else max(0.0, deadline - time.monotonic()))
        rest = self._stdout[got:] if got <= len(self._stdout) else b""
        text = decoder.decode(rest, final=True)
        if text:
            yield text

    def stdout(self, timeout=None):
        """What the task wrote to sys.stdout and sys.stderr, once it is done (blocks until
        then; TimeoutError after `timeout` seconds)."""
        done, _ = concurrent.futures.wait([self], timeout)
        if not done:
            raise TimeoutError(f"task {self.id} is not done after {timeout}s")
        return self._stdout.decode("utf-8", "replace")

    def cancel(self):
        """Tasks cannot be cancelled: always False (as for a running concurrent.futures task)."""
        return False

    @property
    def _condition(self):
        """The Condition of concurrent.futures.Future, made on first use."""
        condition = self._made_condition
        if condition is None:
            with _MAKING:
                condition = self._made_condition
                if condition is None:
                    condition = self._made_condition = threading.Condition()
        return condition

    def result(self, timeout=None):
        if self._state == _FINISHED and self._exception is None:
            return self._result  # settled: nothing to wait for
        return super().result(timeout)

    def finish(self, result):
        """Resolves the future from a result of Session.next_results (the result thread)."""
        self.engine = result.get("engine") or 0
        self._stdout = result.get("stdout") or b""
        ok, value = outcome(result, self._raw)
        with _MAKING:
            # Nobody has waited, or asked to be told (both make the Condition first, under
            # _MAKING): settled without one.
            unwatched = self._made_condition is None and self._state == _PENDING
            if unwatched:
                if ok:
                    self._result = value
                else:
                    self._exception = value
                self._state = _FINISHED
        if unwatched:
            return
        if ok:
            self.set_result(value)
        else:
            self.set_exception(value)

    def __repr__(self):
        return super().__repr__().replace(" state=", f" task {self.id} state=", 1)


def outcome(result, raw=False):
    """(True, value) or (False, exception) for one task's result (`raw`: its value is the
    bytes a compiled engine's handler returned)."""
    task = result["id"]
    state = result["state"]
    if state == "done" and raw:
        return True, result["value"]
    if state == "done":
        try:
            return True, pickle.loads(result["value"])
        except Exception as e:
            error = SortieError(f"the result of task {task} cannot be unpickled here: "
                                f"{type(e).__name__}: {e}", "internal")
            error.__cause__ = e
            return False, error
    if state == "unknown":
        return False, SortieError(f"task {task} does not exist: it was never submitted or has "
                                  "been forgotten", "not_found")
    original = None
    if result.get("value") and not raw:
        try:
            original = pickle.loads(result["value"])
        except Exception:
            original = None
    type_name = result.get("error_type") or ""
    if state == "lost":
        kind = EngineLost
    elif type_name == "TaskTimeout":
        kind = TaskTimeout
    else:
        kind = RemoteError
    return False, kind(type_name or "Error", result.get("error_message") or "",
                       result.get("traceback") or "", original, result.get("engine") or 0, task)


class AsyncResult:
    """The pending results of one call on a view's engines (``View.apply_async``,
    ``View.map_async``). ``get()`` returns them in engine order, or a single value for a view of
    one engine; ``futures`` are the tasks' futures."""

    def __init__(self, futures, single=False):
        self.futures = list(futures)
        self._single = single

    @property
    def ids(self):
        """The task ids."""
        return [f.id for f in self.futures]

    def ready(self):
        return all(f.done() for f in self.futures)

    def wait(self, timeout=None):
        """Waits until every task is done or `timeout` seconds pass; True if all are done."""
        _, pending = concurrent.futures.wait(self.futures, timeout)
        return not pending

    def successful(self):
        """True if every task returned (raises ValueError while some are not done)."""
        if not self.ready():
            raise ValueError("the tasks are not all done yet")
        return all(f.exception() is None for f in self.futures)

    def get(self, timeout=None):
        """The values, once all tasks are done; the first error (in engine order) is raised.
        TimeoutError after `timeout` seconds."""
        if not self.wait(timeout):
            waiting = sum(not f.done() for f in self.futures)
            raise TimeoutError(f"{waiting} of {len(self.futures)} tasks not done after "
                               f"{timeout}s")
        values = [f.result() for f in self.futures]
        return values[0] if self._single else values

    def stdout(self, timeout=None):
        """What each task printed (a single string for a view of one engine)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = [f.stdout(None if deadline is None else max(0.0, deadline - time.monotonic()))
               for f in self.futures]
        return out[0] if self._single else out

    def __repr__(self):
        done = sum(f.done() for f in self.futures)
        return f"<sortie.AsyncResult: {done} of {len(self.futures)} tasks done>"


def as_completed(futures, timeout=None):
    """Yields the futures as they finish (``concurrent.futures.as_completed``); TimeoutError if
    some are not done after `timeout` seconds."""
    return concurrent.futures.as_completed(futures, timeout)


def wait(futures, timeout=None, return_when=ALL_COMPLETED):
    """``concurrent.futures.wait``: (done, not_done) sets of futures."""
    return concurrent.futures.wait(futures, timeout, return_when)
