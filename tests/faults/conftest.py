# SPDX-License-Identifier: Apache-2.0
"""The fault catalogue runs with the integration tests' fixtures (a real hub and agents in a
temporary profile, every process gone at the end), loaded from there under another name."""
import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "integration" / "conftest.py"
_spec = importlib.util.spec_from_file_location("sortie_fixtures", _path)
_mod = importlib.util.module_from_spec(_spec)
sys.modules["sortie_fixtures"] = _mod
_spec.loader.exec_module(_mod)

from sortie_fixtures import *  # noqa: F401,F403,E402  (fixtures, helpers and the report hook)
from sortie_fixtures import pytest_runtest_makereport, sortie  # noqa: F401,E402


def hub_memory_kib(pid, field="VmHWM"):
    """The hub's peak (VmHWM) or current (VmRSS) resident memory, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")
