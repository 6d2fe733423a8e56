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

_lseek = os.lseek
_SEEK_CUR = os.SEEK_CUR
_FRAME_TEXT = 1 << 20
"""About how much text (characters) one output frame carries."""

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


def _read_capture_file(fd, size, capture, index, start=0):
    """Moves what fd `fd` holds from `start` (`size` bytes) into the capture
    (at most its cap), and cuts the file back to `start` for the next
    command (or for the captured command around a nested one)."""
    if not size:
        return
    cap = capture.cap
    data = os.pread(fd, min(size, cap), start)
    os.ftruncate(fd, start)
    os.lseek(fd, start, os.SEEK_SET)
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
        capture.mark_cut(index)


class ChildOutput:
    """The part of ChildWorker that handles output (a mixin: it uses the
    worker's outbox, flush and coroutine driver)."""

    writing = False
    """True while _flush writes frames out, or lines are ended ahead of
    the replies: output written meanwhile (a __del__, a signal handler)
    waits for the next flush."""
    emitting = False
    """True while _emit_lines flushes its frames: lines left open then are
    still being written, not ended."""
    output_route = None
    """The LineRoute of the main thread once output frames are on."""
    capture_files = None
    """(fd for fd 1, fd for fd 2, the stderr pipe, and the two files that
    hold those fds open), made on first use."""
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
        # One write may end many lines, or one line of many pieces: frames
        # of about a MiB each stay far below any frame limit.
        start = 0
        while start < len(lines):
            end, size = start, 0
            while end < len(lines) and (size < _FRAME_TEXT or end == start):
                size += len(lines[end]) + 1
                end += 1
            batch = lines if start == 0 and end == len(lines) else lines[start:end]
            try:
                payload = pack([MSG_OUTPUT, index, batch])
            except Exception:  # lone surrogates
                payload = pack([MSG_OUTPUT, index, [_wire_text(line) for line in batch]])
            self._send(payload)
            if not self.writing:
                self.emitting = True
                try:
                    self._flush()
                finally:
                    self.emitting = False
            start = end

    def end_output_lines(self):
        """Sends the lines left open (their commands have ended) ahead of
        the outbox's replies."""
        route = self.output_route
        if route is None or self.emitting or not (route.parts[0] or route.parts[1]):
            return
        # In place: a stream's loop holds the outbox (see _make_items).
        outbox = self.outbox
        replies = outbox[:]
        outbox.clear()
        self.writing = True
        try:
            route.end_lines()
        finally:
            self.writing = False
        outbox += replies

    # -- captured commands ----------------------------------------------------

    capturing = False
    """True while a captured invoke's function runs: an awaitable it
    returns is scheduled with a capture of its own (schedule_captured)."""
    router = None
    fd_capturing = 0
    """How many captured commands have fds 1 and 2 on the capture files."""
    capture_starts = ()
    """For each captured command running around the one running now (a
    nested request inside a host call's wait), where its text in the two
    capture files ends: the nested one's text follows, and is cut off
    again when it ends."""

    def _begin_fd_capture(self):
        """Points fds 1 and 2 at the capture files. Only with a route
        (on_output) does the main thread's text need telling to go to the
        fds rather than the route; the Capture that says so is returned."""
        files = self.capture_files
        if files is None:
            self.router = self._output_router()
            out, err = _capture_file(), _capture_file()
            files = self.capture_files = (out.fileno(), err.fileno(), os.dup(2), out, err)
        streams = self.router.streams
        if sys.stdout is not streams[0] or sys.stderr is not streams[1]:
            _flush_stdio()
        capture = None if self.output_route is None else self.router.begin_capture(through_fd=True)
        if self.fd_capturing:
            # Nested: the fds point at the files already; its text goes
            # after what the captured command around it wrote so far.
            self.capture_starts += ((_lseek(files[0], 0, _SEEK_CUR), _lseek(files[1], 0, _SEEK_CUR)),)
        else:
            os.dup2(files[0], 1)
            os.dup2(files[1], 2)
        self.fd_capturing += 1
        return capture

    def _end_fd_capture(self, capture):
        """Points fds 1 and 2 back at the stderr pipe; returns a Capture
        holding what went to the files (at most its cap of each), or None
        if nothing did and there was none."""
        streams = self.router.streams
        if sys.stdout is not streams[0] or sys.stderr is not streams[1]:
            _flush_stdio()
        out, err, pipe = self.capture_files[:3]
        self.fd_capturing -= 1
        if self.fd_capturing:
            (out_start, err_start), self.capture_starts = self.capture_starts[-1], self.capture_starts[:-1]
        else:
            out_start = err_start = 0
            os.dup2(pipe, 1)
            os.dup2(pipe, 2)
        if capture is not None:
            self.router.leave_capture(capture)
            capture.through_fd = False
        out_size = _lseek(out, 0, _SEEK_CUR) - out_start
        err_size = _lseek(err, 0, _SEEK_CUR) - err_start
        if out_size or err_size:
            if capture is None:
                capture = Capture(self.router.cap)
            _read_capture_file(out, out_size, capture, 0, out_start)
            _read_capture_file(err, err_size, capture, 1, err_start)
        if capture is not None:
            # A task the command left running writes as uncaptured output.
            capture.open = False
        return capture

    def _captured_frame(self, request_id, capture):
        """The frame of what a captured request wrote; none (an empty
        tuple) for a request that wrote nothing."""
        if capture is None:
            return ()
        stdout, stderr = capture.finish()
        if not stdout and not stderr:
            return ()
        payload = pack([MSG_CAPTURED, request_id, stdout, stderr])
        return _frame_header(len(payload)), payload

    def op_run_captured(self, request_id, code):
        global _output_written
        noted = _output_written
        capture = self._begin_fd_capture()
        try:
            run_code(code, self.globals)
        finally:
            capture = self._end_fd_capture(capture)
            _output_written = noted
        self.outbox += self._captured_frame(request_id, capture)

    def op_invoke_captured(self, request_id, name, args, kwargs, typed, limit):
        """An invoke whose output is captured: its reply (when it succeeds)
        follows a `captured` frame. An awaitable result runs with a capture
        in its context, and that frame goes before its reply."""
        global _output_written
        noted = _output_written
        try:
            capture = self._begin_fd_capture()
        except BaseException as exc:  # no capture file (a full or read-only TMPDIR)
            self._request_failed(request_id, exc)
            return
        at = len(self.outbox)
        # Saved: a captured invoke may run nested in another's host call.
        outer_capturing = self.capturing
        self.capturing = True
        try:
            self.op_invoke(request_id, name, args, kwargs, typed, limit)
        finally:
            self.capturing = outer_capturing
            capture = self._end_fd_capture(capture)
            _output_written = noted
        awaited = self.coroutine_captures and self.coroutine_captures.get(request_id)
        if awaited is not None:
            # What the call wrote comes before what its awaitable writes,
            # which has not started yet.
            for index in (0, 1) if capture is not None and capture.parts is not None else ():
                for part in capture.parts[index]:
                    awaited.write(index, part)
                if capture.cut[index]:
                    awaited.mark_cut(index)
            return
        self.outbox[at:at] = self._captured_frame(request_id, capture)

    def schedule_captured(self, driver, request_id, awaitable, limit):
        """Schedules a captured invoke's awaitable with a capture in the
        context its task copies."""
        capture = self.router.begin_capture()
        try:
            driver.schedule(request_id, awaitable, limit)
        finally:
            self.router.leave_capture(capture)
        if self.coroutine_captures is None:
            self.coroutine_captures = {}
        self.coroutine_captures[request_id] = capture

    def send_coroutine_capture(self, request_id):
        """Before the reply of a captured invoke's awaitable: what it wrote."""
        capture = self.coroutine_captures.pop(request_id, None)
        if capture is not None:
            self.outbox += self._captured_frame(request_id, capture)
