# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""Host functions: the module `async_py` through which Python calls the
Rust functions a runner was given (`async_py.host.NAME(*args, **kwargs)`).

Every runner provides the module; one interpreter holds one (`sys.modules`),
made by the first runner that needs it. Which functions `async_py.host`
names is the runner's whose code looks: a child or a RustPython
interpreter has one runner, whose namespace is the module's `host`
attribute; in-process CPython runners share an interpreter, so each sets
its namespace in a context variable on its own thread, which commands,
the coroutines they start and `asyncio.to_thread` inherit.

Each backend supplies the functions themselves: a sync one is any
callable; an async one is made here by `host_coroutine` around the
backend's `start` and `cancel`.
"""

import sys as _sys
import types as _types

try:
    from contextvars import ContextVar as _ContextVar
except ImportError:
    _ContextVar = None


class HostError(Exception):
    """A host function returned an error (or panicked): its message."""


class HostFunctions:
    """`async_py.host` of one runner: an attribute per host function."""

    def __init__(self, functions):
        self.__dict__.update(functions)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        known = sorted(self.__dict__)
        raise AttributeError(
            "async_py.host has no function %r (this runner's host functions: %s)"
            % (name, ", ".join(known) if known else "none")
        )

    def __repr__(self):
        return "<async_py.host: %s>" % (", ".join(sorted(self.__dict__)) or "no functions")


_NO_RUNNER = HostFunctions({})


class _NoContext:
    """Stands in for the context variable where `contextvars` is missing:
    every thread then sees the module's shared namespace."""

    def get(self, default):
        return default

    def set(self, value):
        raise RuntimeError("no context variables here")


class _HostModule(_types.ModuleType):
    """The type of the module `async_py` where runners share the
    interpreter. `host` is a property of the type, read on every access
    (which runner's functions it names depends on who looks): a property
    costs about a tenth of a module `__getattr__`, which CPython reaches
    only after a failed lookup."""

    host = property(lambda module: module._current.get(module._shared))


def host_module(per_thread=True):
    """`sys.modules['async_py']`, made on first need: with `host` read per
    thread (`per_thread`), or as a plain attribute where the interpreter
    has one runner, which is cheaper still (on RustPython the property
    doubled the cost of a host call)."""
    module = _sys.modules.get("async_py")
    if module is None or not getattr(module, "_async_py_made_here", False):
        kind = _HostModule if per_thread else _types.ModuleType
        module = kind(
            "async_py",
            "Rust functions this runner gives Python: async_py.host.NAME(...).",
        )
        module.HostError = HostError
        module._current = _ContextVar("async_py.host") if _ContextVar is not None else _NoContext()
        module._shared = _NO_RUNNER
        if not isinstance(module, _HostModule):
            module.host = _NO_RUNNER
        module._async_py_made_here = True
        _sys.modules["async_py"] = module
    return module


def install_host(functions, per_thread):
    """Gives this runner's Python its host functions (a dict of callables).
    `per_thread`: in-process CPython, where runners share the interpreter;
    otherwise the namespace is the module's own, seen by every thread."""
    module = host_module(per_thread)
    namespace = HostFunctions(functions)
    if per_thread and not isinstance(module._current, _NoContext):
        module._current.set(namespace)
    else:
        module._shared = namespace
        if not isinstance(module, _HostModule):
            module.host = namespace
    return namespace


def host_error(message):
    """The exception a failed host function raises."""
    return _sys.modules["async_py"].HostError(message)


def host_coroutine(name, start, cancel):
    """The coroutine function of async host function `name`. `start(args,
    kwargs, future)` begins the Rust future and returns a token; the
    backend later calls `settle_host(future, ok, value)` on the future's
    loop. An await that ends any other way (cancelled by the command's
    limit or its caller, or abandoned) calls `cancel(token)`, which drops
    the Rust future."""
    import asyncio

    async def call(*args, **kwargs):
        future = asyncio.get_running_loop().create_future()
        token = start(args, kwargs, future)
        try:
            return await future
        finally:
            # Not settled by the backend: the await was cancelled (the
            # future with it) or abandoned (GeneratorExit, an interrupt).
            if not future.done() or future.cancelled():
                cancel(token)

    call.__name__ = call.__qualname__ = name
    return call


def host_wake_on(loop, fd, drain):
    """Has `loop` call `drain()` whenever a byte arrives on `fd`, once per
    loop: for a backend whose async host functions finish on another
    thread, which cannot touch the interpreter and so wakes the loop
    through `fd`, and `drain` settles what finished."""
    if getattr(loop, "_async_py_host_wake", None) != fd:
        loop.add_reader(fd, drain)
        loop._async_py_host_wake = fd


def settle_host(future, ok, value):
    """Ends an async host call's future, unless it was cancelled."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(host_error(value))
