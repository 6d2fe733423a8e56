# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""The reply ring: shared memory the parent offers for replies (protocol.py
states its layout, as src/subprocess/ring.rs does for the parent)."""

import mmap
import os
import time

# Its counters are native u64s read and written through a memoryview, which
# moves each one whole (struct's pack_into zero-fills first: a reader could
# see 0 between the two stores). These are their indexes there.
_COUNTER_SIZE = 8  # bytes in a u64, "Q" below
_COUNTER_PUBLISHED = RING_PUBLISHED // _COUNTER_SIZE
_COUNTER_TAKEN = RING_TAKEN // _COUNTER_SIZE
_COUNTER_WAITING = RING_WAITING // _COUNTER_SIZE
_COUNTER_INTERRUPT_TARGET = RING_INTERRUPT_TARGET // _COUNTER_SIZE
_COUNTER_IN_LOOP = RING_IN_LOOP // _COUNTER_SIZE
_COUNTER_LAST_COROUTINE = RING_LAST_COROUTINE // _COUNTER_SIZE
_COUNTER_INTERRUPT_TAKEN = RING_INTERRUPT_TAKEN // _COUNTER_SIZE
_COUNTER_MAKING = RING_MAKING // _COUNTER_SIZE
_COUNTER_SLICES = RING_SLICES // _COUNTER_SIZE
# What RING_IN_LOOP holds: the event loop runs, or a sync stream's slice.
_IN_LOOP = 1
_IN_STREAM = RING_IN_STREAM
_RING_MASK = RING_SIZE - 1
_RING_FULL_NAP = 100e-6


class ReplyRing:
    """The child's end of the reply ring: whole frames are copied in, then
    the new total is published; a doorbell byte follows on stdout when the
    parent has said it sleeps until one comes."""

    def __init__(self, path):
        fd = os.open(path, os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, RING_DATA + RING_SIZE)
        finally:
            os.close(fd)
        self.counters = memoryview(self.map)[:RING_DATA].cast("Q")
        self.published = self.counters[_COUNTER_PUBLISHED]
        self.interrupt_target = self.counters[_COUNTER_INTERRUPT_TARGET]

    def new_interrupt_target(self):
        """The id of the request the parent's last SIGINT is for, if the
        parent named one since the last call; else None."""
        target = self.counters[_COUNTER_INTERRUPT_TARGET]
        if target == self.interrupt_target:
            return None
        self.interrupt_target = target
        return target

    def take_interrupt(self, request_id):
        """Tells the parent that this request stops for its SIGINT: stored
        before the request's reply is published, so a parent that takes the
        reply sees it."""
        self.counters[_COUNTER_INTERRUPT_TAKEN] = request_id

    def put(self, data, doorbell):
        """Copies `data` in, waiting for room as the parent takes it;
        False once the parent is gone."""
        size = len(data)
        published = self.published
        start = published & _RING_MASK
        counters = self.counters
        # The common case: a reply that fits before the end and in the room left.
        if start + size <= RING_SIZE and published + size - counters[_COUNTER_TAKEN] <= RING_SIZE:
            start += RING_DATA
            self.map[start : start + size] = data
            published += size
            self.published = published
            counters[_COUNTER_PUBLISHED] = published
            return not counters[_COUNTER_WAITING] or doorbell()
        return self._put_in_pieces(data, doorbell)

    def _put_in_pieces(self, data, doorbell):
        ring = self.map
        counters = self.counters
        if len(data) > 4096:
            data = memoryview(data)
        size = len(data)
        done = 0
        published = self.published
        while done < size:
            room = RING_SIZE - (published - counters[_COUNTER_TAKEN])
            if room <= 0:
                if not doorbell():
                    return False
                time.sleep(_RING_FULL_NAP)
                continue
            take = min(room, size - done)
            start = RING_DATA + published % RING_SIZE
            first = min(take, RING_DATA + RING_SIZE - start)
            ring[start : start + first] = data[done : done + first]
            if first < take:
                ring[RING_DATA : RING_DATA + take - first] = data[done + first : done + take]
            published += take
            done += take
            self.published = published
            counters[_COUNTER_PUBLISHED] = published
            if counters[_COUNTER_WAITING] and not doorbell():
                return False
        return True


def _open_ring(path):
    """The ring at `path`, or None (no path, or it cannot be mapped here)."""
    if not path:
        return None
    try:
        return ReplyRing(path)
    except (OSError, ValueError) as exc:
        _say("replies take the pipe: the reply ring did not open: %s" % exc)
        return None
