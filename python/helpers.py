# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""What user code meets, in every backend: the runner's namespace, run,
eval, run_file, resolve and set_venv, how an exception is described, and
the CoroutineDriver that runs awaited calls.

The in-process backends (PyO3, RustPython) load these helpers (with
value_table.py) as one module and call them, so every backend gives the
same answers for the same code; a subprocess child runs them as part of
the whole worker (serve.py states its protocol).
"""

import builtins
import functools
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


def _compile_without_nul(source, filename, mode):
    if not isinstance(source, (str, bytes)):
        return source  # compiled already, by the RustPython backend
    if (b"\0" if isinstance(source, bytes) else "\0") in source:
        raise ValueError("source code string cannot contain null bytes")
    return compile(source, filename, mode)


# RustPython's parser calls a NUL byte plain invalid syntax; this says what
# CPython up to 3.11 says (3.12 raises SyntaxError with the same message).
# CPython keeps its own check and pays nothing for this one.
_compile = _compile_without_nul if sys.implementation.name == "rustpython" else compile


def run_code(code, namespace):
    exec(_compile(code, "<string>", "exec"), namespace)


def eval_expr(expr, namespace):
    return eval(_compile(expr, "<string>", "eval"), namespace)


def native_path(path):
    """A path as str: the bytes of one that is not UTF-8 (an array of ints
    on the wire, bytes in process) are decoded as os.fsdecode does, so the
    os functions find the same file."""
    if isinstance(path, str):
        return path
    return os.fsdecode(bytes(path))


def run_file(path, namespace, code=None):
    """Runs a file (or `code`, compiled from it) in the namespace, with its
    folder first on sys.path."""
    path = os.path.abspath(native_path(path))
    if code is None:
        with open(path, "rb") as source_file:
            source = source_file.read()
    else:
        source = code
    folder = os.path.dirname(path)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    namespace["__file__"] = path
    exec(_compile(source, path, "exec"), namespace)


def resolve(name, namespace):
    """Looks up `a.b.c`: `a` in the namespace (then builtins), the rest as attributes."""
    first, dot, rest = name.partition(".")
    try:
        target = namespace[first]
    except KeyError:
        try:
            target = getattr(builtins, first)
        except AttributeError:
            raise NameError("name %r is not defined" % first) from None
    if dot:
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
    seen = set()
    for lib in ("lib", "lib64"):
        lib_dir = os.path.join(venv, lib)
        if os.path.isdir(lib_dir):
            for entry in sorted(os.listdir(lib_dir)):
                candidate = os.path.join(lib_dir, entry, "site-packages")
                # lib64 is often a link to lib: name each folder once, by lib.
                real = os.path.realpath(candidate)
                if entry.startswith("python") and os.path.isdir(candidate) and real not in seen:
                    seen.add(real)
                    found.append(candidate)
    if not found:
        raise FileNotFoundError("no site-packages folder in venv: %s" % venv)
    return found[-1]


def venv_version(venv):
    """(major, minor) of the Python a venv was made for, from its pyvenv.cfg,
    or None where the file does not say (venv writes `version`, uv and
    virtualenv `version_info`)."""
    try:
        with open(os.path.join(venv, "pyvenv.cfg"), encoding="utf-8", errors="replace") as cfg:
            lines = cfg.read().splitlines()
    except OSError:
        return None
    for line in lines:
        key, eq, value = line.partition("=")
        if eq and key.strip() in ("version", "version_info"):
            parts = value.strip().split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return int(parts[0]), int(parts[1])
    return None


def check_venv_version(venv):
    """Refuses a venv made for another CPython minor version: its compiled
    packages would fail later with an import error that names neither.
    RustPython runs pure-Python packages of any CPython venv, so it is not asked."""
    if sys.implementation.name != "cpython":
        return
    made_for = venv_version(venv)
    running = sys.version_info[:2]
    if made_for is not None and made_for != running:
        raise ImportError(
            "venv %s was made for Python %d.%d, but this interpreter is Python %s: "
            "its packages would not import. Make the venv with this interpreter "
            "(uv venv --python %d.%d), or run the venv's own interpreter with the "
            "subprocess backend (PyRunner::builder().subprocess().venv(dir))"
            % ((venv,) + made_for + ("%d.%d.%d" % sys.version_info[:3],) + running)
        )


def set_venv(venv):
    """Puts a venv's site-packages (and what its .pth files name) first on sys.path."""
    venv = os.path.abspath(native_path(venv))
    check_venv_version(venv)
    packages = venv_site_packages(venv)
    before = set(sys.path)
    site.addsitedir(packages)
    added = [entry for entry in sys.path if entry not in before]
    for entry in added:
        sys.path.remove(entry)
    sys.path[0:0] = added
    return packages


def _wire_text(text):
    """`text` with anything UTF-8 cannot carry (lone surrogates) escaped."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _user_traceback(exc):
    """The exception's traceback without this module's own frames at the top."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == _HERE:
        tb = tb.tb_next
    return tb


def describe_error(exc):
    """(class name, str(), formatted traceback) of an exception, as text
    UTF-8 can carry (lone surrogates escaped)."""
    try:
        message = str(exc)
    except BaseException:
        message = "<exception str() failed>"
    try:
        lines = traceback.format_exception(type(exc), exc, _user_traceback(exc))
        text = "".join(lines)
    except BaseException:
        text = None
    return _wire_text(type(exc).__name__), _wire_text(message), _wire_text(text)


class CoroutineDriver:
    """One long-lived asyncio event loop that runs every awaited call of a runner.

    Calls overlap at their await points, and asyncio objects made in one call
    (futures, locks, sessions) stay usable in the next, because they all
    belong to this loop. The host drives the loop in turns: `turn(False)`
    runs what is ready and returns; `turn(True)` blocks until a call
    finishes or the host writes to its wake-up fd. Each call has a token,
    the host's name for it (unique among the calls pending), by which its
    outcome comes back and by which it can be cancelled.
    """

    def __init__(self, wake_fd=None):
        _import_asyncio()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.finished = []
        self.pending = 0
        self.tasks = {}  # token -> the task of each pending call
        self.turning = False
        self.host_drain = None  # settles async host calls' results (PyO3)
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
        self.schedule(token, result, limit)
        return True, None

    def schedule(self, token, awaitable, limit):
        """Runs `awaitable` (a coroutine, future or other awaitable) on the
        loop, cancelled past `limit` seconds (None: no limit). Its outcome
        later appears in `finished` as (token, ok, value)."""
        asyncio.set_event_loop(self.loop)
        ended = []
        if limit is not None:
            awaitable = self._noting_end(awaitable, ended)
        task = asyncio.ensure_future(awaitable, loop=self.loop)
        timer = None
        if limit is not None:
            timer = self.loop.call_later(limit, self._expire, task)
        task.add_done_callback(functools.partial(self._done, token, timer, ended))
        self.tasks[token] = task
        self.pending += 1

    def cancel(self, token):
        """Cancels the pending call `token`: it gets CancelledError at its
        await point (its `finally` blocks run there), and its outcome then
        appears in `finished`, (token, False, "cancelled") unless it caught
        the error and went on. True if a pending call was cancelled; False
        if none is pending under that token (it finished, or never was)."""
        task = self.tasks.get(token)
        if task is None or task.done():
            return False
        return task.cancel()

    async def _noting_end(self, awaitable, ended):
        """Awaits a limited call, noting when it ended: its done callback
        may run much later, if another coroutine keeps the loop meanwhile."""
        try:
            return await awaitable
        finally:
            ended.append(self.loop.time())

    def _expire(self, task):
        task.async_py_expired = True
        task.cancel()

    def _done(self, token, timer, ended, task):
        # Past its limit, a call is a timeout however it ended: cancelled
        # at the limit, going on after its cancellation, or keeping the
        # loop (no await) so that the cancellation never came.
        late = timer is not None and (
            getattr(task, "async_py_expired", False) or (ended and ended[0] >= timer.when())
        )
        if timer is not None:
            timer.cancel()
        if self.tasks.get(token) is task:
            del self.tasks[token]
        self.pending -= 1
        if late:
            if not task.cancelled():
                task.exception()  # taken, or asyncio would log it as never retrieved
            outcome = (token, False, "timeout")
        elif task.cancelled():
            outcome = (token, False, "cancelled")
        elif task.exception() is not None:
            outcome = (token, False, task.exception())
        else:
            outcome = (token, True, task.result())
        self.finished.append(outcome)
        self.wake()

    def _on_wake(self, fd):
        try:
            os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            pass
        if self.host_drain is not None:
            self.host_drain()
        self.wake()

    def wake(self):
        """Ends the current `turn`. Outside one it does nothing: the loop may
        then be running user code's own `run_until_complete`, which a stop
        would break."""
        if self.turning:
            self.loop.stop()

    def turn(self, block):
        """Runs the loop once (block=False) or until woken; returns what finished."""
        if not block or self.finished:
            self.loop.call_soon(self.loop.stop)
        self.turning = True
        try:
            self.loop.run_forever()
        finally:
            self.turning = False
        finished, self.finished = self.finished, []
        return finished

    def finish(self, tokens):
        """Runs the pending calls `tokens` (an async generator's `aclose()`,
        say) for up to a second, before `cancel_all` cancels what is left:
        one cancelled before its first step would never run at all."""
        tasks = [self.tasks[token] for token in tokens if token in self.tasks]
        if tasks:
            self.loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))

    def cancel_all(self):
        """Cancels every pending call, gives them a moment to unwind, closes the loop."""
        tasks = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        self.loop.close()


def _import_asyncio():
    """Imports asyncio when the first CoroutineDriver is made: it is by far
    the slowest import here, and a child that never awaits starts without it."""
    global asyncio, inspect
    import asyncio
    import inspect


def _prepare_embedded():
    """Gives an embedded interpreter the process attributes scripts expect."""
    if not hasattr(sys, "argv") or not sys.argv:
        sys.argv = [""]


if __name__ != "__main__":  # loaded as a module: by an in-process backend, or a test
    _prepare_embedded()
