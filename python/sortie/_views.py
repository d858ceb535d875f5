# SPDX-License-Identifier: Apache-2.0
"""Views: a fixed set of engines to run the same call on, as ipyparallel's DirectView.

A view names its engines by their job and MPI rank, which an engine keeps when it is started
again (``restart=True``), and finds their current engine ids at each call (one request to the
hub). Everything a view does is an ordinary direct task per engine: ``execute``, ``push`` and
``pull`` send small functions that run with the engine's namespace as their globals, so the
engine needs no special handlers.
"""
from ._calls import (Prepickled, TaskOptions, check_callable, handler_name, pack, payload_bytes,
                     reusable)
from ._errors import SortieError
from ._futures import AsyncResult

__all__ = ["View"]

_DIRECT = TaskOptions()  # direct tasks of a view take no options: the engine is set per call


def _namespace_functions():
    """The functions behind execute, push and pull. They are defined here, nested, so that
    cloudpickle sends them by value, and the engine runs them with its namespace as globals()."""

    def execute(source):
        exec(compile(source, "<execute>", "exec"), globals())

    def push(values):
        globals().update(values)

    def pull(names):
        namespace = globals()

        def get(name):
            try:
                return namespace[name]
            except KeyError:
                raise NameError(f"name {name!r} is not defined on this engine") from None

        return get(names) if isinstance(names, str) else [get(name) for name in names]

    return execute, push, pull


_execute, _push, _pull = _namespace_functions()


class View:
    """Engines to run calls on: ``Client.start_engines`` and ``Client.engines`` return one.

    ``len(view)`` is its number of engines, ``view.ids`` their current engine ids, ``view[i]``
    a view of one engine (whose calls return a single value rather than a list), and iterating
    gives those one-engine views. Calls block until every engine has answered and raise the
    first error, in engine order; the ``_async`` forms return an ``AsyncResult``.
    """

    def __init__(self, client, members, single=False, selection=""):
        self._client = client
        self._members = tuple(members)  # (engine job id, MPI rank) of each engine, in order
        self._single = single
        self._selection = selection  # how the view was chosen, for errors
        self._ids = None  # the engine ids last looked up (a restarted engine gets a new one)

    def __len__(self):
        return len(self._members)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return View(self._client, self._members[index], selection=self._selection)
        return View(self._client, (self._members[index],), single=True,
                    selection=self._selection)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return f"<sortie.View of {len(self)} engine{'' if len(self) == 1 else 's'}>"

    @property
    def ids(self):
        """The engines' current ids, in view order ([] for a view with no engines)."""
        return self._engine_ids() if self._members else []

    def apply_async(self, fn, *args, **kwargs):
        """Calls ``fn(*args, **kwargs)`` once on every engine of the view; an AsyncResult."""
        check_callable(fn)
        payload = pack(reusable(fn), args, kwargs)
        futures = self._submit_each(lambda ids: [_DIRECT.call(payload, engine=i) for i in ids])
        return AsyncResult(futures, self._single)

    def apply(self, fn, *args, **kwargs):
        """Calls ``fn(*args, **kwargs)`` once on every engine; the results in engine order (a
        single value for a view of one engine). Every keyword goes to `fn`."""
        return self.apply_async(fn, *args, **kwargs).get()

    def call_async(self, handler, payload=b""):
        """Calls the handler `handler` of every engine of the view (compiled engines,
        ``sortie::Engine``) with `payload` (bytes); an AsyncResult of their replies."""
        handler, payload = handler_name(handler), payload_bytes(payload)
        futures = self._submit_each(
            lambda ids: [_DIRECT.call(payload, engine=i, handler=handler) for i in ids], raw=True)
        return AsyncResult(futures, self._single)

    def call(self, handler, payload=b""):
        """The replies (bytes) of `handler` on every engine, in engine order (a single reply for
        a view of one engine)."""
        return self.call_async(handler, payload).get()

    def map_async(self, fn, *iterables):
        """Spreads the calls ``fn(*items)`` over the view's engines in turn; an AsyncResult
        whose ``get()`` is the list of results in order."""
        check_callable(fn)
        function = Prepickled(fn)
        payloads = [pack(function, args, {}, item=i) for i, args in enumerate(zip(*iterables))]
        futures = self._submit_each(lambda ids: [_DIRECT.call(payload, engine=ids[i % len(ids)])
                                                 for i, payload in enumerate(payloads)])
        return AsyncResult(futures)

    def map(self, fn, *iterables):
        """``list(map(fn, *iterables))`` computed on the view's engines, spread in turn."""
        return self.map_async(fn, *iterables).get()

    def execute(self, source):
        """Runs Python source on every engine, in its namespace (``import numpy as np``, ``def
        f(x): ...``): what it defines stays for later calls. A SyntaxError is raised here."""
        compile(source, "<execute>", "exec")
        self.apply(_execute, source)

    def push(self, values):
        """Sets names in every engine's namespace: ``view.push({"a": 1})``."""
        self.apply(_push, dict(values))

    def pull(self, names):
        """Reads names from every engine's namespace: ``pull("a")`` is the value of ``a`` on
        each engine, ``pull(["a", "b"])`` a list of values on each. NameError if one is not
        defined."""
        if not isinstance(names, str):
            names = list(names)
        return self.apply(_pull, names)

    def stop(self):
        """Cancels the jobs of the view's engines (an engine job with several MPI ranks stops
        whole); the number of jobs that had not ended."""
        return self._client._hub_call("cancel_jobs", sorted({job for job, _ in self._members}))

    def _submit_each(self, calls_for, raw=False):
        """Submits the calls `calls_for(ids)` makes for the view's engine ids: those looked up
        last, and looked up again if one of them is gone (a restarted engine has a new id)."""
        if self._ids is None:
            self._ids = self._engine_ids()
        try:
            return self._client._submit_calls(calls_for(self._ids), raw)
        except SortieError as e:
            if e.code != "not_found":
                raise
        self._ids = self._engine_ids()
        return self._client._submit_calls(calls_for(self._ids), raw)

    def _engine_ids(self):
        if not self._members:
            chosen = f" ({self._selection})" if self._selection else ""
            raise ValueError(f"this view has no engines{chosen}: start some with "
                             "client.start_engines(n, label=...)")
        return self._client._engine_ids(self._members)
