# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""A child's host functions (PROTOCOL.md, "Host functions"), mixed into
`ChildWorker`: `async_py.host.NAME(...)` sends `["host", hid, name, args,
kwargs]` to the parent, which runs the Rust function and answers
`["host_reply", hid, ok, value]`.

- The parent names its host functions in the environment (ENV_HOST), read
  and removed before any user code runs; a zygote's forks inherit them.
- A sync host function sends its call and waits for the reply reading the
  request pipe itself. Of what arrives meanwhile it serves only what the
  wait needs: host replies, stream credit, and the requests the parent
  marked nested (a `["nested", id]` note right before each: a host
  function sent them to this runner, and they must run before it returns;
  their own host calls wait the same way, re-entrantly). Every other frame
  (requests queued behind the one that waits, cancels, stop) is put aside
  in order, and the serve loop takes those first once the wait ends.
- An async host function is a coroutine function (host.py's
  `host_coroutine`): its call goes out at once, and the serve loop's frame
  reader settles its future when the reply comes. A cancelled await sends
  `["host_cancel", hid]`, and the parent drops the Rust future.
"""

import _thread
import os

_HOST_SPIN_SECONDS = 200e-6
"""How long a sync host call polls for its reply before it sleeps: the
parent's host thread answers a quick function within microseconds, and a
wake-up costs tens of them."""

_host_asked = ()
"""(name, is_async) of each host function the parent gave this child."""


def take_host_setting():
    """Reads ENV_HOST once and removes it, so that user code and the
    programs it starts do not see it (a zygote's forks inherit this global)."""
    global _host_asked
    setting = os.environ.pop(ENV_HOST, None)
    if not setting:
        return
    asked = []
    for entry in setting.split(","):
        kind, _, name = entry.partition(":")
        if name and kind in (HOST_SYNC, HOST_ASYNC):
            asked.append((name, kind == HOST_ASYNC))
    _host_asked = tuple(asked)


_HOST_REPLY_START_SIZE = len(HOST_REPLY_START)


def _host_reply_fields(frame):
    """(hid, ok, value) of a host reply shaped as the parent writes one, or
    None: anything else, valid or not, takes the general decoder."""
    try:
        pos = _HOST_REPLY_START_SIZE
        marker = frame[pos]
        if marker < 0x80:
            hid = marker
            pos += 1
        else:
            width, read = REQUEST_ID_READERS[marker]
            (hid,) = read(frame, pos + 1)
            pos += 1 + width
        ok = frame[pos]
        if ok != 0xC3 and ok != 0xC2:  # true, false
            return None
        # The value sits one level down in the reply, as in `unpack`.
        value, end = _unpack(frame, pos + 1, 1)
        if end != len(frame):
            return None
        return hid, ok == 0xC3, value
    except Exception:
        return None


class ChildHost:
    """The host functions of a `ChildWorker` (a mixin: it uses the worker's
    outbox, flush, inbox and frame handling)."""

    host_next = 0
    """The last hid given out."""
    host_waiting = None
    """{hid: None, or (ok, value) once answered} of the sync calls waiting."""
    host_futures = None
    """{hid: future} of the async calls awaiting their reply."""
    nested_next = None
    """The id a wait read in a `nested` note: the next frame is that request."""
    nested_ids = None
    """The ids of the nested requests running, outermost first."""
    host_holding = None
    """The requests (ids, outermost first) that wait for a sync host call:
    a SIGINT of the parent for any of them stops the innermost request."""
    main_thread = None

    def install_host_functions(self, asked=None):
        """Makes `async_py.host` name the functions the parent gave."""
        self.host_waiting = {}
        self.host_futures = {}
        self.host_holding = []
        self.nested_ids = []
        self.main_thread = _thread.get_ident()
        functions = {}
        for name, is_async in _host_asked if asked is None else asked:
            if is_async:
                functions[name] = host_coroutine(name, self._host_starter(name), self._host_cancel)
            else:
                functions[name] = self._host_sync(name)
        install_host(functions, False)

    def _host_sync(self, name):
        wait = self._host_wait

        def call(*args, **kwargs):
            ok, value = wait(name, args, kwargs)
            if ok:
                return value
            raise host_error(value)

        call.__name__ = call.__qualname__ = name
        return call

    def _host_starter(self, name):
        def start(args, kwargs, future):
            driver = self.driver
            if driver is None or future.get_loop() is not driver.loop:
                # A loop of user code's own (asyncio.run in a command): the
                # serve loop, which reads replies, does not run while it
                # does, so the call is made as a sync one is and the future
                # is settled before the coroutine awaits it.
                ok, value = self._host_wait(name, args, kwargs)
                settle_host(future, ok, value)
                return None
            hid = self._send_host_call(name, args, kwargs)
            self.host_futures[hid] = future
            return hid

        return start

    def _host_cancel(self, hid):
        if hid is not None and self.host_futures.pop(hid, None) is not None:
            self._send(pack([MSG_HOST_CANCEL, hid]))
            self._flush()

    def _send_host_call(self, name, args, kwargs):
        """Sends one host call at once; its hid. With the worker's own codec
        the frame is put together here from its parts: the general packer
        costs about twice as much for this fixed shape."""
        if _thread.get_ident() != self.main_thread:
            raise host_error(
                "async_py.host.%s was called from a thread the worker did not start its requests on; "
                "in a subprocess runner, call host functions from the thread that runs the command" % name
            )
        if self.writing:
            # A __del__ or a signal handler while frames are written: the
            # call would wait behind the write it interrupted.
            raise host_error(
                "async_py.host.%s was called while the worker was writing its frames "
                "(from a __del__ or a signal handler); call it from the command's own code" % name
            )
        self.host_next += 1
        hid = self.host_next
        try:
            if self.pack_data is pack_typed:
                out = _TypedOut((HOST_CALL_START, _int_bytes(hid)))
                _pack_str(name, out)
                # One level down in the call, as the general packer counts.
                _pack(args, out, 1)
                if kwargs:
                    _pack(kwargs, out, 1)
                else:
                    out.append(b"\x80")
                payload = b"".join(out)
            else:
                payload = self.pack_data([MSG_HOST, hid, name, list(args), kwargs])
        except ConversionError as exc:  # an int past 64 bits, nesting past the limit
            raise host_error("the arguments of %s could not be sent: %s" % (name, exc)) from None
        self._send(payload)
        self._flush()
        return hid

    def call_host(self, name, args, kwargs):
        """A sync host call: sent, then the request pipe served until its
        reply comes."""
        ok, value = self._host_wait(name, args, kwargs)
        if ok:
            return value
        raise host_error(value)

    def _host_wait(self, name, args, kwargs):
        """Sends a host call and serves the request pipe until its reply
        comes: (ok, value)."""
        hid = self._send_host_call(name, args, kwargs)
        waiting = self.host_waiting
        waiting[hid] = None
        holder = self.running
        self.host_holding.append(holder)
        # Called from a sync stream's item: its SIGALRM ticks must not raise
        # or write inside the wait (a nested request, a frame half taken);
        # the item's limit is judged where the wait polls (ChildStreams).
        # So must the alarm of a stream's close (a generator's `finally` that
        # calls a host function): its limit is then the parent's backstop.
        in_next, deadline, closing = self.in_next, self.item_deadline, self.closing
        self.in_next = False
        self.item_deadline = None
        self.closing = False
        answered = False
        try:
            while waiting[hid] is None:
                self._serve_while_waiting(holder, deadline if in_next else None)
            ok, value = waiting[hid]
            answered = True
        finally:
            del waiting[hid]
            self.host_holding.pop()
            self.running = holder
            # A wait that ends between a nested note and its request (an
            # item's limit, an interrupt) leaves the request to run in
            # order, as one after a note outside a wait does.
            self.nested_next = None
            if self.deferred and self.driver is not None:
                # Called from a coroutine: the loop's turn ends, so that the
                # serve loop takes what the wait put aside.
                self.driver.wake()
            if answered:
                # A wait that raised (the item's limit) leaves them off, as
                # the alarm's handler does, so that the generator's cleanup
                # is not stopped a second time.
                self.item_deadline = deadline
                self.in_next = in_next
                self.closing = closing
        return ok, value

    def _serve_while_waiting(self, holder, deadline):
        """One step of a sync host call's wait: the next frame handled (a
        nested request run, a host reply or credit noted, anything else put
        aside for the serve loop), or the pipe read. `deadline` is the limit
        of the stream item that made the call, if any: past it the item
        stops with _ItemTimeout, raised here, between frames."""
        if deadline is not None and _monotonic() >= deadline:
            raise _ItemTimeout()
        if self.interrupted:
            # The parent's SIGINT came between frames (ChildWorker.on_interrupt).
            raise KeyboardInterrupt
        frame = self._take_inbox_frame()
        if frame is None:
            if self.at_eof:
                raise host_error("the parent closed the request pipe")
            if not self._spin(_HOST_SPIN_SECONDS):
                if deadline is None:
                    self.poller.poll()
                else:
                    left = deadline - _monotonic()
                    if left <= 0 or not self.poller.poll(max(1, int(left * 1000 + 0.999))):
                        if _monotonic() >= deadline:
                            raise _ItemTimeout()
                        return
                self._read_available()
            return
        if frame.startswith(HOST_REPLY_START):
            fields = _host_reply_fields(frame) if self.quick_calls else None
            if fields is None:
                self._host_reply(self.unpack_frame(frame))
            else:
                self._settle_host_call(*fields)
            return
        if self.nested_next is None:
            if frame.startswith(NESTED_START):
                # The parent writes the note and its request together.
                note = self.unpack_frame(frame)
                self.nested_next = note[1] if len(note) == 2 and type(note[1]) is int else -1
            elif frame.startswith(MORE_START):
                self._more(self.unpack_frame(frame))
            elif frame.startswith(LIMIT_START):
                # A launched child's: the limit of the request it goes
                # before, a nested one maybe, to be taken at once.
                limit = self.unpack_frame(frame)
                self.limits[limit[1]] = limit[2]
            elif frame.startswith(BEAT_START):
                pass
            else:
                self.deferred.append(frame)
            return
        nested, self.nested_next = self.nested_next, None
        counters = None if self.ring is None else self.ring.counters
        in_loop = 0
        if counters is not None:
            # A request runs now: the parent must not take the child for
            # one in its event loop (a coroutine called the host function).
            in_loop = counters[_COUNTER_IN_LOOP]
            counters[_COUNTER_IN_LOOP] = 0
        self.nested_ids.append(nested)
        try:
            self._handle_frame(frame)
            self._flush()
        finally:
            self.nested_ids.pop()
            self.running = holder
            if counters is not None:
                counters[_COUNTER_IN_LOOP] = in_loop
        if self.interrupted:
            # The parent's SIGINT was for a request that waits here: it
            # stopped the nested request, and the waiting one stops too.
            raise KeyboardInterrupt

    def _host_reply(self, message):
        """[MSG_HOST_REPLY, hid, ok, value]: settles that host call; a
        reply for a call nobody waits for (cancelled) is ignored."""
        if len(message) != 4 or type(message[1]) is not int or type(message[2]) is not bool:
            _say("ignoring a malformed host reply: %s" % _preview(message))
            return
        self._settle_host_call(message[1], message[2], message[3])

    def _settle_host_call(self, hid, ok, value):
        if not ok and type(value) is not str:
            value = str(value)
        if hid in self.host_waiting:
            self.host_waiting[hid] = (ok, value)
            return
        future = self.host_futures.pop(hid, None)
        if future is not None:
            settle_host(future, ok, value)

    def stops_nested_alone(self, target):
        """Whether the parent's SIGINT for `target` stops only that request:
        a nested request running (not itself waiting for a host call),
        past its own limit. Its caller, a host function, hears `Timeout`;
        the request that waits for the host function goes on."""
        nested = self.nested_ids
        return bool(nested) and nested[-1] == target == self.running and target not in self.host_holding

    def holds_for_host(self, target):
        """Whether request `target` waits for a sync host call."""
        return bool(self.host_holding) and target in self.host_holding
