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
import os
from pathlib import Path


def _sortie_beside_this_package():
    """The sortie program of the tree this package belongs to: <build>/apps/sortie beside
    <build>/python/sortie, or <prefix>/bin/sortie beside <prefix>/lib/sortie/python/sortie."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "apps" / "sortie", here.parents[3] / "bin" / "sortie"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


# The hub a Client starts (connect-or-start) is this tree's sortie, unless SORTIE_EXE says
# otherwise: the C++ library would otherwise look beside /usr/bin/python3 and on PATH.
if "SORTIE_EXE" not in os.environ and (_exe := _sortie_beside_this_package()):
    os.environ["SORTIE_EXE"] = _exe

from ._client import Client  # noqa: E402
from ._errors import EngineLost, RemoteError, SortieError, TaskTimeout  # noqa: E402
from ._executor import Executor  # noqa: E402
from ._futures import (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, AsyncResult,  # noqa: E402
                       Future, as_completed, wait)
from ._jobs import EngineInfo, Job, Pilot, Resource  # noqa: E402
from ._views import View  # noqa: E402

__all__ = ["Client", "Job", "Pilot", "Resource", "EngineInfo", "View", "Future", "AsyncResult",
           "Executor", "as_completed", "wait", "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED",
           "SortieError", "RemoteError", "EngineLost", "TaskTimeout"]


def __getattr__(name):
    # `sortie.engine` is imported on first use, not here: `python3 -m sortie.engine` imports
    # this package first, and must find the module not yet imported.
    if name == "engine":
        return importlib.import_module(".engine", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
