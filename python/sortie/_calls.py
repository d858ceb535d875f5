# SPDX-License-Identifier: Apache-2.0
"""What a function task is on the wire, made on the client side before anything is sent.

A task's payload is ``cloudpickle.dumps((fn, args, kwargs))`` with handler "" (the engine's
Python call). A call that cannot be pickled is refused here with a TypeError naming the part that
would not pickle. ``TaskOptions`` checks the keywords that configure a task (label, engine,
retries, timeout, priority) and makes the tuples ``Session.submit_tasks`` takes.
"""
import operator
import pickle
import sys
import types
import weakref

import cloudpickle

from ._units import duration_ms

PYTHON_CALL = ""  # the handler of a Python call


class Prepickled:
    """A function pickled once for many calls (``map``): it unpickles as the function itself,
    so each call's payload holds the same bytes without pickling the function again."""

    __slots__ = ("data", "name")

    def __init__(self, fn):
        self.name = describe(fn)
        try:
            self.data = cloudpickle.dumps(fn)
        except Exception as e:
            raise TypeError(f"cannot send {self.name} to an engine: it cannot be pickled: "
                            f"{e}") from e

    def __reduce__(self):
        return (_loads_function, (self.data,))


# Functions a Prepickled call brought, unpickled once per engine rather than once per call (as
# dask caches its functions): the same bytes give the same function object.
_functions = {}


def _loads_function(data):
    fn = _functions.get(data)
    if fn is None:
        if len(_functions) >= 64:
            _functions.clear()
        fn = _functions[data] = pickle.loads(data)
    return fn


# Values of these types pickle the same with the standard pickle, which is much faster than
# cloudpickle (which is needed for functions and classes that travel by value).
PLAIN = frozenset({int, float, complex, str, bytes, bytearray, bool, type(None)})


def reusable(fn):
    """`fn` for one call: a Prepickled of it made for an earlier call when everything its pickle
    carries is what it was then, else `fn` itself (pickled with the call).

    Pickling a function that travels by value walks its code, the globals it names, its closure
    and its defaults (~30 us); a loop of ``submit`` calls would pay that for each. The pickle is
    reused only while each of those values is the same object as when it was made and cannot
    change in place: plain immutable values (and tuples of them), and modules, builtins,
    functions and classes that pickle by reference (found by name in a module other than
    __main__). A function naming a list, a dict, a bytearray or another function of __main__ is
    pickled with every call, so that each call carries their values of that moment, as without
    the reuse.
    """
    if type(fn) is not types.FunctionType:
        return fn
    code = fn.__code__
    known = _reused.get(code)
    state = _state(fn, known[2] if known else None)
    if state is None:
        return fn
    if known is not None and len(known[1]) == len(state) and \
            all(a is b for a, b in zip(known[1], state)):
        return known[0]
    try:
        function = Prepickled(fn)
    except TypeError:
        return fn  # pack() names the part that does not pickle
    _reused[code] = (function, state, known[2] if known else _global_names(code))
    return function


# code object -> (Prepickled, the state it was made from, the global names the code uses)
_reused = weakref.WeakKeyDictionary()
_ABSENT = object()  # a global name that is not defined (a builtin, or an attribute's name)


def _global_names(code):
    """The names `code` and the code nested in it may read as globals (a superset: co_names
    also holds attribute names), as cloudpickle finds them."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


def _state(fn, names):
    """What pickling `fn` carries, as a tuple of objects; None when one of them may change in
    place (or `fn` has attributes of its own)."""
    if fn.__dict__:
        return None
    if names is None:
        names = _global_names(fn.__code__)
    scope = fn.__globals__
    try:
        closure = tuple(cell.cell_contents for cell in fn.__closure__ or ())
    except ValueError:  # an empty cell
        return None
    state = (fn.__name__, fn.__qualname__, fn.__module__, fn.__doc__, fn.__defaults__,
             *(scope.get(name, _ABSENT) for name in names), *closure,
             *_items(fn.__kwdefaults__), *_items(fn.__annotations__))
    return state if all(map(_unchanging, state)) else None


def _items(mapping):
    return [x for item in mapping.items() for x in item] if mapping else ()


def _unchanging(value):
    """Whether `value` pickles the same for as long as it is the same object."""
    kind = type(value)
    if kind in _IMMUTABLE or value is _ABSENT:
        return True
    if kind is tuple:
        return all(map(_unchanging, value))
    if kind is types.ModuleType:  # by name, unless cloudpickle sends it by value
        return sys.modules.get(value.__name__) is value and value.__name__ != "__main__" and \
            not _by_value(value.__name__)
    if kind is types.BuiltinFunctionType:  # len, math.sqrt; not a bound method as [].append
        return value.__self__ is None or type(value.__self__) is types.ModuleType
    if kind is types.FunctionType or isinstance(value, type):
        module = getattr(value, "__module__", None)
        return isinstance(module, str) and module != "__main__" and \
            not _by_value(module) and \
            getattr(sys.modules.get(module), value.__qualname__, None) is value
    return False


_IMMUTABLE = PLAIN - {bytearray}


def _by_value(module):
    """Whether cloudpickle pickles what `module` defines by value (register_pickle_by_value
    of it or of a package above it)."""
    return any(module == m or module.startswith(m + ".")
               for m in cloudpickle.list_registry_pickle_by_value())


def dumps(value):
    """`value` pickled: the standard pickle for plain values, cloudpickle otherwise."""
    if type(value) in PLAIN:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps(value)


def describe(fn):
    """A short name for `fn` in error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return f"function {name}" if name else repr(fn)


def check_callable(fn):
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable: pass the function first, then its arguments")


def pack(fn, args, kwargs, item=None):
    """The payload of the call ``fn(*args, **kwargs)``. On failure, a TypeError naming the
    function or argument that cannot be pickled (and `item`, the call's index in a map)."""
    try:
        if isinstance(fn, Prepickled) and not kwargs and all(type(a) in PLAIN for a in args):
            return pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        return cloudpickle.dumps((fn, args, kwargs))
    except Exception as error:
        raise _unpicklable(fn, args, kwargs, item, error) from error


def _unpicklable(fn, args, kwargs, item, error):
    name = fn.name if isinstance(fn, Prepickled) else describe(fn)
    parts = [("", fn)] + [(f"positional argument {i + 1} ", a) for i, a in enumerate(args)] + \
        [(f"keyword argument {k!r} ", v) for k, v in kwargs.items()]
    where = f" (item {item} of the map)" if item is not None else ""
    for what, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception as e:
            subject = f"{what}of the call to {name}" if what else name
            kind = type(value)
            return TypeError(f"cannot send {subject}{where} to an engine: "
                             f"{kind.__module__}.{kind.__qualname__} cannot be pickled: {e}")
    return TypeError(f"cannot send the call to {name}{where} to an engine: {error}")


class TaskOptions:
    """The keywords that configure a task, checked once:

    label     only engines with this label run it (None: any engine)
    engine    the id of the one engine that runs it (None: load-balanced)
    retries   how many times it runs again elsewhere when its engine dies (default 0)
    timeout   seconds (or "10m", ...) it may run before the hub fails it with TaskTimeout
    priority  higher runs first among waiting tasks (default 0)
    """

    def __init__(self, label=None, engine=None, retries=0, timeout=None, priority=0):
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a string, not {type(label).__name__}")
        self.label = label or ""
        self.engine = 0 if engine is None else operator.index(engine)
        if engine is not None and self.engine <= 0:
            raise ValueError(f"engine must be an engine id (a positive number), not {engine}")
        self.retries = operator.index(retries)
        if self.retries < 0:
            raise ValueError(f"retries must not be negative, not {retries}")
        self.timeout_ms = 0 if timeout is None else duration_ms(timeout, "timeout")
        if timeout is not None and self.timeout_ms <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.priority = operator.index(priority)

    def call(self, payload, engine=None, handler=PYTHON_CALL):
        """The tuple Session.submit_tasks takes for one task; `engine` overrides the option."""
        return (handler, payload, self.engine if engine is None else engine, self.label,
                self.retries, self.timeout_ms, self.priority)


def handler_name(handler):
    """A compiled engine's handler name, checked."""
    if not isinstance(handler, str) or not handler:
        raise TypeError(f"the handler is named by a non-empty string, not {handler!r}")
    if len(handler.encode()) > 256:
        raise ValueError(f"a handler name of {len(handler.encode())} bytes: at most 256")
    return handler


def payload_bytes(payload):
    """A compiled engine's call payload: bytes (or another bytes-like object)."""
    if isinstance(payload, str):
        raise TypeError("a handler's payload is bytes: encode the str first "
                        "(payload.encode())")
    try:
        return bytes(memoryview(payload))
    except TypeError:
        raise TypeError(f"a handler's payload is bytes, not {type(payload).__name__}") from None
