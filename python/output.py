# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""Where Python's output goes, in every backend: captured per command, or
handed line by line to the runner's `on_output` callback.

Once a runner needs either, `output_router()` puts a `RoutedStream` in
front of `sys.stdout` and one in front of `sys.stderr` (once per
interpreter: in-process runners of one CPython share them). Each write
then goes, first that applies:

1. to the capture open in the writer's context (a `contextvars` variable:
   an asyncio task copies it when it is made, so a captured coroutine and
   the tasks it starts keep their own capture while others interleave);
2. to the route of the writer's thread (`on_output`: a runner routes its
   own thread; threads that user code starts have none);
3. to the stream that was there before (where Python's own output goes).
"""

import _thread

try:
    from contextvars import ContextVar as _ContextVar
except ImportError:
    _ContextVar = None

CAPTURE_CAP = 16 << 20
"""What a capture keeps of each stream, in bytes of UTF-8 (src/tuning.rs)."""

LINE_CAP = 64 << 10
"""The longest line handed on in one piece, in characters; the parent
cuts it further to OUTPUT_LINE_CAP bytes (src/tuning.rs)."""


def cut_marker(cap):
    """The line that ends a captured stream cut at `cap` bytes."""
    return "[async_py: output cut at %d bytes]\n" % cap


def _utf8_size(text):
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _utf8_prefix(text, size):
    """The longest start of `text` that takes at most `size` bytes of UTF-8."""
    data = text.encode("utf-8", "surrogatepass")[:size]
    for trim in range(4):
        try:
            return data[: len(data) - trim].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            pass
    return ""


class Capture:
    """What one captured command writes to sys.stdout (index 0) and
    sys.stderr (index 1), each kept up to `cap` bytes, the cut marked.

    `through_fd`: a child's synchronous command, whose fds 1 and 2 point at
    capture files meanwhile; its writes go through the streams below, in
    order with what is written to the fds straight."""

    __slots__ = ("parts", "sizes", "cut", "cap", "open", "through_fd", "outer")

    def __init__(self, cap=CAPTURE_CAP, through_fd=False):
        # Made by the first write: most captured calls write nothing.
        self.parts = None
        self.sizes = None
        self.cut = None
        self.cap = cap
        self.open = True
        self.through_fd = through_fd
        self.outer = None

    def _start(self):
        self.parts = ([], [])
        self.sizes = [0, 0]
        self.cut = [False, False]

    def mark_cut(self, index):
        if self.parts is None:
            self._start()
        self.cut[index] = True

    def write(self, index, text):
        if self.parts is None:
            if not text:
                return
            self._start()
        if self.cut[index] or not text:
            return
        size = _utf8_size(text)
        room = self.cap - self.sizes[index]
        if size > room:
            text = _utf8_prefix(text, room)
            size = room
            self.cut[index] = True
        self.parts[index].append(text)
        self.sizes[index] += size

    def text(self, index):
        """What was kept of one stream, as text UTF-8 can carry (lone
        surrogates escaped, which can make it longer: still the cap), with
        the marker line after a cut."""
        text = "".join(self.parts[index])
        if not text.isascii():
            text = _wire_text(text)
        cut = self.cut[index]
        if _utf8_size(text) > self.cap:
            text = _utf8_prefix(text, self.cap)
            cut = True
        if cut:
            if text and not text.endswith("\n"):
                text += "\n"
            text += cut_marker(self.cap)
        return text

    def finish(self):
        """Closes the capture (later writes from its context, a task left
        running, go where uncaptured ones do) and returns (stdout, stderr)."""
        self.open = False
        if self.parts is None:
            return _NOTHING
        return self.text(0), self.text(1)


_NOTHING = ("", "")


class LineRoute:
    """Hands a thread's output on as lines: `emit(index, lines)` with the
    lines that a write ended (without their "\\n"), a line longer than
    LINE_CAP in pieces. The start of a line waits for its end, or for
    `end_lines` (the command that wrote it has ended)."""

    __slots__ = ("emit", "parts", "sizes")

    def __init__(self, emit):
        self.emit = emit
        self.parts = ([], [])
        self.sizes = [0, 0]

    def write(self, index, text):
        parts = self.parts[index]
        if "\n" not in text:
            if text:
                self._keep_open(index, text)
            return
        lines = text.split("\n")
        long = len(text) + self.sizes[index] > LINE_CAP
        if parts:
            parts.append(lines[0])
            lines[0] = "".join(parts)
            parts.clear()
        self.sizes[index] = 0
        rest = lines.pop()
        if long:
            lines = _in_pieces(lines)
        # Nothing is left open while `emit` runs: it may end open lines
        # (a child's flush does), and those are the next write's.
        self.emit(index, lines)
        if rest:
            self._keep_open(index, rest)

    def _keep_open(self, index, text):
        self.parts[index].append(text)
        self.sizes[index] += len(text)
        if self.sizes[index] >= LINE_CAP:
            self._pass_pieces(index)

    def _pass_pieces(self, index):
        """Hands on the whole LINE_CAP pieces of a line still open."""
        parts = self.parts[index]
        pending = "".join(parts)
        parts.clear()
        self.sizes[index] = 0
        whole = len(pending) - len(pending) % LINE_CAP
        self.emit(index, [pending[at : at + LINE_CAP] for at in range(0, whole, LINE_CAP)])
        if whole < len(pending):
            self._keep_open(index, pending[whole:])

    def end_lines(self):
        """Hands on the lines still open, each as a line of its own."""
        for index in (0, 1):
            parts = self.parts[index]
            if parts:
                line = "".join(parts)
                parts.clear()
                self.sizes[index] = 0
                self.emit(index, [line])


def _in_pieces(lines):
    pieces = []
    for line in lines:
        if len(line) <= LINE_CAP:
            pieces.append(line)
        else:
            pieces.extend(line[at : at + LINE_CAP] for at in range(0, len(line), LINE_CAP))
    return pieces


class _OneCapture:
    """A stand-in for a ContextVar where contextvars is missing (no
    coroutines run there, so one capture at a time is enough)."""

    def __init__(self):
        self.value = None

    def get(self):
        return self.value

    def set(self, value):
        self.value = value


class RoutedStream:
    """sys.stdout or sys.stderr once output is routed (see the module's
    docstring). Everything but writing is the stream's below."""

    def __init__(self, router, index, below):
        self._router = router
        self._index = index
        self._below = below
        self._capture_now = router.capture.get
        self._routes = router.routes

    def write(self, text):
        if type(text) is not str and not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        capture = self._capture_now()
        if capture is not None and capture.open:
            if not capture.through_fd:
                capture.write(self._index, text)
                return len(text)
        else:
            route = self._routes.get(_thread.get_ident())
            if route is not None:
                route.write(self._index, text)
                return len(text)
        below = self._below
        if below is None:  # no stream at all (an embedding without one)
            return len(text)
        return below.write(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if self._below is not None:
            self._below.flush()

    def writable(self):
        return True

    def __getattr__(self, name):
        return getattr(self._below, name)


class OutputRouter:
    """The routed sys.stdout and sys.stderr of one interpreter, the
    capture variable, and the routes by thread."""

    def __init__(self, cap):
        self.cap = cap
        # A capture that ended having held nothing, for end_capture's
        # caller to take again (making one costs RustPython microseconds).
        self.spare = None
        self.capture = _ContextVar("async_py_capture", default=None) if _ContextVar else _OneCapture()
        self.routes = {}
        self.streams = (RoutedStream(self, 0, sys.stdout), RoutedStream(self, 1, sys.stderr))
        sys.stdout, sys.stderr = self.streams

    def begin_capture(self, through_fd=False):
        """Opens a capture in the current context and returns it."""
        capture = Capture(self.cap, through_fd)
        capture.outer = self.capture.get()
        self.capture.set(capture)
        return capture

    def leave_capture(self, capture):
        """Leaves the capture's context (the capture itself stays open
        until `finish`, for the tasks that copied it)."""
        self.capture.set(capture.outer)
        capture.outer = None

    def begin_reused_capture(self):
        """begin_capture for a caller whose captures no task or thread can
        have copied (RustPython's: it runs no event loop), ended with
        end_capture, which may keep one for the next."""
        capture = self.spare
        if capture is None:
            return self.begin_capture()
        self.spare = None
        capture.open = True
        capture.outer = self.capture.get()
        self.capture.set(capture)
        return capture

    def end_capture(self, capture):
        """Leaves the context of a capture from begin_reused_capture and
        closes it: (stdout, stderr)."""
        self.capture.set(capture.outer)
        capture.outer = None
        capture.open = False
        if capture.parts is None:
            self.spare = capture
            return _NOTHING
        return capture.text(0), capture.text(1)

    def route_thread(self, emit):
        """Routes this thread's uncaptured output to `emit` (see LineRoute)."""
        route = LineRoute(emit)
        self.routes[_thread.get_ident()] = route
        return route

    def unroute_thread(self):
        route = self.routes.pop(_thread.get_ident(), None)
        if route is not None:
            route.end_lines()


def output_router(cap=CAPTURE_CAP):
    """The interpreter's router, made (and sys.stdout and sys.stderr
    routed) on first use, its captures keeping `cap` bytes of each stream;
    kept on `sys`, as every runner of the interpreter loads its own copy
    of these helpers."""
    router = getattr(sys, "_async_py_output", None)
    if router is None:
        router = OutputRouter(cap)
        sys._async_py_output = router
    return router
