# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""The child program: a subprocess worker speaks the wire protocol of
PROTOCOL.md on its stdin and stdout (protocol.py states its layout):

- frames are a 4-byte big-endian length and one MessagePack value;
- the child first sends `["hello", PROTOCOL_VERSION, "3.11.7", pid, executable, ring]`;
- with the reply ring the parent offers (shared memory), replies go there
  and stdout carries only doorbells;
- requests are `[id, op, ...]` (ops `run`, `run_file`, `eval`, `read`,
  `call`, `call_async`, `invoke`, `stream`, `set_venv`, `stop`) and are
  handled in arrival order, as are `["cancel", id]`, which cancels a
  pending coroutine or closes an open stream, and `["more", id, granted]`,
  which lets a stream send more items, and `["host_reply", hid, ok, value]`,
  the answer to a host call (child_host.py);
- replies are `[id, "ok", value]`, `[id, "data", value]` (a typed
  `invoke`'s, whose bytes are bin), `[id, "err", kind, message, traceback]`,
  `[id, "conv", message]` or `[id, "timeout"]`; only the replies to
  coroutines (`call_async`, and an `invoke` that first sent
  `["awaiting", id]`) can come back out of order;
- a `stream` request's function result is iterated: `["streaming", id, on_loop]`,
  then `[id, "item", value]` (or `"item_data"`) for each item, as far as
  the parent's credit goes, then the request's one reply;
- `["out"]` goes before the replies that follow output written through
  sys.stdout or sys.stderr, which is in the stderr pipe by then;
- `run_captured` and `invoke_captured` capture a request's output, sent
  as `["captured", id, stdout, stderr]` before its reply, and a child
  started with ASYNC_PY_OUTPUT=frames sends its output as
  `["output", stream, lines]` frames (child_output.py);
- Python's calls of the runner's host functions go out as
  `["host", hid, name, args, kwargs]` (and `["host_cancel", hid]` when an
  async one's await is cancelled) (child_host.py).

The whole worker uses the standard library only, and runs on CPython 3.8
and later. It carries its own MessagePack codec, and uses the C `msgpack`
package instead when the interpreter has it. The child runs every module
of python/MODULES joined into one source, this one last.
"""

import collections
import io
import os
import select
import signal
import sys
import time
import traceback
import types

# A pipe wake-up costs more than this, so the child polls for the next
# request for a moment before it sleeps in the selector.
_SPIN_SECONDS = 50e-6
# Pipes hand over at most 64 KiB at a time, and a bigger read buffer costs
# an mmap per read.
_READ_CHUNK = 1 << 16

# The frame layout and the bytes the fast paths write are protocol.py's.
_frame_header = FRAME_HEADER.pack
_frame_size = FRAME_HEADER.unpack_from
_ok_head = OK_HEAD.pack
_data_head = DATA_HEAD.pack
_monotonic = time.monotonic
_LATER = object()
"""Returned by a request handler whose reply comes when a coroutine finishes."""


_in_forked_copy = False
"""True in a process forked (os.fork) by user code in the worker."""

_worker_driver = None
"""The worker's CoroutineDriver, once it has one (a child worker only)."""


def _note_fork():
    global _in_forked_copy
    _in_forked_copy = True
    # Forked in a coroutine: the copy's loop turn ends after what is ready
    # now, and the copy with it (see ChildWorker._turn_loop). Only the
    # worker's own loop, and only in its turn: a loop that user code runs
    # inside a request (asyncio.run) is the user's, and the copy leaves when
    # that request returns. (asyncio cannot tell: it reports no running
    # loop in a forked process.)
    driver = _worker_driver
    if driver is not None and driver.turning:
        driver.loop.stop()


def _leave_forked_copy(exc):
    """Ends a copy of the worker that user code forked, once the code that
    forked returns into the worker (the worker is the other copy, and it
    answers): its output flushed, with the status a script ending with
    `exc` (None: none) would have."""
    status = 0
    try:
        if isinstance(exc, SystemExit):
            if isinstance(exc.code, int):
                status = exc.code & 0xFF
            elif exc.code is not None:
                print(exc.code, file=sys.stderr)
                status = 1
        elif exc is not None:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
            status = 1
        _flush_stdio()
    finally:
        os._exit(status)


_output_written = False
"""True once sys.stdout or sys.stderr took a write since the last output
mark (see ChildWorker._flush)."""

_fileio_write = io.FileIO.write


class _NotedFileIO(io.FileIO):
    """The fd under the worker's sys.stdout and sys.stderr: each write is
    noted, so that only replies that follow output go out behind a mark,
    and a reply after none costs nothing more."""

    def write(self, data):
        global _output_written
        _output_written = True
        return _fileio_write(self, data)


def _noted_stream(fd, like):
    """A text stream on `fd` that notes its writes, writing through as
    `python -u` streams do, with `like`'s encoding and error handler."""
    return io.TextIOWrapper(
        _NotedFileIO(fd, "w", closefd=False),
        encoding=getattr(like, "encoding", None) or "utf-8",
        errors=getattr(like, "errors", None) or "backslashreplace",
        newline="\n",
        line_buffering=True,
        write_through=True,
    )


def _say(message):
    """One line on stderr, straight to the fd: user code may have replaced sys.stderr."""
    global _output_written
    _output_written = True
    try:
        os.write(2, ("async_py worker: %s\n" % message).encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _flush_stdio():
    """Flushes what user code printed (sys.stdout is fd 2 by now)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # closed or replaced by user code
            pass


def _is_limit(value):
    """nil, or a finite number of seconds that is not negative."""
    return value is None or (type(value) in (int, float) and _isfinite(value) and value >= 0)


class ChildWorker(ChildOutput, ChildStreams, ChildHost):
    """Answers the requests of one parent until `stop` or end of input.

    Every op runs to completion in the order its request arrived, outside the
    event loop (so user code may call `asyncio.run`), except `call_async`,
    whose coroutine runs on the CoroutineDriver's loop while the child waits
    for the next request in that loop's selector, and so does the awaitable
    an `invoke` returns.
    """

    def __init__(
        self,
        proto_in,
        proto_out,
        pack_value=pack,
        unpack_frame=unpack,
        pack_data=pack_typed,
        ring=None,
        share=False,
    ):
        self.proto_in = proto_in
        # A pool's worker shares the cores with its siblings and the parent:
        # while it polls for a request it gives its core to whichever of them
        # is ready to run.
        self.pause = getattr(os, "sched_yield", None) if share else None
        self.proto_out = proto_out
        # Replies take the ring from the first one after the hello.
        self.offered_ring = ring
        self.ring = None
        self.pack_value = pack_value
        self.unpack_frame = unpack_frame
        self.pack_data = pack_data
        self.globals = new_globals()
        self.driver = None  # made by the first call_async, or invoke that awaits
        self.poller = select.poll()
        self.poller.register(proto_in, select.POLLIN)
        self.inbox = bytearray()
        self.deferred = collections.deque()  # frames a host call's wait put aside, in order
        self.outbox = []
        self.at_eof = False
        self.stopping = False
        self.running = None  # the id of the request running now, if any
        self.limits = {}  # a launched child's request limits (MSG_LIMIT), by id
        self.limited = None  # (request, when due) of a launched child's running one
        self.limit_target = None  # the request its link thread interrupted
        self.on_hello = None  # what a launched child starts once it said hello
        self.write_lock = None  # a launched child's: its link thread writes too
        self.link_wake = None  # a launched child's: wakes its link thread
        self.last_write = _monotonic()
        self.typed_coroutines = set()  # ids of typed invokes pending on the loop
        self.streams = {}  # id -> _OpenStream, for each open stream
        self.ready = []  # the sync streams that may send items now, in turn
        # A sync stream's slice and its SIGALRM (see _make_items):
        self.in_next = False  # the iterator's `next` runs
        self.item_deadline = None  # when the item it makes is past its limit
        self.ticking = False  # the timer rings every _STREAM_TICK
        self.hold_rang = False  # it rang while not in_next: items may wait
        self.flushing = False  # _flush_held runs
        self.closing = False  # a sync stream's iterator closes within its limit
        self.rang_at = 0.0  # when the handler last ran (or the ticks began)
        self.alarm_handler = self._on_stream_alarm  # the one object installed
        self.interrupted = False
        self.handlers = {op: getattr(self, "op_" + op) for op in OPS}
        # The common requests get decoders of their own with the pure-Python codec.
        self.quick_calls = unpack_frame is unpack
        # Streams that write straight to their fd need no flush before a reply.
        streams = (sys.stdout, sys.stderr)
        self.direct_streams = streams if all(map(_writes_through, streams)) else (_LATER, _LATER)
        os.set_blocking(proto_in, False)
        self.install_host_functions()

    # -- the loop ----------------------------------------------------------

    def serve(self):
        """Handles requests until `stop` or end of input; returns the exit status."""
        global _output_written
        hello = [HELLO, PROTOCOL_VERSION, "%d.%d.%d" % sys.version_info[:3], _pid_outside or os.getpid(), _executable()]
        self._send(pack(hello + [self.offered_ring is not None]))
        _output_written = False  # nothing goes before the hello
        self._flush()
        if self.on_hello is not None:
            self.on_hello()
        if self.offered_ring is not None:
            os.set_blocking(self.proto_out, False)  # a full pipe holds doorbells enough
            self.ring = self.offered_ring
        while True:
            self._handle_frames()
            if self.driver is not None and self.driver.pending and not self.stopping:
                self._turn_loop(block=False)  # let coroutines move between batches
            # Every reply is out by now: each request's and each turn's flush it.
            if self.stopping:
                return 0
            if self.interrupted:
                return EXIT_INTERRUPTED
            if self.at_eof:
                if self.inbox:
                    self._fail("the request pipe ended inside a frame (%d bytes left)" % len(self.inbox))
                return 0
            if self.ready:
                # Requests first (a cancel among them), then items: a slice
                # of each stream that has credit.
                if self.poller.poll(0):
                    self._read_available()
                    if self._has_whole_frame():
                        continue
                self._pump_streams()
                continue
            # A loop turn may have moved whole requests into the inbox.
            if self._has_whole_frame() or self._spin():
                continue
            if self.driver is None:
                self.poller.poll()
                self._read_available()
            else:
                self._turn_loop(block=True)

    def close(self):
        """Closes open sync streams (their `finally` blocks run), cancels
        pending coroutines and async streams, and closes the event loop."""
        for stream in list(self.streams.values()):
            if not stream.is_async:
                del self.streams[stream.id]
                _close_iterator(stream.iterator)
        if self.driver is None or self.driver.loop.is_closed():
            return
        self.driver.loop.remove_reader(self.proto_in)
        try:
            self.driver.cancel_all()
        except BaseException as exc:
            _say("while cancelling pending calls: %s: %s" % (type(exc).__name__, exc))

    def _coroutine_driver(self):
        """The event loop for coroutines, made on first use; from then on the
        child also waits for requests in it."""
        global _worker_driver
        if self.driver is None:
            self.driver = CoroutineDriver()
            self.driver.loop.add_reader(self.proto_in, self._on_readable)
            _worker_driver = self.driver
        return self.driver

    def _turn_loop(self, block):
        """Runs the event loop once, or until bytes arrive or a call finishes.

        With a ring, the child says there while it is in the loop (the id of
        the last coroutine it started is there already, see op_call_async):
        requests run only outside the loop, so a parent that finds a limit
        passed while the child is inside knows a coroutine holds the loop, no
        request runs, and which coroutines had started. (Its replies are
        published before the flag is set.)
        """
        counters = None if self.ring is None else self.ring.counters
        if counters is not None:
            counters[_COUNTER_IN_LOOP] = _IN_LOOP
        try:
            finished = self.driver.turn(block)
        except BaseException as exc:
            if _in_forked_copy:
                _leave_forked_copy(exc)
            # SystemExit or KeyboardInterrupt from a coroutine leaves run_forever
            # after its task has recorded it; the task's reply follows next turn.
            if not isinstance(exc, (SystemExit, KeyboardInterrupt)):
                _say("event loop error: %s" % "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            return
        finally:
            if _in_forked_copy:
                _leave_forked_copy(None)
            if counters is not None:
                counters[_COUNTER_IN_LOOP] = 0
        for token, ok, value in finished:
            self._reply_finished(token, ok, value)
        # Published now, before the next request or turn: the parent reads
        # the flag above as "every reply before it is out".
        self._flush()

    def on_interrupt(self, signum, frame):
        """SIGINT during a command is a KeyboardInterrupt in it, so its
        `finally` blocks run. When the parent sent it for this command (it
        ran past its limit), the child then exits without starting anything
        else: the parent replaces it and sends what was queued to the new
        child.

        With a reply ring the parent names there the request each SIGINT
        of its own is for. One for a request that has ended (it ended just
        before the signal came) is ignored, and the child goes on: the
        parent, which sees that request answered without being stopped,
        keeps this child and waits for what it sent after. A SIGINT with no
        new name is of the command's own making (`signal.raise_signal`,
        `_thread.interrupt_main`): only a KeyboardInterrupt. Without a ring
        every SIGINT during a command is taken for the parent's. Between
        commands SIGINT is ignored."""
        running = self.running
        if self.link_wake is not None:
            # Launched: the parent sends no signal; its link thread's is for
            # the request it names, and one that comes when that request has
            # ended is late. Any other SIGINT is the command's own.
            target, self.limit_target = self.limit_target, None
            if target is not None and target != running:
                return
            from_parent = target is not None
        elif self.ring is None:
            from_parent = True
        else:
            target = self.ring.new_interrupt_target()
            if target is not None and target != running and not self.holds_for_host(target):
                return
            from_parent = target is not None
        if running is None:
            holding = self.host_holding
            if from_parent and holding and type(holding[-1]) is int:
                # Inside a host call's wait, between frames (a nested
                # request's reply being packed or written): noted, and the
                # wait raises once that frame is whole (ChildHost).
                if self.ring is not None:
                    self.ring.take_interrupt(holding[-1] if target is None else target)
                self.interrupted = True
            return
        if from_parent:
            if self.ring is not None:
                if target is not None and self.stops_nested_alone(target):
                    # That nested request alone, and the child goes on: not
                    # taken, so the parent, which sees it answered, keeps
                    # this child, as for a signal that came too late.
                    raise KeyboardInterrupt
                # A request that waits for a host function stops through
                # the nested request running now (ChildHost).
                self.ring.take_interrupt(running if target is None else target)
            self.interrupted = True
        raise KeyboardInterrupt

    def _on_readable(self):
        if _in_forked_copy:
            _leave_forked_copy(None)  # forked in a coroutine: the requests are the worker's
        self._read_available()
        self.driver.wake()

    def _read_available(self):
        """Moves what the request pipe holds into the inbox; True if anything came."""
        got = False
        while True:
            try:
                chunk = os.read(self.proto_in, _READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return got
            if not chunk:
                self.at_eof = True
                return True
            self.inbox += chunk
            got = True
            if len(chunk) < _READ_CHUNK:
                return True  # a short read leaves the pipe empty

    def _spin(self, seconds=_SPIN_SECONDS):
        """Polls briefly for the next request; True if bytes (or end of input) came."""
        deadline = time.perf_counter() + seconds
        poll = self.poller.poll
        pause = self.pause
        while True:
            # poll(0) rather than reads that fail: each failed read builds
            # an exception and its message.
            if poll(0):
                return self._read_available()
            if time.perf_counter() >= deadline:
                return False
            if pause is not None:
                pause()

    def _has_whole_frame(self):
        if self.deferred:
            return True
        inbox = self.inbox
        return len(inbox) >= FRAME_HEADER_SIZE and len(inbox) - FRAME_HEADER_SIZE >= _frame_size(inbox, 0)[0]

    def _handle_frames(self):
        """Handles every complete frame in the inbox, in order.

        Each reply is written before the next request starts: the parent
        takes the oldest unanswered request to be the one running, for its
        time limit and to know what a dead child had not started."""
        while not self.stopping and not self.interrupted:
            frame = self._take_frame()
            if frame is None:
                return
            self._handle_frame(frame)
            self._flush()

    def _take_frame(self):
        """The next whole frame to serve: the first a sync host call's wait
        put aside (ChildHost), else the inbox's; None if there is none."""
        if self.deferred:
            return self.deferred.popleft()
        return self._take_inbox_frame()

    def _take_inbox_frame(self):
        """The next whole frame, taken out of the inbox (before it is
        handled: a sync host call's wait takes the frames after it while its
        request runs), or None."""
        inbox = self.inbox
        if len(inbox) < FRAME_HEADER_SIZE:
            return None
        (size,) = _frame_size(inbox, 0)
        if size > FRAME_LIMIT:
            self._fail("a frame of %d bytes is over the %d GiB limit" % (size, FRAME_LIMIT >> 30))
        end = FRAME_HEADER_SIZE + size
        if end > len(inbox):
            return None
        frame = inbox[FRAME_HEADER_SIZE:end]
        # Dropping the front of a bytearray moves its start, not its bytes.
        del inbox[:end]
        return frame

    def _handle_frame(self, frame):
        call = None
        if self.quick_calls and frame:
            marker = frame[0]
            if marker == CALL_ARRAY:
                call = _call_request(frame)
            elif marker == INVOKE_ARRAY:
                invoke = _invoke_request(frame)
                if invoke is not None:
                    # Unpacked here: a call with *invoke costs twice as much.
                    request_id, name, args, kwargs, typed, limit = invoke
                    self.op_invoke(request_id, name, args, kwargs, typed, limit)
                    return
                invoke = _invoke_request(frame, INVOKE_CAPTURED_OP)
                if invoke is not None:
                    self.op_invoke_captured(*invoke)
                    return
        if call is None:
            request = self._decode_request(frame)
            if request is None:
                return
            request_id, op, args = request[0], request[1], request[2:]
            if op == OP_INVOKE:
                self.op_invoke(request_id, *args)  # it says itself what runs when
                return
            if op == OP_INVOKE_CAPTURED:
                self.op_invoke_captured(request_id, *args)
                return
            if op == OP_STREAM:
                self.op_stream(request_id, *args)
                return
            handler = self.handlers[op]
        else:
            request_id, name, args = call
        try:
            self.running = request_id
            if self.limits:
                self._limit_started(request_id)
            try:
                if call is None:
                    value = handler(request_id, *args)
                else:
                    # op_call without the method call: the commonest request.
                    value = resolve(name, self.globals)(*args)
            finally:
                self.running = None
        except BaseException as exc:
            self._request_failed(request_id, exc)
            return
        if value is not _LATER:
            self._reply_value(request_id, value)

    def _request_failed(self, request_id, exc):
        """The reply to a request that raised. Anything user code raises,
        SystemExit and KeyboardInterrupt too, is the caller's error; the
        child goes on."""
        self.running = None  # set again: a signal may have cut the `finally` short
        if _in_forked_copy:
            _leave_forked_copy(exc)
        self._reply_error(request_id, exc)

    def _decode_request(self, frame):
        """The request [id, op, ...] in a frame, checked; None if it was
        answered (or ignored) as malformed here."""
        try:
            request = self.unpack_frame(frame)
        except _TooDeep:
            request_id = _request_id_of(frame)
            if request_id is None:
                _say("ignoring a request that nests too deeply and has no id")
            else:
                self._send_reply([request_id, REPLY_CONV, _TOO_DEEP])
            return
        except FrameError as exc:
            self._fail("a frame is not valid MessagePack: %s" % exc)
        if type(request) is not list or not request or type(request[0]) is not int:
            if type(request) is list and request and request[0] == MSG_CANCEL:
                self._cancel(request)
            elif type(request) is list and request and request[0] == MSG_MORE:
                self._more(request)
            elif type(request) is list and request and request[0] == MSG_HOST_REPLY:
                self._host_reply(request)
            elif type(request) is list and request and request[0] == MSG_LIMIT and len(request) == 3:
                self.limits[request[1]] = request[2]
            elif type(request) is list and request and request[0] == MSG_BEAT:
                pass  # the parent's: the link is alive
            elif type(request) is list and request and request[0] == MSG_NESTED:
                # The host call that sent the request after it has returned
                # without waiting for it: it runs in order, as any other.
                pass
            else:
                _say("ignoring a request without an id: %s" % _preview(request))
            return
        problem = _request_problem(request)
        if problem is not None:
            self._send_reply([request[0], REPLY_ERR, PROTOCOL_ERROR, problem, None])
            return None
        return request

    # -- one method per op: each returns the reply's value, or raises --------

    def op_run(self, request_id, code):
        run_code(code, self.globals)

    def op_run_file(self, request_id, path):
        run_file(path, self.globals)

    def op_eval(self, request_id, expr):
        return eval_expr(expr, self.globals)

    def op_read(self, request_id, name):
        return resolve(name, self.globals)

    def op_call(self, request_id, name, args):
        # Calls that `_call_request` decodes skip this method (_handle_frame).
        return resolve(name, self.globals)(*args)

    def op_call_async(self, request_id, name, args, limit):
        function = resolve(name, self.globals)
        driver = self._coroutine_driver()
        counters = None if self.ring is None else self.ring.counters
        if counters is not None:
            # The last coroutine started, which the loop's turns leave in
            # place. The call that makes it is part of it: the parent judges
            # that call by the coroutine's limit, as it judges a coroutine
            # that holds the loop, and knows that no request runs meanwhile.
            counters[_COUNTER_LAST_COROUTINE] = request_id
            counters[_COUNTER_IN_LOOP] = _IN_LOOP
        try:
            scheduled, value = driver.start(request_id, function, args, limit)
        finally:
            if counters is not None:
                counters[_COUNTER_IN_LOOP] = 0
        return _LATER if scheduled else value

    def op_invoke(self, request_id, name, args, kwargs, typed, limit):
        """`name(*args, **kwargs)`, run as a sync request. Its result, if it
        is awaitable, is awaited on the event loop (see _await_invoked) for
        what is left of `limit`; a generator is a `conv` reply; anything else
        is the reply's value, packed as `data` when `typed`."""
        try:
            self.running = request_id
            if self.limits:
                self._limit_started(request_id)
            try:
                if limit is None:
                    value = resolve(name, self.globals)(*args, **kwargs)
                else:
                    function = resolve(name, self.globals)
                    started = _monotonic()
                    value = function(*args, **kwargs)
                    limit -= _monotonic() - started
            finally:
                self.running = None
        except BaseException as exc:
            self._request_failed(request_id, exc)
            return
        if type(value) not in _PLAIN_RESULTS:
            streamed = _generator_kind(value)
            if streamed is not None:
                self._send_reply([request_id, REPLY_CONV, "%s returned %s; read its items with .stream()" % (name, streamed)])
                return
            if _is_awaitable(value):
                self._await_invoked(request_id, value, typed, limit)
                return
        if typed:
            self._reply_data(request_id, value)
        else:
            self._reply_value(request_id, value)

    def _await_invoked(self, request_id, awaitable, typed, limit):
        """Schedules an invoke's awaitable on the event loop and tells the
        parent (["awaiting", id]); its reply comes when it finishes, as a
        call_async's does. A limit used up by the call that made it is a
        timeout at once."""
        if limit is not None and limit <= 0:
            _close_awaitable(awaitable)
            self._send_reply([request_id, REPLY_TIMEOUT])
            return
        if self.host_holding:
            # A nested request (ChildHost): the loop turns only once the
            # request that waits for its host function has ended.
            _close_awaitable(awaitable)
            self._send_reply([request_id, REPLY_ERR, "RuntimeError", _NESTED_AWAITABLE, None])
            return
        try:
            driver = self._coroutine_driver()
            if self.ring is not None:
                # As for call_async, stored before it can start. The call that
                # made it ran as a sync request: the flag of the loop stays clear.
                self.ring.counters[_COUNTER_LAST_COROUTINE] = request_id
            if self.capturing:
                self.schedule_captured(driver, request_id, awaitable, limit)
            else:
                driver.schedule(request_id, awaitable, limit)
        except BaseException as exc:
            self._reply_error(request_id, exc)
            return
        if typed:
            self.typed_coroutines.add(request_id)
        self._send(pack([MSG_AWAITING, request_id]))

    def _cancel(self, message):
        """[MSG_CANCEL, id]: cancels that request's coroutine if it is pending
        on the loop (its reply follows when it has stopped). Anything else
        (finished, unknown, never a coroutine) is ignored; a cancel gets no
        reply of its own."""
        if len(message) != 2 or type(message[1]) is not int:
            _say("ignoring a malformed cancel: %s" % _preview(message))
            return
        stream = self.streams.get(message[1])
        if stream is not None and not stream.is_async:
            self._end_stream(stream, True, None)
            return
        if self.driver is not None:
            self.driver.cancel(message[1])

    def op_set_venv(self, request_id, path):
        set_venv(path)

    def op_stop(self, request_id):
        self.stopping = True

    # -- replies -----------------------------------------------------------

    def _reply_finished(self, request_id, ok, value):
        """The reply to a coroutine (a call_async, or an invoke that is
        awaiting): `value` is the result, the exception, or "timeout" /
        "cancelled" (see CoroutineDriver._done). An async stream's pump
        ends its stream."""
        if self.streams.pop(request_id, None) is not None:
            self._stream_reply(request_id, ok, value)
            return
        if self.coroutine_captures:
            self.send_coroutine_capture(request_id)
        typed = request_id in self.typed_coroutines
        if typed:
            self.typed_coroutines.discard(request_id)
        if ok:
            if typed:
                self._reply_data(request_id, value)
            else:
                self._reply_value(request_id, value)
        elif isinstance(value, BaseException):
            self._reply_error(request_id, value)
        elif value == "timeout":
            self._send_reply([request_id, REPLY_TIMEOUT])
        else:
            self._send_reply([request_id, REPLY_ERR, "CancelledError", "the coroutine was cancelled", None])

    def _reply_value(self, request_id, value):
        """[id, "ok", value], the value packed by the value table."""
        try:
            body = self.pack_value(value)
        except BaseException as exc:
            self._reply_unpacked(request_id, exc)
            return
        size = OK_HEAD_PAYLOAD + len(body)
        if size <= 0xFFFFFFFF and 0 <= request_id <= 0xFFFFFFFFFFFFFFFF:
            self.outbox.append(_ok_head(size, OK_HEAD_ID_START, request_id, REPLY_OK_KIND) + body)
        else:
            self._reply_body(request_id, REPLY_OK_KIND, body, size)

    def _reply_data(self, request_id, value):
        """[id, "data", value], a typed result: bytes go as bin."""
        try:
            body = self.pack_data(value)
        except BaseException as exc:
            self._reply_unpacked(request_id, exc)
            return
        size = DATA_HEAD_PAYLOAD + len(body)
        if size <= 0xFFFFFFFF and 0 <= request_id <= 0xFFFFFFFFFFFFFFFF:
            self.outbox.append(_data_head(size, OK_HEAD_ID_START, request_id, REPLY_DATA_KIND) + body)
        else:
            self._reply_body(request_id, REPLY_DATA_KIND, body, size)

    def _reply_unpacked(self, request_id, exc):
        """The reply to a value that did not pack."""
        if isinstance(exc, ConversionError):
            self._send_reply([request_id, REPLY_CONV, str(exc)])
        else:  # str(obj) of some object raised
            self._reply_error(request_id, exc)

    def _reply_body(self, request_id, kind, body, size):
        """A reply the fast head cannot write: too long for a frame, or an
        id that is not a uint 64."""
        if size > 0xFFFFFFFF:
            self._send_reply([request_id, REPLY_CONV, "a reply of %d bytes does not fit in a frame" % size])
        else:
            self._send(REPLY_OK_ARRAY + pack(request_id) + kind + body)

    def _reply_error(self, request_id, exc):
        self._send_reply([request_id, REPLY_ERR, *describe_error(exc)])

    def _send_reply(self, reply):
        self._send(pack(reply))

    def _send(self, payload):
        self.outbox += (_frame_header(len(payload)), payload)

    def _flush(self):
        """Writes every reply produced since the last flush, in one go.

        What the requests printed is flushed first, so it reaches stderr
        before their replies reach the parent; if anything was written
        through sys.stdout or sys.stderr since the last flush, an output
        mark goes before the replies, and the parent forwards its copy of
        the stderr pipe up to here before it hands them out. (Writes
        straight to fd 1 or 2, by os.write or C code, are not noted: noting
        them would cost a system call for every reply.)
        """
        global _output_written
        if _in_forked_copy:
            # A copy whose forking code returned (one that raised left in
            # _handle_frame): every reply passes here, once per request.
            _leave_forked_copy(None)
        if not self.outbox or self.writing:
            # (Output written while frames are written, by a __del__ or a
            # signal handler, goes with the next flush.)
            return
        stdout, stderr = self.direct_streams
        if sys.stdout is not stdout or sys.stderr is not stderr:
            _flush_stdio()
        self.end_output_lines()
        outbox = self.outbox
        if _output_written:
            _output_written = False
            outbox.insert(0, OUTPUT_MARK_FRAME)
        count = len(outbox)
        data = outbox[0] if count == 1 else b"".join(outbox)
        # Only what was joined: whatever came meanwhile stays for the next.
        del outbox[:count]
        self.writing = True
        try:
            self._write_out(data)
        finally:
            self.writing = False

    def _write_out(self, data):
        """Writes frames to the ring or the pipe, whole."""
        if self.ring is not None:
            if not self.ring.put(data, self._doorbell):
                self._parent_gone()
            return
        data = memoryview(data)
        while True:
            try:
                written = os.write(self.proto_out, data)
            except (BlockingIOError, InterruptedError):
                select.select([], [self.proto_out], [])
                continue
            except BrokenPipeError:
                self._parent_gone()
                return
            if written == len(data):
                return
            data = data[written:]

    def _limit_started(self, request_id):
        """A launched child's request with a limit has started (`running`
        is set): its link thread is told (request, when it is due) in one
        go, and woken (see _tend_the_link); a tuple of another request than
        the one running is stale to it. The entry is taken: no frame of it
        comes again."""
        limit = self.limits.pop(request_id, None)
        if limit is None or self.link_wake is None:
            return
        self.limited = (request_id, _monotonic() + limit + LIMIT_MARGIN)
        try:
            os.write(self.link_wake, b"\0")
        except OSError:
            pass  # full: it is awake already

    def _write_out_locked(self, data):
        """_write_out of a launched child, whose link thread writes too."""
        with self.write_lock:
            ChildWorker._write_out(self, data)
            self.last_write = _monotonic()

    def beat(self):
        """A launched child's heartbeat (its link thread's), unless a write
        is under way, which says as much."""
        if not self.write_lock.acquire(blocking=False):
            self.last_write = _monotonic()
            return
        try:
            ChildWorker._write_out(self, BEAT_FRAME)
            self.last_write = _monotonic()
        finally:
            self.write_lock.release()

    def _doorbell(self):
        """Wakes a parent that sleeps until replies come; False if it is gone."""
        try:
            os.write(self.proto_out, DOORBELL)
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full of doorbells the parent has yet to read
        except BrokenPipeError:
            return False
        return True

    def _parent_gone(self):
        """The parent stopped reading: nobody is left to answer."""
        self.at_eof = True
        self.inbox.clear()

    def _fail(self, message):
        """A broken protocol stream: say why on stderr and exit with status 3."""
        self._flush()
        _flush_stdio()
        _say(message)
        os._exit(EXIT_PROTOCOL)


def _writes_through(stream):
    """Whether text written to `stream` reaches its fd at once (python -u)."""
    return getattr(stream, "write_through", False) and type(getattr(stream, "buffer", None)) in (io.FileIO, _NotedFileIO)


_PLAIN_RESULTS = frozenset((type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict))
"""Result types that are neither generators nor awaitable: an invoke's
result of one of them is answered without a closer look."""
_CO_ITERABLE_COROUTINE = 0x100
"""inspect.CO_ITERABLE_COROUTINE: a generator made awaitable by @types.coroutine."""


_NESTED_AWAITABLE = (
    "the function returned an awaitable, which a command sent from inside a sync host function "
    "cannot await: the child's event loop turns only once the command that called the host "
    "function has ended (use an async host function, whose commands queue as usual)"
)


def _generator_kind(value):
    """"a generator" or "an async generator" for an invoke's result that
    only a stream reads, else None. A generator is closed here (its
    `finally` runs if it had started); an async one is dropped."""
    kind = type(value)
    if kind is types.AsyncGeneratorType:
        return "an async generator"
    if kind is not types.GeneratorType or value.gi_code.co_flags & _CO_ITERABLE_COROUTINE:
        return None
    try:
        value.close()
    except BaseException as exc:
        _say("closing a generator raised %s: %s" % (type(exc).__name__, exc))
    return "a generator"


def _close_iterator(iterator, quiet=True):
    """Closes a sync iterator that has `close` (a generator: its `finally`
    blocks run). What closing raised is returned, or, if `quiet`, said on
    stderr."""
    close = getattr(iterator, "close", None)
    if close is None:
        return None
    try:
        close()
    except BaseException as exc:
        if not quiet:
            return exc
        _say("closing a stream raised %s: %s" % (type(exc).__name__, exc))
    return None


def _is_awaitable(value):
    """inspect.isawaitable, with its import left until a result's type
    could be awaitable at all."""
    kind = type(value)
    if kind is types.CoroutineType:
        return True
    if kind is not types.GeneratorType and getattr(kind, "__await__", None) is None:
        return False
    _import_asyncio()
    return inspect.isawaitable(value)


def _close_awaitable(awaitable):
    """Drops an awaitable that will not be awaited: a coroutine is closed
    (no "never awaited" warning), an asyncio future cancelled."""
    try:
        if type(awaitable) in (types.CoroutineType, types.GeneratorType):
            awaitable.close()
            return
        _import_asyncio()
        if asyncio.isfuture(awaitable):
            awaitable.cancel()
    except BaseException as exc:
        _say("dropping an awaitable past its limit raised %s: %s" % (type(exc).__name__, exc))


def _executable():
    """sys.executable as text UTF-8 can carry (a path need not be)."""
    return _wire_text(os.fsdecode(os.fsencode(sys.executable or "")))


def _move_protocol_off_stdio():
    """Keeps the protocol on private fds; fd 1 becomes stderr, fd 0 /dev/null.

    print(), os.write(1, ...) and C printf then land on stderr, and input()
    raises EOFError instead of eating requests. sys.stdout and sys.stderr
    become streams that note their writes (see ChildWorker._flush).
    Returns (proto_in, proto_out).
    """
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr at all
        os.dup2(null, 1)
    os.close(null)
    try:
        # The originals are left unclosed: they do not own fds 1 and 2.
        sys.stdout = sys.__stdout__ = _noted_stream(1, sys.stdout)
        sys.stderr = sys.__stderr__ = _noted_stream(2, sys.stderr)
    except OSError:  # no stderr at all: the originals stay, unnoted
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                try:
                    stream.reconfigure(line_buffering=True)
                except (AttributeError, ValueError):
                    pass
    return proto_in, proto_out


def _exit_with_parent(proto_in):
    """On Linux, asks for SIGKILL when the parent dies, then checks it is alive.

    The death signal only covers deaths from now on. A parent that died
    earlier left this process to init (parent pid 1) and its request pipe
    without a writer; pid 1 alone is not proof, as a container's init can be
    the real parent.
    """
    libc = _linux_libc()
    if libc is None:
        return
    _die_with_parent(libc)
    if os.getppid() == 1:
        poller = select.poll()
        poller.register(proto_in, select.POLLIN)
        for _, events in poller.poll(0):
            if events & select.POLLHUP:
                os._exit(0)


_launched = None
"""This child's heartbeat interval if it was started through a launcher
(ENV_LAUNCHED), else None."""


def _tend_the_link(worker, proto_in, beat):
    """A launched child's thread for what no signal of the parent's can do
    across the link:
    - a request past the limit MSG_LIMIT gave it is interrupted here, as
      the parent's SIGINT would (the child then exits, as a child without a
      ring does); if it has not stopped KILL_GRACE later, the child ends
      its process group;
    - when nothing was written for `beat` seconds, a MSG_BEAT goes out;
    - when its stdin closes (the link dropped, or the parent stopped it), it
      is given LINK_GRACE to exit by itself, then ends its process group,
      and with it whatever user code was running and started."""
    import threading

    worker.write_lock = threading.Lock()
    # Writes take the lock from now on (a local child's never do).
    worker._write_out = worker._write_out_locked
    wake_r, worker.link_wake = os.pipe()
    os.set_blocking(worker.link_wake, False)

    def end_group():
        try:
            os.kill(0, signal.SIGKILL)
        finally:
            os._exit(1)

    def tend():
        poller = select.poll()
        poller.register(proto_in, 0)  # POLLHUP and POLLERR come unasked
        poller.register(wake_r, select.POLLIN)
        main = threading.main_thread().ident
        interrupted = None  # (request, when) of the interrupt sent
        while True:
            now = _monotonic()
            wake = worker.last_write + beat
            running = worker.running
            limited = worker.limited
            if interrupted is not None and interrupted[0] != running:
                interrupted = None
            if limited is not None and limited[0] == running and interrupted is None:
                if now >= limited[1]:
                    interrupted = (running, now)
                    worker.limit_target = running
                    signal.pthread_kill(main, signal.SIGINT)
                    continue
                wake = min(wake, limited[1])
            if interrupted is not None:
                if now >= interrupted[1] + KILL_GRACE:
                    end_group()
                wake = min(wake, interrupted[1] + KILL_GRACE)
            if now >= worker.last_write + beat:
                worker.beat()
                continue
            timeout = min(60000, max(0, int((wake - now) * 1000)) + 1)
            for fd, events in poller.poll(timeout):
                if fd == wake_r:
                    os.read(wake_r, 512)
                elif events & (select.POLLHUP | select.POLLERR):
                    time.sleep(LINK_GRACE)
                    end_group()

    threading.Thread(target=tend, name="async_py-link", daemon=True).start()


def _forget_own_folder():
    """Drops the entry Python put first on sys.path for how it was started
    (this file's folder, or '' for `python -c`), as the in-process backend
    has no such entry and the child's working folder should not shadow
    installed packages."""
    here = os.path.dirname(os.path.abspath(_HERE))
    if sys.path and (sys.path[0] == "" or os.path.abspath(sys.path[0]) == here):
        del sys.path[0]


def main():
    """The child program: its arguments are `--zygote`, or an optional
    `--share-cores` and the reply ring's path (see PROTOCOL.md)."""
    if os.environ.get(ENV_MALLOC) == CHILD_MALLOC:
        # The parent's setting for this interpreter's malloc, read when it
        # started: user code sees the environment it was given, and the
        # programs it starts do not inherit the setting.
        del os.environ[ENV_MALLOC]
    take_output_setting()
    take_host_setting()
    sandbox = take_sandbox_setting()
    global _launched
    try:
        _launched = float(os.environ.pop(ENV_LAUNCHED))
    except (KeyError, ValueError):
        _launched = None
    if _launched is not None:
        try:
            # A group of its own to end (a launcher need not make one): a
            # session leader, as under sshd, leads one already.
            os.setpgid(0, 0)
        except OSError:
            pass
    if sys.argv[1:2] == [ARG_ZYGOTE]:
        sys.exit(_zygote_main())
    share = sys.argv[1:2] == [ARG_SHARE_CORES]
    if share:
        del sys.argv[1]
    _serve(share, sys.argv.pop(1) if len(sys.argv) > 1 else "", sandbox=sandbox)


def _serve(share, ring_path, ring_fd=None, sandbox=None):
    """Serves one parent over stdin and stdout, then exits. `ring_fd` is the
    fd behind a ring passed as /proc/self/fd/<n>, closed once mapped;
    `sandbox` the settings of the sandbox to enter (sandbox.py)."""
    if os.environ.get(ENV_REPLY_RING) == "0":
        ring_path = ""  # replies take the pipe
    if sandbox is not None:
        try:
            ruleset = int(sandbox.get("ruleset", ""))
        except ValueError as exc:
            sandbox_failed("finding its landlock ruleset", exc)
        close_inherited_fds({ring_fd, ruleset})
    _exit_with_parent(0)
    # Mapped before containment: from a user namespace of its own the worker
    # may not open its parent's fds through /proc.
    ring = _open_ring(ring_path)
    if ring_fd is not None:
        os.close(ring_fd)
    if sandbox is not None:
        sandbox_outer(sandbox)
    _contain(sandbox)
    if sandbox is not None:
        enter_sandbox(sandbox)
    proto_in, proto_out = _move_protocol_off_stdio()
    os.register_at_fork(after_in_child=_note_fork)
    _forget_own_folder()
    codec = _msgpack_codec() or (pack, unpack, pack_typed)
    worker = ChildWorker(proto_in, proto_out, *codec, ring=ring, share=share)
    if _launched is not None:
        worker.on_hello = lambda: _tend_the_link(worker, proto_in, _launched)
    signal.signal(signal.SIGINT, worker.on_interrupt)
    worker.route_output_if_asked()
    try:
        status = worker.serve()
    finally:
        worker.close()
    sys.exit(status)


if __name__ == "__main__":
    main()
