"""Timings of the worker's codec and of round trips to a worker child.

    python3 tests/python/bench_worker.py [python ...]

Codec timings, and the child's handling of one request (from its frame to
its reply's bytes, then also through its frame loop and the write to a
pipe), run in this interpreter with the pure codec and, where it is
installed, the C `msgpack` package. Round trips run a child on each
interpreter named (default: this one). The parent here sends bytes packed
in advance and does not decode replies inside the timed loop, so a round
trip is the child's work plus two pipe hops and the parent's reads.
"""

import os
import struct
import subprocess
import sys
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from worker_source import WORKER  # noqa: E402  (python/*.py joined as build.rs joins them)

sys.path.insert(0, os.path.dirname(WORKER))
import worker  # noqa: E402


def rmp_int(value):
    """An int the way rmp-serde writes it: the narrowest encoding."""
    if value < 0x80:
        return bytes((value,))
    if value <= 0xFF:
        return b"\xcc" + bytes((value,))
    if value <= 0xFFFF:
        return b"\xcd" + value.to_bytes(2, "big")
    return b"\xce" + value.to_bytes(4, "big")


BIG = list(range(100000))
# [7, "call", "echo", [[0, 1, ..., 99999]]] as rmp-serde would send it.
BIG_REQUEST = b"\x94\x07\xa4call\xa4echo\x91\xdd" + len(BIG).to_bytes(4, "big") + b"".join(map(rmp_int, BIG))
SMALL_REQUEST = worker.pack([7, "call", "add", [1, 2]])
INVOKE_REQUEST = worker.pack([7, "invoke", "add", [1, 2], {}, False, None])
HANDLED = [
    ("call add(1, 2)", SMALL_REQUEST),
    ("invoke add(1, 2)", INVOKE_REQUEST),
    ("invoke add(1, 2), typed, limit", worker.pack([7, "invoke", "add", [1, 2], {}, True, 30.0])),
    ("invoke add(a=1, b=2)", worker.pack([7, "invoke", "add", [], {"a": 1, "b": 2}, False, None])),
]
MIB8 = os.urandom(8 << 20)


def best(function, number):
    return min(timeit.repeat(function, number=number, repeat=7)) / number


def codecs():
    """(name, (pack, unpack, pack_typed)) of each codec this interpreter has."""
    found = [("pure", (worker.pack, worker.unpack, worker.pack_typed))]
    fast = worker._msgpack_codec()
    if fast is not None:
        found.append(("msgpack", fast))
    return found


def handling_timings():
    version = "%d.%d" % sys.version_info[:2]
    for name, codec in codecs():
        read_end, write_end = os.pipe()
        child = worker.ChildWorker(read_end, write_end, *codec)
        child.globals["add"] = lambda a, b: a + b
        outbox = child.outbox
        frames = [(label, bytearray(request)) for label, request in HANDLED]

        def handle(frame):
            child._handle_frame(frame)
            del outbox[:]

        inbox = child.inbox
        os.set_blocking(read_end, False)

        def handle_and_write(framed):
            # The whole turn of the child's loop: the inbox, the reply's
            # write to a pipe (and this end's read of it, to keep it empty).
            inbox.extend(framed)
            child._handle_frames()
            os.read(read_end, 4096)

        for _, frame in frames:
            handle(frame)
            assert not child.inbox
        # Rounds of each in turn, best of all: a shared core slows them alike.
        times = {(label, whole): [] for label, _ in frames for whole in (False, True)}
        for _ in range(7):
            for label, frame in frames:
                framed = worker.FRAME_HEADER.pack(len(frame)) + frame
                times[label, False].append(min(timeit.repeat(lambda: handle(frame), number=20000, repeat=3)) / 20000)
                times[label, True].append(min(timeit.repeat(lambda: handle_and_write(framed), number=5000, repeat=3)) / 5000)
        for label, _ in frames:
            print(
                "handle %s %-7s: %-32s %6.2f us, with the frame loop and the write %6.2f us"
                % (version, name, label, min(times[label, False]) * 1e6, min(times[label, True]) * 1e6)
            )
        os.close(read_end)
        os.close(write_end)


def bytes_timings():
    version = "%d.%d" % sys.version_info[:2]
    for name, (_, unpack, pack_typed) in codecs():
        wire = bytearray(pack_typed(MIB8))
        assert unpack(wire) == MIB8
        print("codec %s %-7s: pack_typed 8 MiB of bytes  %6.2f ms" % (version, name, best(lambda: pack_typed(MIB8), 10) * 1e3))
        print("codec %s %-7s: unpack 8 MiB of bin        %6.2f ms" % (version, name, best(lambda: unpack(wire), 10) * 1e3))
    copy = bytearray(MIB8)
    print("codec %s: one copy of 8 MiB, for scale     %6.2f ms" % (version, best(lambda: bytes(copy), 10) * 1e3))


def codec_timings():
    child = worker.ChildWorker.__new__(worker.ChildWorker)
    child.outbox = []
    child.pack_value = worker.pack

    def small_reply():
        child._reply_value(7, 3)
        del child.outbox[:]

    def big_reply():
        child._reply_value(7, BIG)
        del child.outbox[:]

    assert worker.unpack(BIG_REQUEST) == [7, "call", "echo", [BIG]]
    version = "%d.%d" % sys.version_info[:2]
    print("codec %s: unpack [7,'call','add',[1,2]]  %6.2f us" % (version, best(lambda: worker.unpack(SMALL_REQUEST), 20000) * 1e6))
    print("codec %s: reply frame [7,'ok',3]         %6.2f us" % (version, best(small_reply, 20000) * 1e6))
    print("codec %s: unpack 100k-int request        %6.2f ms" % (version, best(lambda: worker.unpack(BIG_REQUEST), 10) * 1e3))
    print("codec %s: reply frame of 100k ints       %6.2f ms" % (version, best(big_reply, 10) * 1e3))


class Child:
    """A worker child driven over raw fds, with as little parent work as possible."""

    def __init__(self, python):
        self.process = subprocess.Popen([python, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.request_fd = self.process.stdin.fileno()
        self.reply_fd = self.process.stdout.fileno()
        self.hello = worker.unpack(self.receive_raw())

    def send_raw(self, payload):
        data = memoryview(struct.pack(">I", len(payload)) + payload)
        while data:
            data = data[os.write(self.request_fd, data) :]

    def _read_exactly(self, size):
        parts = []
        while size:
            chunk = os.read(self.reply_fd, min(size, 1 << 20))
            if not chunk:
                raise EOFError("the child exited")
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def receive_raw(self):
        (size,) = struct.unpack(">I", self._read_exactly(4))
        return self._read_exactly(size)

    def close(self):
        self.send_raw(worker.pack([0, "stop"]))
        self.receive_raw()
        self.process.wait()


def round_trips(python):
    child = Child(python)
    version = child.hello[2]
    child.send_raw(worker.pack([1, "run", "def add(a, b):\n    return a + b\ndef echo(x):\n    return x\n"]))
    child.receive_raw()
    for _ in range(2000):  # warm up
        child.send_raw(SMALL_REQUEST)
        child.receive_raw()
    count = 4000
    small = {"call": [], "invoke": []}
    for _ in range(5):  # rounds of each in turn, best of all
        for label, request in (("call", SMALL_REQUEST), ("invoke", INVOKE_REQUEST)):
            start = time.perf_counter()
            for _ in range(count):
                child.send_raw(request)
                child.receive_raw()
            small[label].append((time.perf_counter() - start) / count)
            child.send_raw(request)
            assert worker.unpack(child.receive_raw()) == [7, "ok", 3]
    times = []
    for _ in range(10):
        start = time.perf_counter()
        child.send_raw(BIG_REQUEST)
        reply = child.receive_raw()
        times.append(time.perf_counter() - start)
    assert worker.unpack(reply) == [7, "ok", BIG]
    child.close()
    print("child %s: round trip of a small call   %6.2f us" % (version, min(small["call"]) * 1e6))
    print("child %s: round trip of a small invoke %6.2f us" % (version, min(small["invoke"]) * 1e6))
    print("child %s: echo of 100k ints            %6.2f ms (best of 10)" % (version, min(times) * 1e3))


if __name__ == "__main__":
    codec_timings()
    bytes_timings()
    handling_timings()
    for python in sys.argv[1:] or [sys.executable]:
        round_trips(python)
