# SPDX-License-Identifier: Apache-2.0
"""sortie from Python: pilots, command jobs, engines and function tasks (docs/python.md).

    import sortie
    client = sortie.Client()                 # the default profile's hub, started if none runs
    client.add_pilot(resource="local", slots_per_node=4, label="cpu")
    client.wait_for_pilots()
    view = client.start_engines(4, label="cpu")
    futures = client.map(pow, range(10), [2] * 10)
    client.gather(futures)

``sortie.engine`` (imported on first use) tells a task where it runs; docs/engines.md says
what engines do.
"""
import importlib

from ._client import Client
from ._errors import EngineLost, RemoteError, SortieError, TaskTimeout
from ._executor import Executor
from ._futures import (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, AsyncResult, Future,
                       as_completed, wait)
from ._jobs import Job, Pilot, Resource
from ._views import View

__all__ = ["Client", "Job", "Pilot", "Resource", "View", "Future", "AsyncResult", "Executor",
           "as_completed", "wait", "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED",
           "SortieError", "RemoteError", "EngineLost", "TaskTimeout"]


def __getattr__(name):
    # `sortie.engine` is imported on first use, not here: `python3 -m sortie.engine` imports
    # this package first, and must find the module not yet imported.
    if name == "engine":
        return importlib.import_module(".engine", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
