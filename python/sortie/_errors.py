# SPDX-License-Identifier: Apache-2.0
"""The exceptions of the sortie package, and the one place where the compiled module's errors
become them.

``SortieError`` is what the hub (or the link to it) refused or reported, with the hub's error
code. ``RemoteError`` and its subclasses are how a task that failed on an engine comes back.
"""
import contextlib

from . import _sortie

__all__ = ["SortieError", "RemoteError", "EngineLost", "TaskTimeout"]


class SortieError(Exception):
    """An error reported by the hub or by the link to it.

    ``code`` is the hub's error code ("unavailable", "not_found", "invalid_argument",
    "timeout", "failed_precondition", "already_exists", "permission_denied", "cancelled",
    "resource_exhausted", "internal"), or None for a ``RemoteError``.
    """

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code

    def __reduce__(self):
        return (type(self), (str(self), self.code))


class RemoteError(SortieError):
    """A task raised on its engine.

    ``type_name`` is the remote exception's qualified type name ("ValueError",
    "mypackage.errors.Bad"), ``message`` its ``str()``, ``traceback`` the remote traceback as
    text, ``original`` the exception itself when it could be pickled there and unpickled here
    (else None), ``engine`` the id of the engine it ran on (0 when none) and ``task`` the task id.
    """

    def __init__(self, type_name, message, traceback="", original=None, engine=0, task=0):
        where = f" (task {task} on engine {engine})" if engine else f" (task {task})"
        text = f"{type_name}: {message}{where}"
        if traceback:
            text += "\nRemote traceback:\n" + traceback.rstrip("\n")
        super().__init__(text)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.original = original
        self.engine = engine
        self.task = task

    def __reduce__(self):
        return (type(self), (self.type_name, self.message, self.traceback, self.original,
                             self.engine, self.task))


class EngineLost(RemoteError):
    """The engine running the task died (killed, out of memory, its node lost) and the task had
    no retries left. ``message`` says how the engine ended."""


class TaskTimeout(RemoteError, TimeoutError):
    """The task ran past the ``timeout`` it was submitted with and was failed. A Python engine
    interrupts the call then: ``traceback`` shows where it was stopped."""


def from_native(error):
    """The SortieError for an error of the compiled module."""
    return SortieError(str(error), getattr(error, "code", None) or "internal")


@contextlib.contextmanager
def native_errors():
    """Raises errors of the compiled module as SortieError (without the C++ exception chained:
    its text is all there is to it)."""
    try:
        yield
    except _sortie.Error as e:
        raise from_native(e) from None
