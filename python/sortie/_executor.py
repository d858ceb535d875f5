# SPDX-License-Identifier: Apache-2.0
"""``Client.executor()``: the client as a ``concurrent.futures.Executor``, for code written
against that interface (``with client.executor(label="cpu") as ex: list(ex.map(f, xs))``)."""
import concurrent.futures
import threading
import time

__all__ = ["Executor"]


class Executor(concurrent.futures.Executor):
    """Submits load-balanced tasks through a client with fixed options (label, retries,
    timeout, priority, engine). Every keyword of ``submit`` goes to the function. ``shutdown``
    waits for the tasks submitted through it; the client stays open."""

    def __init__(self, client, options):
        self._client = client
        self._options = options
        self._lock = threading.Lock()
        self._outstanding = set()
        self._shut = False

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot submit after shutdown")
        future = self._client._submit(fn, args, kwargs, self._options)
        self._track([future])
        return future

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Like ``concurrent.futures.Executor.map``: every call is submitted at once (in
        batches), results are yielded in order; TimeoutError if the next is not ready
        `timeout` seconds after the call. `chunksize` is accepted and ignored."""
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot submit after shutdown")
        futures = self._client._map(fn, iterables, {}, self._options)
        self._track(futures)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results():
            for future in futures:
                yield future.result(None if deadline is None
                                    else max(0.0, deadline - time.monotonic()))

        return results()

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No more submissions; with `wait`, returns once every task submitted here is done.
        Tasks cannot be cancelled, so `cancel_futures` changes nothing."""
        with self._lock:
            self._shut = True
            outstanding = list(self._outstanding)
        if wait:
            concurrent.futures.wait(outstanding)

    def _track(self, futures):
        with self._lock:
            self._outstanding.update(futures)
        for future in futures:
            future.add_done_callback(self._done)

    def _done(self, future):
        with self._lock:
            self._outstanding.discard(future)
