# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""The reply ring: shared memory the parent offers for replies (see
src/subprocess/ring.rs for the layout)."""

import mmap
import os
import time

# Its counters are native u64s read and written through a memoryview, which
# moves each one whole (struct's pack_into zero-fills first: a reader could
# see 0 between the two stores).
_RING_PUBLISHED = 0  # index of the u64 at byte 0
_RING_TAKEN = 8  # byte 64
_RING_WAITING = 16  # byte 128
_RING_INTERRUPT_TARGET = 24  # byte 192
_RING_IN_LOOP = 32  # byte 256
_RING_LAST_COROUTINE = 40  # byte 320
_RING_INTERRUPT_TAKEN = 48  # byte 384
_RING_DATA = 4096
_RING_SIZE = 1 << 20
_RING_MASK = _RING_SIZE - 1
_RING_FULL_NAP = 100e-6


class ReplyRing:
    """The child's end of the reply ring: whole frames are copied in, then
    the new total is published; a doorbell byte follows on stdout when the
    parent has said it sleeps until one comes."""

    def __init__(self, path):
        fd = os.open(path, os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, _RING_DATA + _RING_SIZE)
        finally:
            os.close(fd)
        self.counters = memoryview(self.map)[:_RING_DATA].cast("Q")
        self.published = self.counters[_RING_PUBLISHED]
        self.interrupt_target = self.counters[_RING_INTERRUPT_TARGET]

    def new_interrupt_target(self):
        """The id of the request the parent's last SIGINT is for, if the
        parent named one since the last call; else None."""
        target = self.counters[_RING_INTERRUPT_TARGET]
        if target == self.interrupt_target:
            return None
        self.interrupt_target = target
        return target

    def take_interrupt(self, request_id):
        """Tells the parent that this request stops for its SIGINT: stored
        before the request's reply is published, so a parent that takes the
        reply sees it."""
        self.counters[_RING_INTERRUPT_TAKEN] = request_id

    def put(self, data, doorbell):
        """Copies `data` in, waiting for room as the parent takes it;
        False once the parent is gone."""
        size = len(data)
        published = self.published
        start = published & _RING_MASK
        counters = self.counters
        # The common case: a reply that fits before the end and in the room left.
        if start + size <= _RING_SIZE and published + size - counters[_RING_TAKEN] <= _RING_SIZE:
            start += _RING_DATA
            self.map[start : start + size] = data
            published += size
            self.published = published
            counters[_RING_PUBLISHED] = published
            return not counters[_RING_WAITING] or doorbell()
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
            room = _RING_SIZE - (published - counters[_RING_TAKEN])
            if room <= 0:
                if not doorbell():
                    return False
                time.sleep(_RING_FULL_NAP)
                continue
            take = min(room, size - done)
            start = _RING_DATA + published % _RING_SIZE
            first = min(take, _RING_DATA + _RING_SIZE - start)
            ring[start : start + first] = data[done : done + first]
            if first < take:
                ring[_RING_DATA : _RING_DATA + take - first] = data[done + first : done + take]
            published += take
            done += take
            self.published = published
            counters[_RING_PUBLISHED] = published
            if counters[_RING_WAITING] and not doorbell():
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
