# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""A child's output: captured commands (`run_captured`, `invoke_captured`)
and output frames for a parent with `on_output` (PROTOCOL.md, "Output").

- A synchronous captured command runs with fds 1 and 2 pointed at two
  capture files (unlinked temporary files, on disk rather than in memory),
  so that `print`, `os.write(1, ...)`, C `printf` and the processes it
  starts are captured alike and in order; at its end the fds point back
  at the stderr pipe, and at most CAPTURE_CAP bytes of each file are read.
- The awaitable a captured invoke returns runs on the event loop with the
  capture in its context (output.py): what it writes through sys.stdout
  and sys.stderr is kept in memory, capped; writes to the fds are not its.
- With ENV_OUTPUT set to OUTPUT_FRAMES in its environment, the child sends
  what the main thread writes through sys.stdout and sys.stderr as
  `["output", stream, lines]` frames, in order with its replies, instead
  of writing it to its stderr.
"""

import os

_frames_asked = False
"""The parent asked for output frames (read, and removed from the
environment, before any user code runs)."""


def take_output_setting():
    """Reads ENV_OUTPUT once and removes it, so that user code and the
    programs it starts do not see it (a zygote's forks inherit this global)."""
    global _frames_asked
    _frames_asked = os.environ.pop(ENV_OUTPUT, None) == OUTPUT_FRAMES


def _capture_file():
    import tempfile

    return tempfile.TemporaryFile(buffering=0)


def _read_capture_file(fd, capture, index):
    """Moves what fd `fd` holds into the capture (at most its cap), and
    empties the file for the next command."""
    size = os.lseek(fd, 0, os.SEEK_CUR)
    if not size:
        return
    cap = capture.cap
    data = os.pread(fd, min(size, cap), 0)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    cut = size > cap
    text = None
    if cut:
        # The cut may fall inside a character: drop its start.
        for trim in range(4):
            try:
                text = data[: len(data) - trim].decode("utf-8")
                break
            except UnicodeDecodeError:
                pass
    if text is None:
        text = data.decode("utf-8", "backslashreplace")
    capture.write(index, text)
    if cut:
        capture.cut[index] = True


class ChildOutput:
    """The part of ChildWorker that handles output (a mixin: it uses the
    worker's outbox, flush and coroutine driver)."""

    flushing = False
    """True while _flush writes: output written meanwhile (a __del__, a
    signal handler) waits for the next flush."""
    output_route = None
    """The LineRoute of the main thread once output frames are on."""
    capture_files = None
    """(file for fd 1, file for fd 2, the stderr pipe), made on first use."""
    coroutine_captures = None
    """{request id: Capture} of captured invokes awaiting on the loop."""

    def _output_router(self):
        router = output_router()
        # The routed streams write through: a reply needs no flush of them.
        self.direct_streams = router.streams
        return router

    def route_output_if_asked(self):
        """Sends the main thread's uncaptured output as frames, if the
        parent asked for that."""
        if _frames_asked:
            self.output_route = self._output_router().route_thread(self._emit_lines)

    def _emit_lines(self, index, lines):
        """One output frame, sent at once (a flush in progress takes it
        along with the next one)."""
        if _in_forked_copy:
            # A copy that user code forked shares the protocol pipe, which
            # is the worker's: its output goes to stderr as text.
            try:
                os.write(2, "".join(line + "\n" for line in lines).encode("utf-8", "backslashreplace"))
            except OSError:
                pass
            return
        try:
            payload = pack([MSG_OUTPUT, index, lines])
        except Exception:  # lone surrogates
            payload = pack([MSG_OUTPUT, index, [_wire_text(line) for line in lines]])
        self._send(payload)
        if not self.flushing:
            self._flush()

    def end_output_lines(self):
        """Sends the lines left open (their commands have ended) ahead of
        the outbox's replies."""
        route = self.output_route
        if route is None or not (route.parts[0] or route.parts[1]):
            return
        replies = self.outbox
        self.outbox = []
        self.flushing = True
        try:
            route.end_lines()
        finally:
            self.flushing = False
        self.outbox += replies

    # -- captured commands ----------------------------------------------------

    def _begin_fd_capture(self, router):
        files = self.capture_files
        if files is None:
            out, err = _capture_file(), _capture_file()
            files = self.capture_files = (out, err, os.dup(2))
        if sys.stdout is not router.streams[0] or sys.stderr is not router.streams[1]:
            _flush_stdio()
        capture = router.begin_capture(through_fd=True)
        os.dup2(files[0].fileno(), 1)
        os.dup2(files[1].fileno(), 2)
        return capture

    def _end_fd_capture(self, router, capture):
        global _output_written
        if sys.stdout is not router.streams[0] or sys.stderr is not router.streams[1]:
            _flush_stdio()
        out, err, pipe = self.capture_files
        os.dup2(pipe, 1)
        os.dup2(pipe, 2)
        router.leave_capture(capture)
        capture.through_fd = False
        _read_capture_file(out.fileno(), capture, 0)
        _read_capture_file(err.fileno(), capture, 1)

    def _captured_frame(self, request_id, capture):
        stdout, stderr = capture.finish()
        payload = pack([MSG_CAPTURED, request_id, stdout, stderr])
        return _frame_header(len(payload)), payload

    def op_run_captured(self, request_id, code):
        global _output_written
        router = self._output_router()
        noted = _output_written
        capture = self._begin_fd_capture(router)
        try:
            run_code(code, self.globals)
        finally:
            self._end_fd_capture(router, capture)
            _output_written = noted
        self.outbox += self._captured_frame(request_id, capture)

    def op_invoke_captured(self, request_id, name, args, kwargs, typed, limit):
        """An invoke whose output is captured: its reply (when it succeeds)
        follows a `captured` frame. An awaitable result runs with the
        capture in its context, and its frame goes before its reply."""
        global _output_written
        router = self._output_router()
        noted = _output_written
        capture = self._begin_fd_capture(router)
        at = len(self.outbox)
        try:
            self.op_invoke(request_id, name, args, kwargs, typed, limit)
        finally:
            self._end_fd_capture(router, capture)
            _output_written = noted
        driver = self.driver
        if driver is not None and request_id in driver.tasks:
            if self.coroutine_captures is None:
                self.coroutine_captures = {}
            self.coroutine_captures[request_id] = capture
            return
        self.outbox[at:at] = self._captured_frame(request_id, capture)

    def send_coroutine_capture(self, request_id):
        """Before the reply of a captured invoke's awaitable: what it wrote."""
        captures = self.coroutine_captures
        capture = captures.pop(request_id, None) if captures else None
        if capture is not None:
            self.outbox += self._captured_frame(request_id, capture)
