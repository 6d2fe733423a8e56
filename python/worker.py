"""Python side of async_py.

This file serves two masters. The in-process (PyO3) backend loads it as a
module and calls its helpers, so both backends give the same answers for
the same code. The subprocess backend runs it as a program; `main()` then
speaks the wire protocol described in PROTOCOL.md beside this file.

It uses the standard library only, and runs on CPython 3.8 and later.
"""

import asyncio
import builtins
import functools
import inspect
import os
import site
import sys
import traceback

_HERE = globals().get("__file__", "<async_py>")


class RunnerTimeout(BaseException):
    """Raised inside code that ran past its limit.

    A BaseException, so that ``except Exception`` in user code does not
    swallow it and keep a timed-out loop running.
    """


def new_globals():
    """A fresh namespace for one runner: what a script sees at top level."""
    return {"__name__": "__main__", "__builtins__": builtins}


def run_code(code, namespace):
    exec(compile(code, "<string>", "exec"), namespace)


def eval_expr(expr, namespace):
    return eval(compile(expr, "<string>", "eval"), namespace)


def run_file(path, namespace):
    """Runs a file in the namespace, with its folder first on sys.path."""
    path = os.path.abspath(path)
    with open(path, "rb") as source_file:
        source = source_file.read()
    folder = os.path.dirname(path)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    namespace["__file__"] = path
    exec(compile(source, path, "exec"), namespace)


def resolve(name, namespace):
    """Looks up `a.b.c`: `a` in the namespace (then builtins), the rest as attributes."""
    first, _, rest = name.partition(".")
    try:
        target = namespace[first]
    except KeyError:
        try:
            target = getattr(builtins, first)
        except AttributeError:
            raise NameError("name %r is not defined" % first) from None
    if rest:
        for part in rest.split("."):
            target = getattr(target, part)
    return target


def venv_site_packages(venv):
    """The site-packages folder of a venv, preferring this interpreter's version."""
    if not os.path.isdir(venv):
        raise FileNotFoundError("venv folder not found: %s" % venv)
    windows = os.path.join(venv, "Lib", "site-packages")
    if os.path.isdir(windows):
        return windows
    version = "python%d.%d" % sys.version_info[:2]
    for lib in ("lib", "lib64"):
        exact = os.path.join(venv, lib, version, "site-packages")
        if os.path.isdir(exact):
            return exact
    found = []
    for lib in ("lib", "lib64"):
        lib_dir = os.path.join(venv, lib)
        if os.path.isdir(lib_dir):
            for entry in sorted(os.listdir(lib_dir)):
                candidate = os.path.join(lib_dir, entry, "site-packages")
                if entry.startswith("python") and os.path.isdir(candidate):
                    found.append(candidate)
    if not found:
        raise FileNotFoundError("no site-packages folder in venv: %s" % venv)
    return found[-1]


def set_venv(venv):
    """Puts a venv's site-packages (and what its .pth files name) first on sys.path."""
    packages = venv_site_packages(os.path.abspath(venv))
    before = set(sys.path)
    site.addsitedir(packages)
    added = [entry for entry in sys.path if entry not in before]
    for entry in added:
        sys.path.remove(entry)
    sys.path[0:0] = added
    return packages


def _user_traceback(exc):
    """The exception's traceback without this module's own frames at the top."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == _HERE:
        tb = tb.tb_next
    return tb


def describe_error(exc):
    """(class name, str(), formatted traceback) of an exception."""
    try:
        message = str(exc)
    except BaseException:
        message = "<exception str() failed>"
    try:
        lines = traceback.format_exception(type(exc), exc, _user_traceback(exc))
        text = "".join(lines)
    except BaseException:
        text = None
    return type(exc).__name__, message, text


class CoroutineDriver:
    """One long-lived asyncio event loop that runs every awaited call of a runner.

    Calls overlap at their await points, and asyncio objects made in one call
    (futures, locks, sessions) stay usable in the next, because they all
    belong to this loop. The host drives the loop in turns: `turn(False)`
    runs what is ready and returns; `turn(True)` blocks until a call
    finishes or the host writes to its wake-up fd.
    """

    def __init__(self, wake_fd=None):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.finished = []
        self.pending = 0
        self.closing = False
        if wake_fd is not None:
            self.loop.add_reader(wake_fd, self._on_wake, wake_fd)

    def start(self, token, function, args, limit):
        """Calls `function(*args)`; schedules the result if it is awaitable.

        Returns (False, value) when there was nothing to await, else (True, None)
        and the outcome later appears in `finished` as (token, ok, value).
        """
        result = function(*args)
        if not inspect.isawaitable(result):
            return False, result
        asyncio.set_event_loop(self.loop)
        task = asyncio.ensure_future(result, loop=self.loop)
        timer = None
        if limit is not None:
            timer = self.loop.call_later(limit, self._expire, task)
        task.add_done_callback(functools.partial(self._done, token, timer))
        self.pending += 1
        return True, None

    def _expire(self, task):
        task.async_py_expired = True
        task.cancel()

    def _done(self, token, timer, task):
        if timer is not None:
            timer.cancel()
        self.pending -= 1
        if task.cancelled():
            outcome = (token, False, "timeout" if getattr(task, "async_py_expired", False) else "cancelled")
        elif task.exception() is not None:
            outcome = (token, False, task.exception())
        else:
            outcome = (token, True, task.result())
        self.finished.append(outcome)
        if not self.closing:
            self.loop.stop()

    def _on_wake(self, fd):
        try:
            os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            pass
        self.loop.stop()

    def turn(self, block):
        """Runs the loop once (block=False) or until woken; returns what finished."""
        if not block:
            self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()
        finished, self.finished = self.finished, []
        return finished

    def cancel_all(self):
        """Cancels every pending call, gives them a moment to unwind, closes the loop."""
        self.closing = True
        tasks = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        self.loop.close()


def _prepare_embedded():
    """Gives an embedded interpreter the process attributes scripts expect."""
    if not hasattr(sys, "argv") or not sys.argv:
        sys.argv = [""]


if __name__ != "__main__":
    _prepare_embedded()
