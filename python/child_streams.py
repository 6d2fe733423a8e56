# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""A child's streams: the `stream` request, whose function's result is
iterated and its items sent within the parent's credit (`more`), closed by
`cancel`, each item under the request's limit. `ChildStreams` is a part of
`ChildWorker` (serve.py); PROTOCOL.md, "Streams", says what goes on the
wire, and docs/ARCHITECTURE.md why items go out in batches with a timer."""

import signal

_item_head = ITEM_HEAD.pack
_item_data_head = ITEM_DATA_HEAD.pack
# A sync stream runs at most this long before the child looks for requests.
_STREAM_SLICE = 500e-6
# While a sync stream makes items, SIGALRM rings this often: no item waits
# longer for the ones after it (and an item's limit is judged this finely).
# At most _STREAM_BATCH items go out in one write (see ChildWorker._make_items).
_STREAM_TICK = 200e-6
_STREAM_BATCH = 16
_setitimer = getattr(signal, "setitimer", None)
_pthread_sigmask = getattr(signal, "pthread_sigmask", None)
_ALARM_ONLY = {signal.SIGALRM} if hasattr(signal, "SIGALRM") else set()
# ChildWorker.running during a sync stream's turn: no request the parent can
# name, so a late SIGINT for the stream's own call is ignored.
_STREAM_TURN = object()


class _ItemTimeout(BaseException):
    """Raised into a stream's iterator whose item ran past its limit; a
    BaseException, so that user code's `except Exception` lets it pass."""


class _ItemUnpacked(Exception):
    """A stream's item that did not pack: the stream ends with the reply
    that value would have had."""

    def __init__(self, cause):
        Exception.__init__(self, cause)
        self.cause = cause


class _OpenStream:
    """A stream request whose iterator is open: how far the parent's credit
    goes (`granted`), and how many items went out (`sent`)."""

    __slots__ = ("id", "iterator", "typed", "limit", "granted", "sent", "is_async", "queued", "wake")

    def __init__(self, request_id, iterator, typed, limit, granted, is_async):
        self.id = request_id
        self.iterator = iterator
        self.typed = typed
        self.limit = limit
        self.granted = granted
        self.sent = 0
        self.is_async = is_async
        self.queued = False  # in ChildWorker.ready (sync streams)
        self.wake = None  # the future an async stream without credit waits on


def _may_tick():
    """Whether a sync stream's turn may take SIGALRM: setitimer exists, the
    handler is SIG_DFL or SIG_IGN (not user code's, nor one from C, which
    reads as None) and no timer is pending. Else each item goes at once,
    with no item limit here (the parent's backstop holds)."""
    if _setitimer is None:
        return False
    if signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN):
        return False
    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def _stop_own_timer():
    """Stops the ticks (a timer that repeats every _STREAM_TICK), not a
    timer user code set."""
    if abs(signal.getitimer(signal.ITIMER_REAL)[1] - _STREAM_TICK) < 1e-6:
        _setitimer(signal.ITIMER_REAL, 0)


def _give_back_alarm(ours, previous):
    """Stops our timer and puts `previous` back as SIGALRM's handler, with
    SIGALRM blocked, so that no ring cuts this short; a handler user code
    installed meanwhile stays, with its timer."""
    block = _pthread_sigmask
    if block is not None:
        block(signal.SIG_BLOCK, _ALARM_ONLY)
    try:
        if signal.getsignal(signal.SIGALRM) != ours:
            _stop_own_timer()
            return
        _setitimer(signal.ITIMER_REAL, 0)
        if block is not None and signal.SIGALRM in signal.sigpending():
            signal.sigtimedwait(_ALARM_ONLY, 0)  # a last ring of ours
        _let_handlers_run()
        signal.signal(signal.SIGALRM, previous)
    finally:
        if block is not None:
            block(signal.SIG_UNBLOCK, _ALARM_ONLY)


def _let_handlers_run():
    """Python code, where a handler still due runs while it is ours."""


class ChildStreams:
    """The stream requests of a `ChildWorker`: its `streams` (id to
    `_OpenStream`) and `ready` are made by its `__init__`."""

    def op_stream(self, request_id, name, args, kwargs, typed, limit, credit):
        """`name(*args, **kwargs)`, run as a sync request, whose result is
        iterated: `["streaming", id, on_loop]` once the iterator exists, then each
        item as `[id, "item", value]` (`"item_data"` when `typed`) while the
        parent's credit lasts (`credit` items at first; `more` adds), and
        last the request's reply: `ok` at the end of the items, `err`,
        `conv`, or `timeout` for an item that took longer than `limit`.
        A sync iterator runs between requests (_pump_streams); an async
        one on the event loop (_pump_async)."""
        try:
            self.running = request_id
            if self.limits:
                self._limit_started(request_id)
            try:
                value = resolve(name, self.globals)(*args, **kwargs)
            finally:
                self.running = None
        except BaseException as exc:
            self._request_failed(request_id, exc)
            return
        try:
            stream = self._open_stream(request_id, name, value, typed, limit, credit)
        except BaseException as exc:  # __iter__ or __aiter__ raised
            self._request_failed(request_id, exc)
            return
        if stream is None:
            return
        if stream.is_async:
            try:
                driver = self._coroutine_driver()
                if self.ring is not None:
                    # As for an awaiting invoke: stored before it can start.
                    self.ring.counters[_COUNTER_LAST_COROUTINE] = request_id
                driver.schedule(request_id, self._pump_async(stream), None)
            except BaseException as exc:
                self._reply_error(request_id, exc)
                return
        self.streams[request_id] = stream
        self._send(pack([MSG_STREAMING, request_id, stream.is_async]))
        if not stream.is_async and stream.granted > 0:
            stream.queued = True
            self.ready.append(stream)

    def _open_stream(self, request_id, name, value, typed, limit, credit):
        """The open stream over `value`, or None when it has no items to give
        (a `conv` reply is sent)."""
        kind = type(value)
        if getattr(kind, "__aiter__", None) is not None:
            iterator = kind.__aiter__(value)
            if getattr(type(iterator), "__anext__", None) is None:
                raise TypeError("%s.__aiter__ returned %s, which has no __anext__" % (kind.__name__, type(iterator).__name__))
            return _OpenStream(request_id, iterator, typed, limit, credit, True)
        if getattr(kind, "__iter__", None) is None and getattr(kind, "__getitem__", None) is None:
            if _is_awaitable(value):
                _close_awaitable(value)
                what = "an awaitable"
            else:
                what = "%s, which is not iterable" % kind.__name__
            self._send_reply([request_id, REPLY_CONV, "%s returned %s; read its result with .await" % (name, what)])
            return None
        return _OpenStream(request_id, iter(value), typed, limit, credit, False)

    def _more(self, message):
        """[MSG_MORE, id, granted]: stream `id` may have sent `granted` items
        in all. One for a stream that is not open is ignored."""
        if len(message) != 3 or type(message[1]) is not int or type(message[2]) is not int:
            _say("ignoring a malformed more: %s" % _preview(message))
            return
        stream = self.streams.get(message[1])
        if stream is None or message[2] <= stream.granted:
            return
        stream.granted = message[2]
        if stream.is_async:
            wake = stream.wake
            if wake is not None and not wake.done():
                wake.set_result(None)
        elif not stream.queued:
            stream.queued = True
            self.ready.append(stream)

    def _pump_streams(self):
        """Gives each sync stream that has credit a slice of items."""
        for stream in tuple(self.ready):
            if self._run_stream(stream) or not stream.queued:
                continue  # more to send, or ended (and taken out) already
            stream.queued = False
            self.ready.remove(stream)

    def _run_stream(self, stream):
        """Sends items of a sync stream for up to _STREAM_SLICE; True if the
        stream may send more.

        While its items are made, the ring says so (2 at RING_IN_LOOP, the
        stream's id at RING_MAKING): no request or coroutine runs meanwhile,
        so their clocks in the parent start over, and only this stream's
        backstop is judged. RING_LAST_COROUTINE is left alone: the parent
        resends a lost child's coroutines after it. SIGALRM is this worker's
        only during the slice, if user code left it free (_may_tick)."""
        counters = None if self.ring is None else self.ring.counters
        if counters is not None:
            counters[_COUNTER_SLICES] = (counters[_COUNTER_SLICES] + 1) & 0xFFFFFFFFFFFFFFFF
            counters[_COUNTER_MAKING] = stream.id
            counters[_COUNTER_IN_LOOP] = _IN_STREAM
        outcome = None
        self.running = _STREAM_TURN
        try:
            if not _may_tick():
                self._make_items(stream, False)
            else:
                previous = signal.signal(signal.SIGALRM, self.alarm_handler)
                try:
                    self._make_items(stream, True)
                finally:
                    self._stop_ticks(previous)
        except StopIteration:
            outcome = (True, None)
        except BaseException as exc:
            outcome = (False, exc)
        finally:
            self.running = None
            if counters is not None:
                counters[_COUNTER_IN_LOOP] = 0
        if outcome is not None:
            self._end_stream(stream, *outcome)
        self._flush()
        return outcome is None and stream.sent < stream.granted

    def _make_items(self, stream, ticks):
        """Makes items for a slice and writes them out in batches of up to
        _STREAM_BATCH: a write per item would cost the child, and above all
        the parent, more than a fast generator takes to make one.

        With `ticks`, SIGALRM rings every _STREAM_TICK while items are made
        (one timer for the slice: arming one per item costs more than an
        item). At each ring the handler (_on_stream_alarm) writes out the
        items held so far if the loop is inside `next`, where it does not
        touch the outbox, so that no item waits on a slow one behind it; a
        ring outside `next` is taken up before the next `next`. It also
        raises _ItemTimeout into an item past the stream's limit (its
        `finally` blocks run). A `next` that blocks in C code without
        returning to the interpreter holds both up; the parent's backstop
        is for that. Without `ticks` (see _may_tick) each item is written
        at once and items have no limit here. No ring for two ticks, seen
        when an item returns, means user code took SIGALRM or cancelled
        the timer (_ticks_lost)."""
        next_item = type(stream.iterator).__next__
        iterator = stream.iterator
        outbox = self.outbox
        limit = stream.limit
        now = _monotonic()
        slice_end = now + _STREAM_SLICE
        if ticks:
            self.ticking = True
            self.rang_at = now
            _setitimer(signal.ITIMER_REAL, _STREAM_TICK, _STREAM_TICK)
        while stream.sent < stream.granted:
            if ticks:
                if not self.ticking:
                    # The handler slowed the timer down during a long `next`.
                    self.ticking = True
                    self.rang_at = _monotonic()
                    _setitimer(signal.ITIMER_REAL, _STREAM_TICK, _STREAM_TICK)
                if self.hold_rang and outbox:
                    self._flush_held()
                if limit is not None:
                    self.item_deadline = _monotonic() + limit
                # Only the item's own `next` may be interrupted: never a
                # write, which would leave half a frame published.
                self.in_next = True
                value = next_item(iterator)
                self.in_next = False
                if self.ticking and _monotonic() - self.rang_at > 2 * _STREAM_TICK:
                    ticks = self._ticks_lost()
            else:
                value = next_item(iterator)
            self._send_item(stream, value)
            stream.sent += 1
            if not ticks or stream.sent == 1 or len(outbox) >= _STREAM_BATCH:
                self._flush()
            now = _monotonic()
            if now >= slice_end:
                return

    def _ticks_lost(self):
        """No ring for two ticks: whether the ticks go on. A handler user
        code installed stays (the turn goes on without ticks); a timer it
        cancelled is armed again."""
        if signal.getsignal(signal.SIGALRM) is not self.alarm_handler:
            self.in_next = False
            self.item_deadline = None
            _stop_own_timer()
            return False
        self.rang_at = _monotonic()
        if signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0):
            self.ticking = True
            _setitimer(signal.ITIMER_REAL, _STREAM_TICK, _STREAM_TICK)
        return True

    def _stop_ticks(self, previous):
        self.in_next = False
        self.item_deadline = None
        _give_back_alarm(self.alarm_handler, previous)

    def _on_stream_alarm(self, signum, frame):
        """SIGALRM during a slice of a sync stream (see _make_items). It
        raises only inside the item's `next`, never in a write (half a frame
        would go out), and judges the deadline after the held items."""
        self.rang_at = _monotonic()
        if not self.in_next or self.flushing:
            self.hold_rang = True
            return
        if self.outbox:
            self._flush_held()
        deadline = self.item_deadline
        if deadline is not None:
            left = deadline - _monotonic()
            if left <= 0:
                self.item_deadline = None
                raise _ItemTimeout()
        else:
            left = 0  # no limit: the timer stops until the loop needs it
        if self.ticking or left > 0:
            # Nothing is held while `next` runs on: ring again only at the
            # item's limit (0: never), rather than every tick.
            self.ticking = False
            _setitimer(signal.ITIMER_REAL, left)

    def _flush_held(self):
        """_flush, marked so that SIGALRM's handler does not flush inside it."""
        self.flushing = True
        try:
            self.hold_rang = False
            self._flush()
        finally:
            self.flushing = False

    async def _pump_async(self, stream):
        """Sends the items of an async stream as they come, while the
        parent's credit lasts; its outcome is the stream's (see
        _reply_finished). Past an item's limit the item is cancelled (its
        `finally` blocks run) and the stream ends with a timeout."""
        iterator = stream.iterator
        next_item = type(iterator).__anext__
        limit = stream.limit
        loop = self.driver.loop
        try:
            while True:
                while stream.sent >= stream.granted:
                    stream.wake = loop.create_future()
                    await stream.wake
                if limit is None:
                    value = await next_item(iterator)
                else:
                    started = loop.time()
                    try:
                        value = await asyncio.wait_for(next_item(iterator), limit)
                    except asyncio.TimeoutError:
                        if loop.time() - started < limit:
                            raise  # the iterator's own
                        raise _ItemTimeout() from None
                self._send_item(stream, value)
                stream.sent += 1
                # The turn ends, and with it the flush of this item.
                self.driver.wake()
        except StopAsyncIteration:
            return None
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                if limit is None:
                    await aclose()
                else:
                    # Closed within the stream's limit too.
                    try:
                        await asyncio.wait_for(aclose(), limit)
                    except asyncio.TimeoutError:
                        raise _ItemTimeout() from None

    def _send_item(self, stream, value):
        """Queues [id, "item", value] (or "item_data"); a value that does not
        pack raises _ItemUnpacked."""
        try:
            if stream.typed:
                body = self.pack_data(value)
            else:
                body = self.pack_value(value)
        except BaseException as exc:
            raise _ItemUnpacked(exc) from None
        request_id = stream.id
        if stream.typed:
            head, payload, kind = _item_data_head, ITEM_DATA_HEAD_PAYLOAD, REPLY_ITEM_DATA_KIND
        else:
            head, payload, kind = _item_head, ITEM_HEAD_PAYLOAD, REPLY_ITEM_KIND
        size = payload + len(body)
        if size > 0xFFFFFFFF:
            raise _ItemUnpacked(ConversionError("an item of %d bytes does not fit in a frame" % size))
        if 0 <= request_id <= 0xFFFFFFFFFFFFFFFF:
            self.outbox.append(head(size, OK_HEAD_ID_START, request_id, kind) + body)
        else:
            self._send(REPLY_OK_ARRAY + pack(request_id) + kind + body)

    def _end_stream(self, stream, ok, value):
        """Closes a sync stream's iterator (its `finally` blocks run, if it
        stopped at a yield) and sends the stream's reply. The close counts
        as a slice of the stream, within its limit (_close_within)."""
        self.streams.pop(stream.id, None)
        if stream.queued:
            stream.queued = False
            self.ready.remove(stream)
        counters = None if self.ring is None else self.ring.counters
        if counters is not None:
            counters[_COUNTER_SLICES] = (counters[_COUNTER_SLICES] + 1) & 0xFFFFFFFFFFFFFFFF
            counters[_COUNTER_MAKING] = stream.id
            counters[_COUNTER_IN_LOOP] = _IN_STREAM
        self.running = _STREAM_TURN
        try:
            closed = self._close_within(stream)
        except BaseException as exc:
            closed = exc
        finally:
            self.running = None
            if counters is not None:
                counters[_COUNTER_IN_LOOP] = 0
        if ok and closed is not None:
            ok, value = False, closed
        self._stream_reply(stream.id, ok, value)

    def _close_within(self, stream):
        """Closes a sync stream's iterator: what closing raised, or None.
        Past the stream's limit _ItemTimeout is raised where it runs, if
        SIGALRM may be taken (_may_tick); else the parent's backstop holds."""
        if stream.limit is None or not _may_tick():
            return _close_iterator(stream.iterator, quiet=False)
        handler = self._on_close_alarm
        previous = signal.signal(signal.SIGALRM, handler)
        self.closing = True
        try:
            _setitimer(signal.ITIMER_REAL, max(stream.limit, 1e-6))
            return _close_iterator(stream.iterator, quiet=False)
        finally:
            self.closing = False
            _give_back_alarm(handler, previous)

    def _on_close_alarm(self, signum, frame):
        if self.closing:
            self.closing = False
            raise _ItemTimeout()

    def _stream_reply(self, request_id, ok, value):
        """A stream's one reply: `ok` (nil) at its end, or what ended it."""
        if ok or value == "cancelled":
            self._reply_value(request_id, None)  # closed for a consumer that left
        elif isinstance(value, _ItemTimeout):
            self._send_reply([request_id, REPLY_TIMEOUT])
        elif isinstance(value, _ItemUnpacked):
            self._reply_unpacked(request_id, value.cause)
        elif isinstance(value, BaseException):
            self._request_failed(request_id, value)
        else:
            self._send_reply([request_id, REPLY_TIMEOUT])
