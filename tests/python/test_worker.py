"""Tests of the worker: python/*.py, joined into one source as build.rs joins them.

    python3 -m unittest discover -s tests/python -v

`CodecTests` check the MessagePack codec in this interpreter against bytes
written by hand the way rmp-serde writes them. The `ChildOnPython*` classes
run the joined worker as a child process (the subprocess backend's program,
PROTOCOL.md; the `_bootstrap` ones start it the way the Rust side does) on
every CPython 3.8, 3.10, 3.11, 3.12 and 3.13 found under
/root/.pyenv/versions, on this interpreter, and on any named in
ASYNC_PY_TEST_PYTHONS (paths separated by os.pathsep: a venv with the C
`msgpack` package, say); `InterpreterTests` fails when none of 3.8, 3.10,
3.12 and 3.13 is there. Every read from a child has a time limit, so a
child that hangs fails its test instead of the run.
"""

import fractions
import glob
import os
import queue
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from worker_source import WORKER  # noqa: E402  (python/*.py joined as build.rs joins them)
import worker_source  # noqa: E402

sys.path.insert(0, os.path.dirname(WORKER))
import worker  # noqa: E402  (the joined worker, imported in-process for its codec)

REPLY_TIMEOUT = 10.0
"""Seconds to wait for one reply, or for a child to exit."""

PYENV_VERSIONS = ("3.8", "3.10", "3.11", "3.12", "3.13")
REQUIRED_VERSIONS = ("3.8", "3.10", "3.12", "3.13")


def find_interpreters():
    """{"3.12": path, ...}: the pyenv interpreters, plus this one."""
    found = {}
    for version in PYENV_VERSIONS:
        for path in sorted(glob.glob("/root/.pyenv/versions/%s.*/bin/python3" % version)):
            found.setdefault(version, path)
    known = {os.path.realpath(path) for path in found.values()}
    if os.path.realpath(sys.executable) not in known:
        found["%d.%d_current" % sys.version_info[:2]] = sys.executable
    extra = [path for path in os.environ.get("ASYNC_PY_TEST_PYTHONS", "").split(os.pathsep) if path]
    for number, path in enumerate(extra, start=1):
        found["extra%d" % number] = path
    return found


INTERPRETERS = find_interpreters()


# How the Rust side starts a child (src/subprocess/child.rs runs this file
# with the worker's source and a cache prefix as arguments).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python", "bootstrap.py")) as _bootstrap:
    BOOTSTRAP = _bootstrap.read()
BOOTSTRAP_VERSIONS = ("3.8", "3.13")
"""Interpreters whose child tests run a second time, started like that."""


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


class WithBin(list):
    """A request whose bytes go as bin, as the parent writes an invoke's."""


def packed(request):
    return worker.pack_typed(request) if isinstance(request, WithBin) else worker.pack(request)


def invoke(request_id, name, args=(), kwargs=None, typed=False, limit=None):
    """An invoke request as the parent writes it."""
    return WithBin([request_id, "invoke", name, list(args), kwargs or {}, typed, limit])


def child_env():
    """The child's environment, without what would hide buffering bugs."""
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


class Exited:
    """Put on the reply queue when the child's stdout ends."""

    def __init__(self, leftover):
        self.leftover = leftover

    def __repr__(self):
        return "<child stdout ended, %d stray bytes>" % len(self.leftover)


class Child:
    """python/worker.py in a child process, talked to over pipes.

    Two threads read its stdout (frames, onto a queue) and its stderr, so
    every wait here has a time limit. Output marks are not put on the
    queue; `frames` holds every frame, marks included, in order.
    """

    def __init__(self, python, cwd=None, launch="file", args=()):
        if launch == "file":
            command = [python, WORKER]
        else:
            with open(WORKER) as source:
                # No cache prefix: each start compiles the worker afresh.
                pieces = worker_source.argument_pieces(source.read())
                command = [python, "-u", "-c", BOOTSTRAP, str(len(pieces))] + pieces + [""]
        command.extend(args)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            cwd=cwd,
        )
        self.replies = queue.Queue()
        self.frames = []
        self.stderr_chunks = []
        self.readers = [
            threading.Thread(target=self._read_replies, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read_replies(self):
        stream = self.process.stdout
        while True:
            header = stream.read(4)
            if len(header) < 4:
                self.replies.put(Exited(header))
                return
            (size,) = struct.unpack(">I", header)
            body = stream.read(size)
            if len(body) < size:
                self.replies.put(Exited(header + body))
                return
            try:
                decoded = worker.unpack(body)
            except Exception as exc:  # the test fails on it, not the thread
                self.replies.put(exc)
                continue
            self.frames.append(decoded)
            if decoded != ["out"]:
                self.replies.put(decoded)

    def _read_stderr(self):
        while True:
            chunk = self.process.stderr.read1(65536) if hasattr(self.process.stderr, "read1") else self.process.stderr.read(1)
            if not chunk:
                return
            self.stderr_chunks.append(chunk)

    def stderr(self):
        return b"".join(self.stderr_chunks).decode("utf-8", "replace")

    def send_raw(self, data):
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the child is gone; the test sees that in its replies

    def send(self, request):
        self.send_raw(frame(packed(request)))

    def reply(self, timeout=REPLY_TIMEOUT):
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no reply from the child within %.1f s; stderr:\n%s" % (timeout, self.stderr())) from None

    def request(self, request, timeout=REPLY_TIMEOUT):
        self.send(request)
        return self.reply(timeout)

    def close_input(self):
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass

    def wait(self, timeout=REPLY_TIMEOUT):
        """The exit status; fails (after killing it) if the child does not exit in time."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the child did not exit within %.1f s; stderr:\n%s" % (timeout, self.stderr())) from None
        for reader in self.readers:
            reader.join(timeout)
        return status

    def wait_for_stderr(self, text, timeout=REPLY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if time.monotonic() > deadline:
                raise AssertionError("%r never reached stderr; it holds:\n%s" % (text, self.stderr()))
            time.sleep(0.01)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def finish(self):
        self.kill()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        for reader in self.readers:
            reader.join(REPLY_TIMEOUT)


class InterpreterTests(unittest.TestCase):
    def test_the_required_interpreters_are_found(self):
        required = [version for version in REQUIRED_VERSIONS if version in INTERPRETERS]
        self.assertTrue(
            required,
            "none of CPython %s found under /root/.pyenv/versions: the worker is only tested on %s"
            % (", ".join(REQUIRED_VERSIONS), sys.executable),
        )


# == the join: python/MODULES ================================================


class JoinTests(unittest.TestCase):
    """python/MODULES and the sources joined from it."""

    HELPER_NAMES = (
        "RunnerTimeout",
        "new_globals",
        "run_code",
        "eval_expr",
        "run_file",
        "set_venv",
        "resolve",
        "describe_error",
        "table_form",
        "CoroutineDriver",
        "output_router",
        "os",
    )
    """What the PyO3 and RustPython backends look up in the helpers."""

    def test_every_module_is_listed_once(self):
        groups = worker_source.modules()
        listed = groups["in-process"] + groups["child"]
        on_disk = sorted(name for name in os.listdir(worker_source.PYTHON_DIR) if name.endswith(".py") and name != "bootstrap.py")
        self.assertEqual(sorted(listed), on_disk)
        self.assertEqual(len(set(listed)), len(listed))
        self.assertEqual(listed[-1], "serve.py", "the child's program (main) comes last")

    def test_every_module_states_the_rule_and_imports_only_plain_names(self):
        for name in os.listdir(worker_source.PYTHON_DIR):
            if not name.endswith(".py") or name == "bootstrap.py":
                continue
            with open(os.path.join(worker_source.PYTHON_DIR, name), encoding="utf-8") as module:
                text = module.read()
            self.assertTrue(text.startswith("# A worker module, joined with the others"), name)
            self.assertNotRegex(text, r"(?m)^\s*from \.", name)

    def test_the_in_process_helpers_stand_alone(self):
        namespace = {"__name__": "async_py_worker", "__file__": "async_py/worker.py"}
        exec(compile(worker_source.in_process_source(), "async_py/worker.py", "exec"), namespace)
        for name in self.HELPER_NAMES:
            self.assertIn(name, namespace)
        self.assertNotIn("ChildWorker", namespace)
        self.assertEqual(namespace["table_form"](fractions.Fraction(1, 4)), 0.25)
        try:
            namespace["run_code"]("raise ValueError('bad \\udc80')", namespace["new_globals"]())
        except ValueError as exc:
            kind, message, trace = namespace["describe_error"](exc)
        self.assertEqual((kind, message), ("ValueError", "bad \\udc80"))
        self.assertIn("<string>", trace)


# == codec.py ================================================================


class CodecTests(unittest.TestCase):
    """The codec in this interpreter, against bytes written by hand."""

    def test_scalars_pack_to_their_shortest_form(self):
        cases = [
            (None, b"\xc0"),
            (False, b"\xc2"),
            (True, b"\xc3"),
            (0, b"\x00"),
            (127, b"\x7f"),
            (128, b"\xcc\x80"),
            (255, b"\xcc\xff"),
            (256, b"\xcd\x01\x00"),
            (65535, b"\xcd\xff\xff"),
            (65536, b"\xce\x00\x01\x00\x00"),
            (2**32, b"\xcf\x00\x00\x00\x01\x00\x00\x00\x00"),
            (2**64 - 1, b"\xcf" + b"\xff" * 8),
            (-1, b"\xff"),
            (-32, b"\xe0"),
            (-33, b"\xd0\xdf"),
            (-129, b"\xd1\xff\x7f"),
            (-(2**31), b"\xd2\x80\x00\x00\x00"),
            (-(2**63), b"\xd3\x80" + b"\x00" * 7),
            (1.5, b"\xcb" + struct.pack(">d", 1.5)),
            (float("nan"), b"\xc0"),
            (float("-inf"), b"\xc0"),
            ("", b"\xa0"),
            ("a" * 31, b"\xbf" + b"a" * 31),
            ("a" * 32, b"\xd9\x20" + b"a" * 32),
            ("é" * 200, b"\xda\x01\x90" + "é".encode() * 200),
        ]
        for value, wire in cases:
            with self.subTest(value=value):
                self.assertEqual(worker.pack(value), wire)

    def test_containers_pack_by_the_value_table(self):
        self.assertEqual(worker.pack([1, (2,)]), b"\x92\x01\x91\x02")
        self.assertEqual(worker.pack({1: None}), b"\x81\xa11\xc0")
        self.assertEqual(worker.pack(b"\x01\xff"), b"\x92\xcc\x01\xcc\xff")
        self.assertEqual(worker.pack(bytearray(b"ab")), b"\x92\x61\x62")
        self.assertEqual(worker.pack({5}), b"\x91\x05")
        self.assertEqual(worker.pack(list(range(16)))[:3], b"\xdc\x00\x10")
        self.assertEqual(worker.pack({str(i): i for i in range(16)})[:3], b"\xde\x00\x10")

    def test_long_number_lists_take_one_encoding_for_every_item(self):
        ints = [1000, -5, 2**31 - 1, -(2**31)] * 4
        self.assertEqual(
            worker.pack(ints), b"\xdc\x00\x10" + b"".join(b"\xd2" + struct.pack(">i", i) for i in ints)
        )
        floats = [0.5, -1e300, 3.0, 2.0**-1074] * 4
        self.assertEqual(
            worker.pack(floats), b"\xdc\x00\x10" + b"".join(b"\xcb" + struct.pack(">d", f) for f in floats)
        )

    def test_subclasses_in_long_number_lists_pack_as_their_stored_values(self):
        class Count(int):
            def __index__(self):
                return 7

        class Share(float):
            pass

        for items, plain in [
            ([1000] * 19 + [Count(5)], [1000] * 19 + [5]),
            ([3] * 19 + [Count(5)], [3] * 19 + [5]),
            ([0.5] * 19 + [Share(0.25)], [0.5] * 19 + [0.25]),
        ]:
            with self.subTest(last=type(items[-1])):
                back = worker.unpack(worker.pack(items))
                self.assertEqual(back, plain)
                self.assertIs(type(back[-1]), type(plain[-1]))

    def test_long_number_lists_run_no_user_code(self):
        # __index__ is a row of the value table, so it may run once, for
        # the item itself; the fast path must not call anything else.
        class Index:
            def __index__(self):
                return 7

            def __int__(self):
                raise AssertionError("__int__ ran")

            def __float__(self):
                raise AssertionError("__float__ ran")

            def __radd__(self, other):
                raise AssertionError("__radd__ ran")

            def __str__(self):
                raise AssertionError("__str__ ran")

        self.assertEqual(worker.unpack(worker.pack([1] * 19 + [Index()])), [1] * 19 + [7])
        self.assertEqual(worker.unpack(worker.pack([0.5] * 19 + [Index()])), [0.5] * 19 + [7])

    def test_long_number_lists_round_trip_through_the_fast_path(self):
        lists = [
            list(range(100)),
            list(range(100000)),
            [-5] * 40,
            list(range(-100, 100)),
            [2**63 + i for i in range(20)],
            [-(2**63) + i for i in range(20)],
            [-1, 2**63] * 10,
            [i * 0.25 for i in range(-50, 50)],
            [True] * 20,
            [1, True, 2] * 10,
            [1.0, 2] * 10,
            [2**31 - 1, -(2**31)] * 10,  # the ends of marshal's 32-bit records
            [2**31] + list(range(20)),  # one int past them
            [1000, True] * 10,
            [1000, 2.5] * 10,
            [2.5, 1000] * 10,
            [1000] * 19 + ["x"],
            [1000] * 19 + [[1000] * 3],
            [0.5] * 19 + [None],
            [0.5] * 19 + ["x"],
            [0.5] * 19 + [1000],
            [0.5] * 16 + [1e308, 1e308],  # finite, though their sum is not
            [3000000000, 2**63 - 1, -(2**40)] * 7,
        ]
        for items in lists:
            with self.subTest(items=items[:4]):
                back = worker.unpack(worker.pack(items))
                self.assertEqual(back, items)
                self.assertEqual([type(item) for item in back], [type(item) for item in items])

    def test_special_floats_in_long_lists_become_nil(self):
        self.assertEqual(worker.unpack(worker.pack([0.5] * 20 + [float("nan")])), [0.5] * 20 + [None])

    def test_ints_outside_64_bits_are_conversion_errors(self):
        for value in (2**64, -(2**63) - 1, [0] * 20 + [2**70], [0.5] * 20 + [2**70]):
            with self.subTest(value=value):
                with self.assertRaises(worker.ConversionError) as caught:
                    worker.pack(value)
                self.assertIn("does not fit in a 64-bit integer (i64 or u64)", str(caught.exception))
        with self.assertRaises(worker.ConversionError) as caught:
            worker.pack(2**70)
        self.assertEqual(str(caught.exception), "int of 71 bits does not fit in a 64-bit integer (i64 or u64)")

    def test_nesting_deeper_than_200_is_a_conversion_error(self):
        value = 0
        for _ in range(200):
            value = [value]
        worker.pack(value)
        with self.assertRaises(worker.ConversionError) as caught:
            worker.pack([value])
        self.assertEqual(str(caught.exception), "value nests deeper than 200 levels (or contains itself)")
        looped = []
        looped.append(looped)
        self.assertRaises(worker.ConversionError, worker.pack, looped)

    def test_args_nesting_deeper_than_200_are_refused(self):
        # [id, op, name, [arg]]: the arg itself starts two levels down.
        deepest = 1
        for _ in range(202):
            deepest = [deepest]
        self.assertEqual(worker.unpack(b"\x91" * 202 + b"\x01"), deepest)
        self.assertRaises(worker._TooDeep, worker.unpack, b"\x91" * 203 + b"\x01")

    def test_every_wire_type_unpacks(self):
        cases = [
            (b"\xc0", None),
            (b"\xc2", False),
            (b"\xc3", True),
            (b"\x05", 5),
            (b"\xfb", -5),
            (b"\xcc\xc8", 200),
            (b"\xcd\x01\x00", 256),
            (b"\xce\x00\x01\x00\x00", 65536),
            (b"\xcf" + b"\xff" * 8, 2**64 - 1),
            (b"\xd0\x80", -128),
            (b"\xd1\x80\x00", -32768),
            (b"\xd2\x80\x00\x00\x00", -(2**31)),
            (b"\xd3\x80" + b"\x00" * 7, -(2**63)),
            (b"\xca" + struct.pack(">f", 0.5), 0.5),
            (b"\xcb" + struct.pack(">d", -2.5), -2.5),
            (b"\xa3abc", "abc"),
            (b"\xd9\x02hi", "hi"),
            (b"\xda\x00\x02hi", "hi"),
            (b"\xdb\x00\x00\x00\x02hi", "hi"),
            (b"\xc4\x02\x00\xff", b"\x00\xff"),
            (b"\xc5\x00\x01\x07", b"\x07"),
            (b"\xc6\x00\x00\x00\x01\x07", b"\x07"),
            (b"\x92\x01\xa1x", [1, "x"]),
            (b"\xdc\x00\x02\x01\x02", [1, 2]),
            (b"\xdd\x00\x00\x00\x02\x01\x02", [1, 2]),
            (b"\x81\xa1k\x01", {"k": 1}),
            (b"\xde\x00\x01\xa1k\x01", {"k": 1}),
            (b"\xdf\x00\x00\x00\x01\xa1k\x01", {"k": 1}),
            (b"\x81\x01\x02", {1: 2}),
        ]
        for wire, value in cases:
            with self.subTest(wire=wire):
                got = worker.unpack(wire)
                self.assertEqual(got, value)
                self.assertIs(type(got), type(value))

    def test_numbers_in_short_arrays_unpack_as_alone(self):
        # Call arguments are short arrays, which read numbers by marker.
        numbers = [
            b"\xcc\xc8", b"\xcd\x01\x00", b"\xce\x00\x01\x00\x00", b"\xcf" + b"\xff" * 8,
            b"\xd0\x80", b"\xd1\x80\x00", b"\xd2\x80\x00\x00\x00", b"\xd3\x80" + b"\x00" * 7,
            b"\xca" + struct.pack(">f", 0.5), b"\xcb" + struct.pack(">d", -2.5),
        ]
        for wire in numbers:
            with self.subTest(wire=wire):
                alone = worker.unpack(wire)
                got = worker.unpack(b"\x93" + wire + b"\x01" + wire)
                self.assertEqual(got, [alone, 1, alone])
                self.assertIs(type(got[0]), type(alone))
                with self.assertRaises(worker.FrameError):
                    worker.unpack(b"\x92\x01" + wire[:-1])

    def test_runs_of_mixed_width_ints_unpack(self):
        def rmp(value):  # the narrowest encoding, as rmp-serde writes it
            if 0 <= value < 0x80 or -32 <= value < 0:
                return struct.pack(">b" if value < 0 else ">B", value)
            for low, high, marker, code in [
                (0, 0xFF, 0xCC, "B"), (0, 0xFFFF, 0xCD, "H"), (0, 0xFFFFFFFF, 0xCE, "I"),
                (-128, 127, 0xD0, "b"), (-(2**15), 2**15 - 1, 0xD1, "h"), (-(2**31), 2**31 - 1, 0xD2, "i"),
            ]:
                if low <= value <= high:
                    return bytes((marker,)) + struct.pack(">" + code, value)
            return b"\xd3" + struct.pack(">q", value) if value < 0 else b"\xcf" + struct.pack(">Q", value)

        rng = random.Random(7)
        lists = [
            list(range(-70000, 70000, 3)),
            [rng.choice([0, 1, -1, 200, -200, 70000, -70000, 2**40, -(2**40)]) for _ in range(500)],
            [0.5] * 30 + [1] * 30 + [None] * 3 + [-3] * 30,
        ]
        for items in lists:
            with self.subTest(items=items[:4]):
                body = b"".join(rmp(item) if type(item) is int else worker.pack(item) for item in items)
                wire = b"\xdd" + struct.pack(">I", len(items)) + body
                self.assertEqual(worker.unpack(wire), items)

    def test_bad_bytes_are_frame_errors(self):
        for wire in [
            b"",
            b"\xc1",
            b"\xd4\x01\x00",  # fixext 1
            b"\xc7\x01\x05\x00",  # ext 8
            b"\x92\x01",  # one item short
            b"\xa5abc",  # str cut short
            b"\xcd\x01",  # uint 16 cut short
            b"\x01\x02",  # trailing byte
            b"\xa2\xff\xfe",  # not UTF-8
            b"\x81\x91\x01\x02",  # a list as a map key
        ]:
            with self.subTest(wire=wire):
                self.assertRaises(worker.FrameError, worker.unpack, wire)


class TypedPackTests(unittest.TestCase):
    """pack_typed: the value table, with bytes as bin (a typed result)."""

    def test_bytes_like_values_become_bin_at_any_depth(self):
        value = {"b": b"\x00\xff", "l": [bytearray(b"ab"), (memoryview(b"cd"),)], "d": {"k": [b""]}}
        wire = worker.pack_typed(value)
        self.assertIn(b"\xc4\x02\x00\xff", wire)
        self.assertEqual(worker.unpack(wire), {"b": b"\x00\xff", "l": [b"ab", [b"cd"]], "d": {"k": [b""]}})
        self.assertEqual(worker.pack_typed(b"\x01"), b"\xc4\x01\x01")
        self.assertEqual(worker.pack_typed([b"x"] * 20)[:5], b"\xdc\x00\x14\xc4\x01")

    def test_bin_takes_the_header_its_size_needs(self):
        for size, head in [
            (0, b"\xc4\x00"),
            (255, b"\xc4\xff"),
            (256, b"\xc5\x01\x00"),
            (65535, b"\xc5\xff\xff"),
            (65536, b"\xc6\x00\x01\x00\x00"),
        ]:
            with self.subTest(size=size):
                data = bytes(range(256)) * (size // 256) + bytes(size % 256)
                self.assertEqual(worker.pack_typed(data), head + data)
                self.assertEqual(worker.unpack(head + data), data)

    def test_a_memoryview_goes_as_its_bytes(self):
        from array import array

        numbers = array("i", [1, -1])
        self.assertEqual(worker.unpack(worker.pack_typed(memoryview(numbers))), numbers.tobytes())
        strided = memoryview(b"abcdef")[::2]
        self.assertEqual(worker.unpack(worker.pack_typed([strided])), [b"ace"])

    def test_a_subclass_goes_as_its_stored_bytes(self):
        class Tagged(bytes):
            def __bytes__(self):
                return b"not these"

            def __len__(self):
                return 99

        class Growing(bytearray):
            def __bytes__(self):
                return b"not these"

        self.assertEqual(worker.unpack(worker.pack_typed([Tagged(b"ab"), Growing(b"cd")])), [b"ab", b"cd"])

    def test_the_rest_of_the_table_holds(self):
        self.assertEqual(worker.unpack(worker.pack_typed([float("nan"), float("inf"), 1.5])), [None, None, 1.5])
        self.assertEqual(worker.unpack(worker.pack_typed({1: {2}, None: (3,)})), {"1": [2], "None": [3]})
        self.assertEqual(worker.unpack(worker.pack_typed([0.5] * 20 + [float("nan")])), [0.5] * 20 + [None])
        self.assertEqual(worker.unpack(worker.pack_typed(fractions.Fraction(1, 4))), 0.25)
        for value in (2**64, [b"x", -(2**63) - 1]):
            with self.subTest(value=value):
                with self.assertRaises(worker.ConversionError) as caught:
                    worker.pack_typed(value)
                self.assertIn("does not fit in a 64-bit integer (i64 or u64)", str(caught.exception))
        deep = b"x"
        for _ in range(201):
            deep = [deep]
        self.assertRaises(worker.ConversionError, worker.pack_typed, deep)

    def test_pack_still_sends_bytes_as_ints(self):
        self.assertEqual(worker.pack(b"\x01\xff"), b"\x92\xcc\x01\xcc\xff")
        self.assertEqual(worker.unpack(worker.pack([memoryview(b"ab")])), [[97, 98]])

    def test_8_mib_of_bytes_pack_and_unpack_whole(self):
        data = os.urandom(8 << 20)
        wire = worker.pack_typed(data)
        self.assertEqual(wire[:5], b"\xc6" + struct.pack(">I", len(data)))
        self.assertEqual(len(wire), len(data) + 5)
        for frame_bytes in (wire, bytearray(wire)):  # the worker's frames are bytearrays
            back = worker.unpack(frame_bytes)
            self.assertIs(type(back), bytes)
            self.assertEqual(back, data)
        self.assertEqual(worker.unpack(worker.pack_typed([bytearray(data)]))[0], data)
        self.assertEqual(worker.unpack(worker.pack_typed(memoryview(data)[1:])), data[1:])


class MsgpackCodecTests(unittest.TestCase):
    """The C `msgpack` package's codec gives the same answers as the pure one."""

    def setUp(self):
        codec = worker._msgpack_codec()
        if codec is None:
            self.skipTest("no msgpack package in this interpreter (set ASYNC_PY_TEST_PYTHONS to a venv with it)")
        self.pack, self.unpack, self.pack_typed = codec

    def test_replies_match_the_pure_codec(self):
        values = [
            None, 7, -(2**63), 2**64 - 1, "é", [1, "a", None, True], {"k": 1.5}, list(range(1000)),
            b"\x00\xff", {1, 2}, [float("nan")] * 3, {1: "a"}, (1, 2), object, [[1], {"a": [2]}],
        ]
        for value in values:
            with self.subTest(value=value):
                self.assertEqual(worker.unpack(self.pack(value)), worker.unpack(worker.pack(value)))
        for value in (2**64, "\ud800", [2**70]):
            self.assertRaises(worker.ConversionError, self.pack, value)

    def test_typed_replies_match_the_pure_codec(self):
        values = [
            None, 7, "é", b"\x00\xff", bytearray(b"ab"), memoryview(b"cd"), [b"x", 1, None], (b"y",),
            {"k": b"z"}, {"k": [b"z"]}, [float("nan")], {1, 2}, {1: b"a"}, object, list(range(100)),
        ]
        for value in values:
            with self.subTest(value=value):
                self.assertEqual(self.unpack(self.pack_typed(value)), worker.unpack(worker.pack_typed(value)))
        for value in (2**64, "\ud800", [2**70], [b"x", 2**70]):
            self.assertRaises(worker.ConversionError, self.pack_typed, value)

    def test_8_mib_of_bytes_pack_and_unpack_whole(self):
        data = os.urandom(8 << 20)
        wire = self.pack_typed(data)
        self.assertEqual(wire, worker.pack_typed(data))
        back = self.unpack(bytearray(wire))
        self.assertIs(type(back), bytes)
        self.assertEqual(back, data)

    def test_requests_match_the_pure_codec(self):
        for wire in (worker.pack([7, "call", "add", [1, 2.5, "x", None, {"k": [True]}]]), b"\xc4\x02\x00\xff"):
            self.assertEqual(self.unpack(wire), worker.unpack(wire))
        for wire in (b"\xc1", b"\x92\x01", b"\x01\x02", b"\xd4\x01\x00"):
            self.assertRaises(worker.FrameError, self.unpack, wire)
        self.assertRaises(worker._TooDeep, self.unpack, b"\x91" * 3000 + b"\x01")


# == helpers.py ==============================================================


class CoroutineDriverTests(unittest.TestCase):
    """CoroutineDriver the way the in-process backend drives it."""

    def setUp(self):
        import socket

        self.wake_read, self.wake_write = socket.socketpair()
        self.wake_read.setblocking(False)
        self.driver = worker.CoroutineDriver(self.wake_read.fileno())
        self.namespace = worker.new_globals()
        worker.run_code(
            textwrap.dedent(
                """
                import asyncio
                async def wait(seconds, value):
                    await asyncio.sleep(seconds)
                    return value
                """
            ),
            self.namespace,
        )
        self.wait = self.namespace["wait"]

    def tearDown(self):
        self.driver.cancel_all()
        self.wake_read.close()
        self.wake_write.close()

    def test_a_coroutine_finishes_in_a_blocking_turn(self):
        self.assertEqual(self.driver.start(5, self.wait, (0.01, "done"), None), (True, None))
        self.assertEqual(self.driver.pending, 1)
        finished = []
        while not finished:
            finished = self.driver.turn(True)
        self.assertEqual(finished, [(5, True, "done")])
        self.assertEqual(self.driver.pending, 0)

    def test_a_plain_function_returns_at_once(self):
        self.assertEqual(self.driver.start(1, len, ([1, 2],), None), (False, 2))

    def test_a_call_past_its_limit_is_cancelled_as_timeout(self):
        self.driver.start(2, self.wait, (60, None), 0.01)
        finished = []
        while not finished:
            finished = self.driver.turn(True)
        self.assertEqual(finished, [(2, False, "timeout")])

    def test_a_call_that_ends_past_its_limit_is_a_timeout_however_it_ends(self):
        worker.run_code(
            textwrap.dedent(
                """
                import time
                async def busy(seconds):
                    time.sleep(seconds)  # no await: the limit cannot cancel it
                    return "late"
                async def stubborn():
                    try:
                        await asyncio.sleep(60)
                    except asyncio.CancelledError:
                        return "went on"
                """
            ),
            self.namespace,
        )
        self.driver.start(6, self.namespace["busy"], (0.05,), 0.01)
        self.driver.start(7, self.namespace["stubborn"], (), 0.01)
        finished = []
        while len(finished) < 2:
            finished += self.driver.turn(True)
        self.assertEqual(sorted(finished), [(6, False, "timeout"), (7, False, "timeout")])

    def test_a_call_that_ended_in_time_is_not_late_for_a_slow_done_callback(self):
        # `quick` ends at 10 ms, inside its 50 ms limit; `hog` then keeps
        # the loop (no await) past that limit before the done callbacks run.
        worker.run_code(
            textwrap.dedent(
                """
                import time
                async def quick():
                    await asyncio.sleep(0.01)
                    return "in time"
                async def hog():
                    await asyncio.sleep(0.01)
                    time.sleep(0.1)
                """
            ),
            self.namespace,
        )
        self.driver.start(8, self.namespace["quick"], (), 0.05)
        self.driver.start(9, self.namespace["hog"], (), None)
        finished = []
        while len(finished) < 2:
            finished += self.driver.turn(True)
        self.assertIn((8, True, "in time"), finished)

    def test_a_write_to_the_wake_fd_ends_a_blocking_turn(self):
        self.driver.start(3, self.wait, (60, None), None)
        self.wake_write.send(b"x")
        self.assertEqual(self.driver.turn(True), [])

    def finish_all(self, count):
        finished = []
        while len(finished) < count:
            finished += self.driver.turn(True)
        return finished

    def test_an_awaitable_scheduled_as_made_finishes_under_its_token(self):
        self.driver.schedule("mine", self.wait(0.01, "done"), None)
        self.driver.schedule(11, self.wait(0, "limited"), 5.0)
        self.assertEqual(self.driver.pending, 2)
        self.assertCountEqual(self.finish_all(2), [(11, True, "limited"), ("mine", True, "done")])
        self.assertEqual((self.driver.pending, self.driver.tasks), (0, {}))

    def test_a_scheduled_call_past_its_limit_is_a_timeout(self):
        self.driver.schedule(12, self.wait(60, None), 0.01)
        self.assertEqual(self.finish_all(1), [(12, False, "timeout")])

    def test_cancel_stops_a_pending_call_at_its_await_point(self):
        worker.run_code(
            textwrap.dedent(
                """
                unwound = []
                async def guarded(token):
                    try:
                        await asyncio.sleep(60)
                    finally:
                        unwound.append(token)
                """
            ),
            self.namespace,
        )
        guarded = self.namespace["guarded"]
        self.driver.schedule(13, guarded(13), None)
        self.driver.start(14, guarded, (14,), 30.0)
        self.driver.turn(False)  # both reach their await
        self.assertTrue(self.driver.cancel(13))
        self.assertTrue(self.driver.cancel(14))
        self.assertEqual(sorted(self.finish_all(2)), [(13, False, "cancelled"), (14, False, "cancelled")])
        self.assertEqual(sorted(self.namespace["unwound"]), [13, 14])
        self.assertEqual(self.driver.tasks, {})

    def test_cancel_of_a_call_not_pending_is_false(self):
        self.assertFalse(self.driver.cancel(15))
        self.driver.schedule(15, self.wait(0, "quick"), None)
        self.assertEqual(self.finish_all(1), [(15, True, "quick")])
        self.assertFalse(self.driver.cancel(15))
        self.assertEqual(self.driver.turn(False), [])

    def test_a_call_that_catches_its_cancellation_goes_on(self):
        worker.run_code(
            textwrap.dedent(
                """
                async def stubborn():
                    try:
                        await asyncio.sleep(60)
                    except asyncio.CancelledError:
                        return "went on"
                """
            ),
            self.namespace,
        )
        self.driver.schedule(16, self.namespace["stubborn"](), None)
        self.driver.turn(False)
        self.assertTrue(self.driver.cancel(16))
        self.assertEqual(self.finish_all(1), [(16, True, "went on")])

    def test_user_code_may_run_the_loop_while_a_call_is_pending(self):
        self.driver.start(4, self.wait, (0, "early"), None)
        self.wake_write.send(b"x")
        loop = self.driver.loop
        self.assertEqual(loop.run_until_complete(self.wait(0.05, "mine")), "mine")
        self.assertEqual(self.driver.turn(True), [(4, True, "early")])


# == serve.py: a ChildWorker in this process =================================


class SpinTests(unittest.TestCase):
    """How the child waits a moment for the next request."""

    def worker_on_a_pipe(self, share):
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        return worker.ChildWorker(read_end, write_end, share=share), write_end

    def test_a_pool_worker_gives_up_its_core_between_looks(self):
        child, requests = self.worker_on_a_pipe(share=True)
        self.assertIs(child.pause, os.sched_yield)
        pauses = []

        def pause():
            # The first pause lets a request in: the spin ends at its next look.
            pauses.append(1)
            os.write(requests, frame(worker.pack([1, "eval", "1"])))

        child.pause = pause
        # Long enough that no preemption ends the spin before its first pause.
        with mock.patch.object(worker, "_SPIN_SECONDS", 5.0):
            self.assertTrue(child._spin())
        self.assertEqual(pauses, [1])

    def test_a_runners_child_keeps_its_core(self):
        child, _ = self.worker_on_a_pipe(share=False)
        self.assertIsNone(child.pause)
        self.assertFalse(child._spin())  # nothing came, and nothing paused


class QuickCallTests(unittest.TestCase):
    """`call` requests that the pure codec's child decodes and runs itself."""

    def setUp(self):
        requests_in, self.requests = os.pipe()
        self.replies, replies_out = os.pipe()
        for fd in (requests_in, self.requests, self.replies, replies_out):
            self.addCleanup(os.close, fd)
        self.child = worker.ChildWorker(requests_in, replies_out)
        self.assertTrue(self.child.quick_calls)
        # The general decoder must not see these requests.
        self.child._decode_request = mock.Mock(side_effect=AssertionError("not a quick call"))
        self.child.globals["add"] = lambda a, b: a + b

    def handle(self, *requests):
        for request in requests:
            self.child.inbox += frame(worker.pack(request))
        self.child._handle_frames()
        data = os.read(self.replies, 1 << 16)
        replies = []
        while data:
            (size,) = struct.unpack(">I", data[:4])
            replies.append(worker.unpack(data[4 : 4 + size]))
            data = data[4 + size :]
        return replies

    def test_a_call_is_answered(self):
        self.assertEqual(self.handle([1, "call", "add", [1, 2]], [300, "call", "add", ["a", "b"]]), [[1, "ok", 3], [300, "ok", "ab"]])

    def test_an_error_is_answered_and_the_child_goes_on(self):
        (reply,) = self.handle([1, "call", "add", [1]])
        self.assertEqual(reply[:3], [1, "err", "TypeError"])
        self.assertEqual(self.handle([2, "call", "add", [2, 2]]), [[2, "ok", 4]])

    def test_an_interrupt_during_a_call_is_its_error_and_nothing_runs_after(self):
        def interrupted():
            # What SIGINT does while the call runs.
            self.child.on_interrupt(signal.SIGINT, None)

        self.child.globals["slow"] = interrupted
        (reply,) = self.handle([1, "call", "slow", []], [2, "call", "add", [1, 1]])
        self.assertEqual(reply[:3], [1, "err", "KeyboardInterrupt"])
        self.assertTrue(self.child.interrupted)
        self.assertIsNone(self.child.running)
        # Between calls, the signal is ignored.
        self.child.on_interrupt(signal.SIGINT, None)


INVOKE_SOURCE = textwrap.dedent(
    """
    import asyncio, math, time
    state = []
    def add(a, b):
        return a + b
    def kw(a, b=2, *, c, d=4):
        return [a, b, c, d]
    def echo(x):
        return x
    def blobs():
        return {"b": b"\\x00\\xff", "l": [bytearray(b"ab"), memoryview(b"cd")], "n": float("nan"), "s": {1}}
    def huge():
        return [1, 2**64]
    def numbers():
        yield 1
    def started():
        def gen():
            try:
                yield 1
            finally:
                state.append("closed")
        items = gen()
        next(items)
        return items
    async def agen():
        yield 1
    async def later(value, seconds=0):
        await asyncio.sleep(seconds)
        return value
    async def guarded(name):
        state.append(name + " started")
        try:
            await asyncio.sleep(60)
        finally:
            state.append(name + " unwound")
    def slow_maker(seconds):
        time.sleep(seconds)
        return later("never")
    def future():
        made = asyncio.get_event_loop().create_future()
        made.set_result("from a future")
        return made
    """
)


def read_frames(fd):
    """Every whole frame waiting on a non-blocking fd, unpacked."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    frames = []
    while data:
        (size,) = struct.unpack(">I", data[:4])
        frames.append(worker.unpack(data[4 : 4 + size]))
        data = data[4 + size :]
    return frames


class InvokeTests(unittest.TestCase):
    """`invoke` and `cancel` handled by a ChildWorker in this process, with
    the pure codec (whose fast decoder takes the invokes the parent writes)."""

    def codec(self):
        return (worker.pack, worker.unpack, worker.pack_typed)

    def setUp(self):
        requests_in, requests = os.pipe()
        self.replies, replies_out = os.pipe()
        for fd in (requests_in, requests, self.replies, replies_out):
            self.addCleanup(os.close, fd)
        os.set_blocking(self.replies, False)
        self.child = worker.ChildWorker(requests_in, replies_out, *self.codec())
        self.addCleanup(self.child.close)
        worker.run_code(INVOKE_SOURCE, self.child.globals)
        self.state = self.child.globals["state"]

    def handle(self, *frames):
        """Replies (and other frames, output marks aside) to these frames."""
        for each in frames:
            self.child.inbox += each if isinstance(each, bytes) else frame(packed(each))
        self.child._handle_frames()
        return [reply for reply in read_frames(self.replies) if reply != ["out"]]

    def turn(self, count, timeout=REPLY_TIMEOUT):
        """Turns the event loop until `count` replies have come."""
        deadline = time.monotonic() + timeout
        replies = []
        while len(replies) < count:
            self.assertLess(time.monotonic(), deadline, "replies so far: %r" % replies)
            self.child._turn_loop(block=False)
            replies += [reply for reply in read_frames(self.replies) if reply != ["out"]]
            time.sleep(0.001)
        return replies

    def test_args_and_kwargs_reach_the_function(self):
        self.assertEqual(self.handle(invoke(1, "add", [1, 2])), [[1, "ok", 3]])
        self.assertEqual(self.handle(invoke(2, "add", [], {"b": 2, "a": 1})), [[2, "ok", 3]])
        self.assertEqual(self.handle(invoke(3, "kw", [1], {"c": 3})), [[3, "ok", [1, 2, 3, 4]]])
        self.assertEqual(self.handle(invoke(4, "kw", [1, 5], {"c": 3, "d": 6}, True, 2.5)), [[4, "data", [1, 5, 3, 6]]])
        self.assertEqual(self.handle(invoke(5, "echo", [b"\x00\xff"])), [[5, "ok", [0, 255]]])

    def test_a_wrong_keyword_is_pythons_own_type_error(self):
        (reply,) = self.handle(invoke(1, "kw", [1], {"c": 3, "e": 5}))
        self.assertEqual(reply[:3], [1, "err", "TypeError"])
        self.assertIn("'e'", reply[3])
        (reply,) = self.handle(invoke(2, "kw", [1, 2, 3], {}))
        self.assertEqual(reply[:3], [2, "err", "TypeError"])
        self.assertEqual(self.handle(invoke(3, "add", [2, 2])), [[3, "ok", 4]])

    def test_a_typed_result_sends_bytes_as_bin(self):
        typed = {"b": b"\x00\xff", "l": [b"ab", b"cd"], "n": None, "s": [1]}
        self.assertEqual(self.handle(invoke(1, "blobs", typed=True)), [[1, "data", typed]])
        plain = {"b": [0, 255], "l": [[97, 98], [99, 100]], "n": None, "s": [1]}
        self.assertEqual(self.handle(invoke(2, "blobs")), [[2, "ok", plain]])
        big = [3, "conv", "int of 65 bits does not fit in a 64-bit integer (i64 or u64)"]
        self.assertEqual(self.handle(invoke(3, "huge", typed=True)), [big])

    def test_a_generator_is_refused_and_closed(self):
        self.assertEqual(
            self.handle(invoke(1, "numbers"), invoke(2, "started", typed=True), invoke(3, "agen")),
            [
                [1, "conv", "numbers returned a generator; read its items with .stream()"],
                [2, "conv", "started returned a generator; read its items with .stream()"],
                [3, "conv", "agen returned an async generator; read its items with .stream()"],
            ],
        )
        self.assertEqual(self.state, ["closed"])

    def test_an_awaitable_result_is_awaited_after_an_awaiting_message(self):
        self.assertEqual(self.handle(invoke(1, "later", ["plain"])), [["awaiting", 1]])
        self.assertEqual(self.turn(1), [[1, "ok", "plain"]])
        self.assertEqual(self.handle(invoke(2, "later", [b"\x01"], {"seconds": 0.01}, True, 5.0)), [["awaiting", 2]])
        self.assertEqual(self.turn(1), [[2, "data", b"\x01"]])
        self.assertEqual(self.handle(invoke(3, "future", typed=True)), [["awaiting", 3]])
        self.assertEqual(self.turn(1), [[3, "data", "from a future"]])
        self.assertEqual(self.child.typed_coroutines, set())

    def test_an_awaitable_past_its_limit_is_a_timeout(self):
        self.assertEqual(self.handle(invoke(1, "later", [None, 60], {}, False, 0.05)), [["awaiting", 1]])
        self.assertEqual(self.turn(1), [[1, "timeout"]])

    def test_a_limit_the_call_used_up_is_a_timeout_at_once(self):
        import gc
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.assertEqual(self.handle(invoke(1, "slow_maker", [0.05], {}, True, 0.01)), [[1, "timeout"]])
            gc.collect()
        self.assertEqual([str(warning.message) for warning in caught], [])
        self.assertIsNone(self.child.driver)

    def test_cancel_stops_a_pending_coroutine_at_its_await_point(self):
        self.assertEqual(self.handle(invoke(1, "guarded", ["invoked"], typed=True)), [["awaiting", 1]])
        self.assertEqual(self.handle([2, "call_async", "guarded", ["awaited"], None]), [])
        self.child._turn_loop(block=False)
        self.assertEqual(self.state, ["invoked started", "awaited started"])
        self.assertEqual(self.handle(["cancel", 1], ["cancel", 2]), [])
        replies = self.turn(2)
        for request_id in (1, 2):
            self.assertIn([request_id, "err", "CancelledError", "the coroutine was cancelled", None], replies)
        self.assertEqual(self.state[2:], ["invoked unwound", "awaited unwound"])
        self.assertEqual((self.child.driver.pending, self.child.driver.tasks, self.child.typed_coroutines), (0, {}, set()))

    def test_a_cancel_of_nothing_pending_is_ignored(self):
        with mock.patch.object(worker, "_say") as say:
            self.assertEqual(self.handle(["cancel", 1], [2, "eval", "1"]), [[2, "ok", 1]])
            say.assert_not_called()
            self.assertEqual(self.handle(invoke(3, "later", ["done"])), [["awaiting", 3]])
            self.assertEqual(self.turn(1), [[3, "ok", "done"]])
            self.assertEqual(self.handle(["cancel", 3], ["cancel", 3], [4, "eval", "2"]), [[4, "ok", 2]])
            say.assert_not_called()
            # Malformed: a line on stderr, and still no reply.
            self.assertEqual(self.handle(["cancel"], ["cancel", "3"], ["cancel", 3, 4], [5, "eval", "3"]), [[5, "ok", 3]])
        self.assertEqual(say.call_count, 3)
        self.assertIn("cancel", say.call_args[0][0])

    def test_malformed_invokes_get_a_protocol_error(self):
        for request in [
            [1, "invoke", "add", [], {}, False],
            [2, "invoke", "add", [], {}, "yes", None],
            [3, "invoke", "add", [], {}, True, -1.0],
            [4, "invoke", "add", {}, {}, True, None],
            [5, "invoke", "add", [], [], True, None],
            [6, "invoke", 5, [], {}, True, None],
            [7, "invoke", "add", [], {}, True, None, None],
        ]:
            with self.subTest(request=request):
                (reply,) = self.handle(request)
                self.assertEqual(reply[:3], [request[0], "err", "ProtocolError"])
                self.assertIn("invoke takes [id, 'invoke', str, list, dict, bool, limit]", reply[3])
        # A key that is not a str, written by hand ({1: 2}).
        (reply,) = self.handle(frame(b"\x97\x08\xa6invoke\xa3add\x90\x81\x01\x02\xc2\xc0"))
        self.assertEqual(reply[:3], [8, "err", "ProtocolError"])

    def test_an_interrupt_during_the_call_is_its_error_and_nothing_runs_after(self):
        def interrupted():
            self.assertEqual(self.child.running, 1)
            self.child.on_interrupt(signal.SIGINT, None)

        self.child.globals["slow"] = interrupted
        (reply,) = self.handle(invoke(1, "slow"), invoke(2, "add", [1, 1]))
        self.assertEqual(reply[:3], [1, "err", "KeyboardInterrupt"])
        self.assertTrue(self.child.interrupted)
        self.assertIsNone(self.child.running)


STREAM_SOURCE = textwrap.dedent(
    """
    import asyncio, time
    state = []
    def numbers(count):
        for i in range(count):
            state.append(i)
            yield i
    def guarded(count):
        try:
            yield from range(count)
        finally:
            state.append("closed")
    def failing():
        yield 1
        raise ValueError("bad item")
    def blobs():
        yield b"\\x00\\xff"
        yield {"k": bytearray(b"ab")}
    def huge():
        try:
            yield 1
            yield 2**64
        finally:
            state.append("closed")
    def sleepy(seconds):
        try:
            yield "first"
            time.sleep(seconds)
            yield "second"
        finally:
            state.append("closed")
    def plain():
        return 5
    async def coroutine():
        return 5
    async def agen(count, pause=0):
        try:
            for i in range(count):
                await asyncio.sleep(pause)
                state.append(i)
                yield i
        finally:
            state.append("aclosed")
    """
)


def stream(request_id, name, args=(), typed=False, limit=None, credit=256):
    """A stream request as the parent writes it."""
    return WithBin([request_id, "stream", name, list(args), {}, typed, limit, credit])


class StreamTests(unittest.TestCase):
    """`stream`, `more` and `cancel` of streams, handled by a ChildWorker
    in this process (set up as InvokeTests's)."""

    codec = InvokeTests.codec
    handle = InvokeTests.handle

    def setUp(self):
        InvokeTests.setUp(self)
        worker.run_code(STREAM_SOURCE, self.child.globals)
        self.state = self.child.globals["state"]

    def pump(self, rounds=50):
        """Lets the sync streams and the event loop run; the frames written."""
        frames = []
        for _ in range(rounds):
            if self.child.ready:
                self.child._pump_streams()
            if self.child.driver is not None and self.child.driver.pending:
                self.child._turn_loop(block=False)
            frames += [reply for reply in read_frames(self.replies) if reply != ["out"]]
            if not self.child.ready and (self.child.driver is None or not self.child.driver.pending):
                break
            time.sleep(0.001)
        return frames

    def test_items_follow_the_streaming_note_then_the_end(self):
        self.assertEqual(self.handle(stream(1, "numbers", [3])), [["streaming", 1, False]])
        self.assertEqual(self.pump(), [[1, "item", 0], [1, "item", 1], [1, "item", 2], [1, "ok", None]])
        self.assertEqual(self.child.streams, {})
        self.assertEqual(self.child.ready, [])

    def test_any_iterable_streams_and_a_plain_value_is_a_conversion_error(self):
        self.assertEqual(self.handle(stream(1, "echo", [[4, 5]])), [["streaming", 1, False]])
        self.assertEqual(self.pump(), [[1, "item", 4], [1, "item", 5], [1, "ok", None]])
        self.assertEqual(
            self.handle(stream(2, "plain"), stream(3, "coroutine")),
            [
                [2, "conv", "plain returned int, which is not iterable; read its result with .await"],
                [3, "conv", "coroutine returned an awaitable; read its result with .await"],
            ],
        )

    def test_the_credit_bounds_what_is_made_and_more_extends_it(self):
        self.assertEqual(self.handle(stream(1, "numbers", [10], credit=3)), [["streaming", 1, False]])
        self.assertEqual(self.pump(), [[1, "item", 0], [1, "item", 1], [1, "item", 2]])
        self.assertEqual(self.state, [0, 1, 2])
        self.assertEqual(self.handle(["more", 1, 2], ["more", 1, 5]), [])
        self.assertEqual(self.pump(), [[1, "item", 3], [1, "item", 4]])
        self.assertEqual(self.state, [0, 1, 2, 3, 4])

    def test_a_request_runs_while_a_stream_waits_for_credit(self):
        self.assertEqual(self.handle(stream(1, "numbers", [10], credit=1)), [["streaming", 1, False]])
        self.assertEqual(self.pump(), [[1, "item", 0]])
        self.assertEqual(self.handle([2, "eval", "len(state)"]), [[2, "ok", 1]])

    def test_an_exception_ends_the_stream_after_its_items(self):
        self.handle(stream(1, "failing"))
        frames = self.pump()
        self.assertEqual(frames[0], [1, "item", 1])
        self.assertEqual(frames[1][:4], [1, "err", "ValueError", "bad item"])
        self.assertEqual(len(frames), 2)

    def test_a_cancel_closes_the_generator(self):
        self.handle(stream(1, "guarded", [100], credit=2))
        self.assertEqual(self.pump(), [[1, "item", 0], [1, "item", 1]])
        self.assertEqual(self.handle(["cancel", 1]), [[1, "ok", None]])
        self.assertEqual(self.state, ["closed"])
        self.assertEqual(self.handle(["more", 1, 50]), [])
        self.assertEqual(self.pump(), [])

    def test_typed_items_keep_bytes_and_an_item_that_does_not_pack_ends_it(self):
        self.handle(stream(1, "blobs", typed=True))
        self.assertEqual(self.pump(), [[1, "item_data", b"\x00\xff"], [1, "item_data", {"k": b"ab"}], [1, "ok", None]])
        self.handle(stream(2, "blobs"))
        self.assertEqual(self.pump(), [[2, "item", [0, 255]], [2, "item", {"k": [97, 98]}], [2, "ok", None]])
        self.handle(stream(3, "huge"))
        self.assertEqual(
            self.pump(), [[3, "item", 1], [3, "conv", "int of 65 bits does not fit in a 64-bit integer (i64 or u64)"]]
        )
        self.assertEqual(self.state, ["closed"])

    def test_an_item_past_its_limit_ends_the_stream_with_a_timeout(self):
        self.handle(stream(1, "sleepy", [30], limit=0.1))
        started = time.monotonic()
        self.assertEqual(self.pump(), [[1, "item", "first"], [1, "timeout"]])
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(self.state, ["closed"])
        self.assertEqual(signal.getsignal(signal.SIGALRM), signal.SIG_DFL)

    def test_held_items_go_out_while_the_next_one_is_slow(self):
        seen = []

        def peek():
            yield 0  # the first item goes out at once
            yield 1
            yield 2
            time.sleep(0.05)  # SIGALRM writes out 1 and 2 meanwhile
            seen.extend(reply for reply in read_frames(self.replies) if reply != ["out"])
            yield 3

        self.child.globals["peek"] = peek
        self.assertEqual(self.handle(stream(1, "peek")), [["streaming", 1, False]])
        self.assertEqual(self.pump(), [[1, "item", 3], [1, "ok", None]])
        self.assertEqual(seen, [[1, "item", 0], [1, "item", 1], [1, "item", 2]])
        self.assertEqual(signal.getsignal(signal.SIGALRM), signal.SIG_DFL)
        self.assertEqual(signal.getitimer(signal.ITIMER_REAL), (0.0, 0.0))

    def test_an_item_timeout_that_falls_while_held_items_are_written_leaves_whole_frames(self):
        big = "x" * 100_000

        def bulky():
            try:
                yield 0  # the first item goes out at once
                for _ in range(3):
                    yield big  # held: more than the pipe takes
                time.sleep(30)  # SIGALRM writes them out, and the limit passes meanwhile
                yield "late"
            finally:
                self.state.append("closed")

        self.child.globals["bulky"] = bulky
        self.assertEqual(self.handle(stream(1, "bulky", limit=0.1)), [["streaming", 1, False]])
        data = bytearray()
        done = threading.Event()

        def parent():
            time.sleep(0.5)  # the write waits for room past the item's limit
            while True:
                try:
                    data.extend(os.read(self.replies, 1 << 16))
                except BlockingIOError:
                    if done.is_set():
                        return
                    time.sleep(0.001)

        reader = threading.Thread(target=parent)
        reader.start()
        try:
            while self.child.ready:
                self.child._pump_streams()
        finally:
            done.set()
            reader.join()
        frames = []
        while data:
            (size,) = struct.unpack(">I", data[:4])
            self.assertLessEqual(4 + size, len(data), "half a frame was written")
            frames.append(worker.unpack(bytes(data[4 : 4 + size])))
            del data[: 4 + size]
        frames = [each for each in frames if each != ["out"]]
        self.assertEqual(frames, [[1, "item", 0]] + [[1, "item", big]] * 3 + [[1, "timeout"]])
        self.assertEqual(self.state, ["closed"])
        self.assertEqual(self.handle([2, "eval", "1"]), [[2, "ok", 1]])
        self.assertEqual(signal.getsignal(signal.SIGALRM), signal.SIG_DFL)

    def test_a_sync_stream_s_slice_names_its_stream_and_leaves_the_last_coroutine_alone(self):
        replies_out = self.child.proto_out

        class PipeRing:
            """Counters as the ring's, replies on the pipe as before."""

            counters = memoryview(bytearray(worker.RING_DATA)).cast("Q")

            def put(self, data, doorbell):
                os.write(replies_out, data)
                return True

        counters = PipeRing.counters
        self.child.ring = PipeRing()
        counters[worker._COUNTER_LAST_COROUTINE] = 20  # started after stream 5 opened
        seen = []

        def watched():
            for item in range(2):
                seen.append((counters[worker._COUNTER_IN_LOOP], counters[worker._COUNTER_MAKING]))
                yield item

        self.child.globals["watched"] = watched
        self.assertEqual(self.handle(stream(5, "watched")), [["streaming", 5, False]])
        self.assertEqual(self.pump(), [[5, "item", 0], [5, "item", 1], [5, "ok", None]])
        self.assertEqual(seen, [(worker.RING_IN_STREAM, 5)] * 2)
        self.assertEqual(counters[worker._COUNTER_IN_LOOP], 0)
        self.assertEqual(counters[worker._COUNTER_LAST_COROUTINE], 20)

    def test_a_late_sigint_for_the_stream_s_own_call_does_not_reach_its_items(self):
        fd = os.memfd_create("ring-test")
        self.addCleanup(os.close, fd)
        os.ftruncate(fd, worker.RING_DATA + worker.RING_SIZE)
        ring = worker.ReplyRing("/proc/self/fd/%d" % fd)
        replies_out = self.child.proto_out
        ring.put = lambda data, doorbell: os.write(replies_out, data) > 0
        self.child.ring = ring
        previous = signal.signal(signal.SIGINT, self.child.on_interrupt)
        self.addCleanup(signal.signal, signal.SIGINT, previous)

        def interrupted():
            yield 0
            # The parent's SIGINT for call 1 (its function ran past its
            # limit) lands only now, in the stream's items.
            ring.counters[worker._COUNTER_INTERRUPT_TARGET] = 1
            signal.raise_signal(signal.SIGINT)
            yield 1
            try:
                signal.raise_signal(signal.SIGINT)  # the user's own
            except KeyboardInterrupt:
                yield "own"

        self.child.globals["interrupted"] = interrupted
        self.assertEqual(self.handle(stream(1, "interrupted")), [["streaming", 1, False]])
        self.assertEqual(self.pump(), [[1, "item", 0], [1, "item", 1], [1, "item", "own"], [1, "ok", None]])
        self.assertFalse(self.child.interrupted)
        self.assertEqual(ring.counters[worker._COUNTER_INTERRUPT_TAKEN], 0)

    def test_a_user_s_pending_alarm_and_its_handler_outlive_a_stream(self):
        fired = []
        previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
        self.addCleanup(signal.signal, signal.SIGALRM, previous)
        self.addCleanup(signal.setitimer, signal.ITIMER_REAL, 0)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        self.handle(stream(1, "numbers", [100]))
        frames = self.pump()
        self.assertEqual(frames, [[1, "item", i] for i in range(100)] + [[1, "ok", None]])
        self.assertGreater(signal.getitimer(signal.ITIMER_REAL)[0], 0)
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(fired, [signal.SIGALRM])

    def test_a_generator_that_installs_its_own_sigalrm_handler_keeps_it(self):
        fired = []

        def own_alarm():
            signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            yield 0
            time.sleep(0.3)  # its own alarm rings its own handler
            yield bool(fired)
            yield 2

        self.addCleanup(signal.signal, signal.SIGALRM, signal.SIG_DFL)
        self.addCleanup(signal.setitimer, signal.ITIMER_REAL, 0)
        self.child.globals["own_alarm"] = own_alarm
        self.handle(stream(1, "own_alarm", limit=5))
        self.assertEqual(self.pump(), [[1, "item", 0], [1, "item", True], [1, "item", 2], [1, "ok", None]])
        self.assertIsNot(signal.getsignal(signal.SIGALRM), signal.SIG_DFL)
        self.assertEqual(signal.getitimer(signal.ITIMER_REAL), (0.0, 0.0))
        # The next stream leaves that handler alone too.
        del fired[:]
        self.handle(stream(2, "numbers", [3]))
        self.assertEqual(self.pump(), [[2, "item", 0], [2, "item", 1], [2, "item", 2], [2, "ok", None]])
        self.assertEqual(fired, [])

    def test_a_timer_the_generator_cancels_is_armed_again_for_the_next_items(self):
        def cancels():
            try:
                yield 0
                signal.setitimer(signal.ITIMER_REAL, 0)
                time.sleep(0.05)  # slow, and no ring comes
                yield 1
                time.sleep(30)  # past its limit: the ticks are back
                yield "late"
            finally:
                self.state.append("closed")

        self.child.globals["cancels"] = cancels
        self.handle(stream(1, "cancels", limit=0.5))
        self.assertEqual(self.pump(), [[1, "item", 0], [1, "item", 1], [1, "timeout"]])
        self.assertEqual(self.state, ["closed"])
        self.assertEqual(signal.getsignal(signal.SIGALRM), signal.SIG_DFL)
        self.assertEqual(signal.getitimer(signal.ITIMER_REAL), (0.0, 0.0))

    def test_a_close_that_blocks_ends_at_the_stream_s_limit(self):
        def stuck_close():
            try:
                while True:
                    yield 1
            finally:
                try:
                    time.sleep(30)
                finally:
                    self.state.append("closed")

        self.child.globals["stuck_close"] = stuck_close
        self.handle(stream(1, "stuck_close", limit=0.2, credit=2))
        self.assertEqual(self.pump(), [[1, "item", 1], [1, "item", 1]])
        self.assertEqual(self.handle(["cancel", 1]), [[1, "timeout"]])
        self.assertEqual(self.state, ["closed"])
        self.assertEqual(signal.getsignal(signal.SIGALRM), signal.SIG_DFL)
        self.assertEqual(signal.getitimer(signal.ITIMER_REAL), (0.0, 0.0))

    def test_an_async_generator_streams_and_a_cancel_acloses_it(self):
        self.assertEqual(self.handle(stream(1, "agen", [3])), [["streaming", 1, True]])
        self.assertEqual(self.pump(), [[1, "item", 0], [1, "item", 1], [1, "item", 2], [1, "ok", None]])
        self.assertEqual(self.state, [0, 1, 2, "aclosed"])
        del self.state[:]
        self.handle(stream(2, "agen", [100], credit=2))
        frames = []
        while len(frames) < 2:
            frames += self.pump(rounds=1)
        self.assertEqual(frames, [[2, "item", 0], [2, "item", 1]])
        self.handle(["cancel", 2])
        self.assertEqual(self.pump(), [[2, "ok", None]])
        self.assertEqual(self.state, [0, 1, "aclosed"])

    def test_an_async_item_past_its_limit_ends_the_stream_with_a_timeout(self):
        self.handle(stream(1, "agen", [3, 30], limit=0.05))
        self.assertEqual(self.pump(rounds=2000), [[1, "timeout"]])
        self.assertEqual(self.state, ["aclosed"])

    def test_malformed_streams_and_mores(self):
        for request in [
            [1, "stream", "numbers", [1], {}, False, None],
            [2, "stream", "numbers", [1], {}, False, None, -1],
            [3, "stream", "numbers", [1], {}, False, None, 1.0],
        ]:
            with self.subTest(request=request):
                (reply,) = self.handle(request)
                self.assertEqual(reply[:3], [request[0], "err", "ProtocolError"])
        with mock.patch.object(worker, "_say") as say:
            self.assertEqual(self.handle(["more", 1], ["more", "1", 2], [4, "eval", "1"]), [[4, "ok", 1]])
        self.assertEqual(say.call_count, 2)


class QuickInvokeTests(InvokeTests):
    """The invokes the parent writes never reach the general decoder."""

    def setUp(self):
        super().setUp()
        self.assertTrue(self.child.quick_calls)
        general = self.child._decode_request

        def decode(frame_bytes):
            request = worker.unpack(frame_bytes)
            shaped = type(request) is list and len(request) == 7 and request[1] == "invoke" and type(request[6]) in (float, type(None))
            if shaped and worker._request_problem(request) is None and len(request[2].encode()) < 32:
                raise AssertionError("a quick invoke took the general decoder: %r" % (request,))
            return general(frame_bytes)

        self.child._decode_request = decode


class InvokeOnMsgpackTests(InvokeTests):
    """The same, with the C `msgpack` package's codec (the general decoder)."""

    def codec(self):
        codec = worker._msgpack_codec()
        if codec is None:
            self.skipTest("no msgpack package in this interpreter (set ASYNC_PY_TEST_PYTHONS to a venv with it)")
        return codec


class StreamOnMsgpackTests(StreamTests):
    """StreamTests with the C `msgpack` package's codec."""

    codec = InvokeOnMsgpackTests.codec


class InvokeDecoderTests(unittest.TestCase):
    """_invoke_request, the fast decoder, agrees with the general one."""

    def general(self, data):
        request = worker.unpack(data)
        self.assertIsNone(worker._request_problem(request))
        return (request[0],) + tuple(request[2:])

    def test_the_shapes_the_parent_writes_decode_alike(self):
        requests = [
            [request_id, "invoke", name, args, kwargs, typed, limit]
            for request_id in (0, 0x7F, 0x80, 0xFFFF, 0x10000, 2**32, 2**64 - 1)
            for name, args, kwargs in [
                ("f", [], {}),
                ("pkg.mod.fn", [1, "a", None, [2.5, {"k": True}]], {"x": 1, "y": [b"\x00"]}),
                ("n" * 31, [b"\x00" * 300, bytearray(70000)], {"blob": b"\xff" * 20}),
                ("many", list(range(20)), {"k%d" % i: i for i in range(20)}),
                ("huge", [list(range(70000))], {}),
            ]
            for typed in (False, True)
            for limit in (None, 0.0, 1.5)
        ]
        for request in requests:
            data = bytearray(worker.pack_typed(request))
            with self.subTest(request=repr(request)[:80]):
                quick = worker._invoke_request(data)
                self.assertIsNotNone(quick)
                self.assertEqual(quick, self.general(data))

    def test_other_shapes_take_the_general_decoder(self):
        for data in [
            worker.pack([1, "invoke", "n" * 32, [], {}, False, None]),  # a str 8 name
            worker.pack([1, "invoke", "f", [], {}, False, 5]),  # an int limit
            worker.pack([1, "invoke", "f", [], {}, False, -1.0]),
            worker.pack([1, "invoke", "f", [], {}, False, float("inf")]) [:-9] + b"\xcb" + struct.pack(">d", float("inf")),
            worker.pack([1, "invoke", "f", [], {}, 1, None]),
            worker.pack([1, "invoke", "f", {}, {}, False, None]),
            worker.pack([1, "invoke", "f", [], [], False, None]),
            worker.pack([1, "call", "f", [], {}, False, None]),
            worker.pack([-1, "invoke", "f", [], {}, False, None]),
            b"\x97\x01\xa6invoke\xa1f\x90\x81\x01\x02\xc2\xc0",  # a key that is not a str
            b"\x97\x01\xa6invoke\xa1f\x90\x80\xc2\xc0\xc0",  # a byte after it
            b"\x97\x01\xa6invoke\xa1f\x90\x80\xc2\xca\x00\x00\x00\x00",  # a float 32 limit
            b"\x97\x01\xa6invoke\xa2\xff\xfe\x90\x80\xc2\xc0",  # a name that is not UTF-8
            b"",
        ]:
            with self.subTest(data=data[:40]):
                self.assertIsNone(worker._invoke_request(bytearray(data)))

    def test_cut_and_mutated_frames_never_decode_as_something_else(self):
        rng = random.Random(99)
        base = worker.pack_typed([300, "invoke", "fn", [1, b"ab", [2.5]], {"k": "v", "b": b"\x00"}, True, 1.5])
        for cut in range(len(base)):
            self.assertIsNone(worker._invoke_request(bytearray(base[:cut])), cut)
        for _ in range(2000):
            data = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            quick = worker._invoke_request(data)
            if quick is not None:
                self.assertEqual(quick, self.general(data), bytes(data))


@unittest.skipUnless(hasattr(os, "memfd_create"), "the reply ring needs memfd (Linux)")
class InterruptTargetTests(unittest.TestCase):
    """With a reply ring, the parent names the request its SIGINT is for."""

    def setUp(self):
        requests_in, requests = os.pipe()
        replies, replies_out = os.pipe()
        fd = os.memfd_create("ring-test")
        for each in (requests_in, requests, replies, replies_out, fd):
            self.addCleanup(os.close, each)
        os.ftruncate(fd, worker.RING_DATA + worker.RING_SIZE)
        self.child = worker.ChildWorker(requests_in, replies_out)
        self.child.ring = worker.ReplyRing("/proc/self/fd/%d" % fd)
        self.counters = self.child.ring.counters
        self.ran = []
        self.child.globals["step"] = self.step

    def step(self, name, target=None):
        """Records that it ran; with a target, the parent's SIGINT comes
        for that request while this one runs."""
        self.ran.append(name)
        if target is not None:
            self.counters[worker._COUNTER_INTERRUPT_TARGET] = target
            self.child.on_interrupt(signal.SIGINT, None)
        return name

    def handle(self, *requests):
        for request in requests:
            self.child.inbox += frame(worker.pack(request))
        self.child._handle_frames()
        taken, published = self.counters[worker._COUNTER_TAKEN], self.counters[worker._COUNTER_PUBLISHED]
        data = self.child.ring.map[worker.RING_DATA + taken : worker.RING_DATA + published]
        self.counters[worker._COUNTER_TAKEN] = published
        replies = []
        while data:
            (size,) = struct.unpack(">I", data[:4])
            replies.append(worker.unpack(data[4 : 4 + size]))
            data = data[4 + size :]
        return replies

    def test_the_request_named_stops_and_nothing_runs_after(self):
        replies = self.handle([7, "call", "step", ["first", 7]], [8, "call", "step", ["second"]])
        self.assertEqual([reply[:3] for reply in replies], [[7, "err", "KeyboardInterrupt"]])
        self.assertEqual(self.ran, ["first"])
        self.assertTrue(self.child.interrupted)
        # The parent reads this before the reply, and so replaces the child.
        self.assertEqual(self.counters[worker._COUNTER_INTERRUPT_TAKEN], 7)

    def test_a_sigint_for_a_request_that_ended_does_not_stop_the_next(self):
        # Request 7 ended just before the SIGINT sent for it came.
        replies = self.handle([7, "call", "step", ["first"]], [8, "call", "step", ["second", 7]], [9, "call", "step", ["third"]])
        self.assertEqual(replies, [[7, "ok", "first"], [8, "ok", "second"], [9, "ok", "third"]])
        self.assertFalse(self.child.interrupted)
        self.assertEqual(self.counters[worker._COUNTER_INTERRUPT_TAKEN], 0)

    def test_a_sigint_for_a_request_that_ended_is_ignored_between_requests(self):
        self.assertEqual(self.handle([7, "call", "step", ["first"]]), [[7, "ok", "first"]])
        self.counters[worker._COUNTER_INTERRUPT_TARGET] = 7
        self.child.on_interrupt(signal.SIGINT, None)
        self.assertFalse(self.child.interrupted)
        self.assertEqual(self.handle([8, "call", "step", ["second"]]), [[8, "ok", "second"]])

    def test_an_invoke_runs_as_a_sync_request_until_its_awaitable_is_scheduled(self):
        import asyncio

        seen = []

        def make(value):
            # The function call is the request's: no loop flag, no coroutine named.
            seen.append((self.child.running, self.counters[worker._COUNTER_IN_LOOP], self.counters[worker._COUNTER_LAST_COROUTINE]))
            return asyncio.sleep(0, value)

        self.child.globals["make"] = make
        self.assertEqual(self.handle([7, "invoke", "make", ["slept"], {}, True, None]), [["awaiting", 7]])
        self.assertEqual(seen, [(7, 0, 0)])
        self.assertEqual(self.counters[worker._COUNTER_LAST_COROUTINE], 7)
        self.addCleanup(self.child.close)
        self.child._turn_loop(block=True)
        self.assertEqual(self.handle(), [[7, "data", "slept"]])

    def test_an_invoke_the_parent_interrupts_stops_and_nothing_runs_after(self):
        replies = self.handle([7, "invoke", "step", ["first", 7], {}, False, None], [8, "invoke", "step", ["second"], {}, False, None])
        self.assertEqual([reply[:3] for reply in replies], [[7, "err", "KeyboardInterrupt"]])
        self.assertEqual(self.ran, ["first"])
        self.assertTrue(self.child.interrupted)
        self.assertEqual(self.counters[worker._COUNTER_INTERRUPT_TAKEN], 7)

    def test_a_sigint_the_code_raised_itself_stops_only_its_request(self):
        # The parent named request 7 long ago; nothing new names request 8.
        self.handle([7, "call", "step", ["first"]], [8, "call", "step", ["second", 7]])
        (reply,) = self.handle([9, "call", "step", ["own", 7]])
        self.assertEqual(reply[:3], [9, "err", "KeyboardInterrupt"])
        self.assertFalse(self.child.interrupted)
        self.assertEqual(self.handle([10, "call", "step", ["after"]]), [[10, "ok", "after"]])
        self.assertEqual(self.counters[worker._COUNTER_INTERRUPT_TAKEN], 0)


@unittest.skipUnless(hasattr(os, "memfd_create"), "the reply ring needs memfd (Linux)")
# == ring.py =================================================================


class ReplyRingTests(unittest.TestCase):
    """The child's end of the reply ring, against a parent played here."""

    def setUp(self):
        fd = os.memfd_create("ring-test")
        self.addCleanup(os.close, fd)
        os.ftruncate(fd, worker.RING_DATA + worker.RING_SIZE)
        self.ring = worker.ReplyRing("/proc/self/fd/%d" % fd)
        self.doorbells = 0

    def doorbell(self):
        self.doorbells += 1
        return True

    def take(self):
        """What the parent would take: every published byte."""
        ring, counters = self.ring, self.ring.counters
        taken, published = counters[worker._COUNTER_TAKEN], counters[worker._COUNTER_PUBLISHED]
        out = bytearray()
        for at in range(taken, published):
            out.append(ring.map[worker.RING_DATA + at % worker.RING_SIZE])
        counters[worker._COUNTER_TAKEN] = published
        return bytes(out)

    def start_at(self, position):
        counters = self.ring.counters
        counters[worker._COUNTER_PUBLISHED] = counters[worker._COUNTER_TAKEN] = position
        self.ring.published = position

    def test_bytes_come_out_as_they_went_in(self):
        self.assertTrue(self.ring.put(b"first", self.doorbell))
        self.assertTrue(self.ring.put(b"second", self.doorbell))
        self.assertEqual(self.take(), b"firstsecond")
        self.assertEqual(self.doorbells, 0)

    def test_a_reply_wraps_at_the_end(self):
        self.start_at(worker.RING_SIZE - 7)
        data = bytes(range(40))
        self.assertTrue(self.ring.put(data, self.doorbell))
        self.assertEqual(self.take(), data)
        self.assertEqual(self.ring.counters[worker._COUNTER_PUBLISHED], worker.RING_SIZE + 33)

    def test_a_doorbell_rings_only_while_the_parent_waits(self):
        self.ring.put(b"quiet", self.doorbell)
        self.assertEqual(self.doorbells, 0)
        self.ring.counters[worker._COUNTER_WAITING] = 1
        self.ring.put(b"loud", self.doorbell)
        self.assertEqual(self.doorbells, 1)

    def test_a_reply_larger_than_the_ring_waits_for_room(self):
        data = os.urandom(worker.RING_SIZE * 2 + 123)
        taken = []

        def parent_takes():
            # The parent wakes on the doorbell and makes room.
            taken.append(self.take())
            return True

        self.assertTrue(self.ring.put(data, parent_takes))
        taken.append(self.take())
        self.assertEqual(b"".join(taken), data)

    def test_a_full_ring_with_no_parent_gives_up(self):
        self.start_at(0)
        self.assertTrue(self.ring.put(b"x" * worker.RING_SIZE, self.doorbell))
        self.assertFalse(self.ring.put(b"one more", lambda: False))


# == the whole worker as a child (serve.py's main, every module) =============


class ChildTests:
    """The worker as a child process; mixed into one TestCase per interpreter."""

    python = None
    launch = "file"

    def setUp(self):
        self.children = []

    def tearDown(self):
        for child in self.children:
            child.finish()

    def start(self, cwd=None, args=()):
        child = Child(self.python, cwd=cwd, launch=self.launch, args=args)
        self.children.append(child)
        hello = child.reply()
        self.assertIsInstance(hello, list, "first frame: %r; stderr:\n%s" % (hello, child.stderr()))
        self.assertEqual(hello[0], "hello")
        return child

    def ok(self, child, request):
        reply = child.request(request)
        self.assertEqual(reply[:2], [request[0], "ok"], "reply %r; stderr:\n%s" % (reply, child.stderr()))
        return reply[2]

    def error(self, child, request):
        reply = child.request(request)
        self.assertEqual(reply[:2], [request[0], "err"], "reply %r" % (reply,))
        self.assertEqual(len(reply), 5)
        return reply[2], reply[3], reply[4]

    # -- start and stop ------------------------------------------------------

    def test_hello_names_the_protocol_version_pid_and_executable(self):
        child = Child(self.python, launch=self.launch)
        self.children.append(child)
        hello = child.reply()
        version = subprocess.check_output(
            [self.python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"], universal_newlines=True
        ).strip()
        self.assertEqual(hello[:4], ["hello", worker.PROTOCOL_VERSION, version, child.process.pid])
        self.assertEqual(os.path.realpath(hello[4]), os.path.realpath(self.python))

    def test_a_pool_worker_takes_its_flag_and_serves_as_any_other(self):
        plain = self.start()
        # As the parent starts one: the flag, then the ring's path (none here).
        shared = self.start(args=["--share-cores", ""])
        for child in (plain, shared):
            self.ok(child, [1, "run", "def add(a, b):\n    return a + b\n"])
            for i in range(200):
                self.assertEqual(self.ok(child, [2 + i, "call", "add", [i, 1]]), i + 1)
        # The flag is the worker's, not the user's, nor taken for a ring's path.
        argv = "__import__('sys').argv"
        self.assertEqual(self.ok(shared, [300, "eval", argv]), self.ok(plain, [300, "eval", argv]))
        self.assertNotIn("reply ring", shared.stderr())

    def test_stop_replies_then_exits_with_status_0(self):
        child = self.start()
        self.assertEqual(child.request([1, "stop"]), [1, "ok", None])
        self.assertEqual(child.wait(), 0)

    def test_requests_after_stop_in_the_same_write_are_not_answered(self):
        child = self.start()
        child.send_raw(frame(worker.pack([1, "stop"])) + frame(worker.pack([2, "eval", "1"])))
        self.assertEqual(child.reply(), [1, "ok", None])
        self.assertEqual(child.wait(), 0)
        self.assertIsInstance(child.reply(), Exited)

    def test_end_of_input_exits_with_status_0(self):
        child = self.start()
        child.close_input()
        self.assertEqual(child.wait(), 0)

    def test_end_of_input_with_a_coroutine_pending_exits_promptly(self):
        child = self.start()
        self.ok(child, [1, "run", "import asyncio\nasync def forever():\n    await asyncio.sleep(3600)\n"])
        child.send([2, "call_async", "forever", [], None])
        time.sleep(0.1)
        child.close_input()
        self.assertEqual(child.wait(5.0), 0)

    # -- every op ------------------------------------------------------------

    def test_run_keeps_globals_between_requests(self):
        child = self.start()
        self.assertIsNone(self.ok(child, [1, "run", "x = 40\ndef f(y):\n    return x + y\n"]))
        self.assertEqual(self.ok(child, [2, "eval", "f(2)"]), 42)
        self.assertEqual(self.ok(child, [3, "eval", "__name__"]), "__main__")

    def test_run_file_puts_its_folder_first_on_sys_path(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        with open(os.path.join(folder, "helper_mod.py"), "w") as f:
            f.write("VALUE = 'from helper'\n")
        script = os.path.join(folder, "script.py")
        with open(script, "w") as f:
            f.write("import sys, helper_mod\nresult = helper_mod.VALUE\nfirst = sys.path[0]\n")
        child = self.start()
        self.assertIsNone(self.ok(child, [1, "run_file", script]))
        self.assertEqual(self.ok(child, [2, "read", "result"]), "from helper")
        self.assertEqual(self.ok(child, [3, "read", "first"]), os.path.realpath(folder))
        self.assertEqual(self.ok(child, [4, "read", "__file__"]), os.path.realpath(script))

    def test_read_follows_dotted_names_and_builtins(self):
        child = self.start()
        self.ok(child, [1, "run", "import os\nclass Box:\n    inner = {'k': [1, 2]}\n"])
        self.assertEqual(self.ok(child, [2, "read", "Box.inner"]), {"k": [1, 2]})
        self.assertEqual(self.ok(child, [3, "read", "os.sep"]), os.sep)
        self.assertEqual(self.ok(child, [4, "read", "len"]), "<built-in function len>")
        kind, message, _ = self.error(child, [5, "read", "missing.name"])
        self.assertEqual((kind, message), ("NameError", "name 'missing' is not defined"))

    def test_names_with_empty_parts_are_errors(self):
        child = self.start()
        self.ok(child, [1, "run", "class Box:\n    inner = 1\n"])
        for request_id, name, kind in (
            (2, "Box..inner", "AttributeError"),
            (3, "Box.", "AttributeError"),
            (4, ".inner", "NameError"),
            (5, "", "NameError"),
        ):
            self.assertEqual(self.error(child, [request_id, "read", name])[0], kind, name)
            self.assertEqual(self.error(child, [request_id + 10, "call", name, []])[0], kind, name)
        self.assertEqual(self.ok(child, [20, "read", "Box.inner"]), 1)

    def test_call_passes_args_and_returns_the_result(self):
        child = self.start()
        self.ok(child, [1, "run", "import math\ndef add(a, b):\n    return a + b\n"])
        self.assertEqual(self.ok(child, [2, "call", "add", [1, 2]]), 3)
        self.assertEqual(self.ok(child, [3, "call", "add", [[1], [None, "x"]]]), [1, None, "x"])
        self.assertEqual(self.ok(child, [4, "call", "math.sqrt", [16]]), 4.0)
        self.assertEqual(self.ok(child, [5, "call", "len", [{"a": 1, "b": 2}]]), 2)

    def test_set_venv_puts_site_packages_first(self):
        venv = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, venv)
        version = subprocess.check_output(
            [self.python, "-c", "import sys; print('python%d.%d' % sys.version_info[:2])"], universal_newlines=True
        ).strip()
        packages = os.path.join(venv, "lib", version, "site-packages")
        os.makedirs(packages)
        with open(os.path.join(packages, "venv_only_mod.py"), "w") as f:
            f.write("WHERE = 'venv'\n")
        child = self.start()
        self.assertIsNone(self.ok(child, [1, "set_venv", venv]))
        self.assertEqual(self.ok(child, [2, "eval", "__import__('venv_only_mod').WHERE"]), "venv")
        self.assertEqual(self.ok(child, [3, "eval", "__import__('sys').path[0]"]), os.path.realpath(packages))
        kind, _, _ = self.error(child, [4, "set_venv", os.path.join(venv, "nowhere")])
        self.assertEqual(kind, "FileNotFoundError")

    def test_call_async_awaits_a_coroutine(self):
        child = self.start()
        self.ok(child, [1, "run", "import asyncio\nasync def twice(x):\n    await asyncio.sleep(0.01)\n    return 2 * x\n"])
        self.assertEqual(self.ok(child, [2, "call_async", "twice", [21], None]), 42)
        self.assertEqual(self.ok(child, [3, "call_async", "twice", [1], 5]), 2)
        self.assertEqual(self.ok(child, [4, "call_async", "len", [[1, 2]], None]), 2)

    def test_call_async_replies_come_back_out_of_order(self):
        child = self.start()
        self.ok(
            child,
            [1, "run", "import asyncio\nasync def wait(seconds, name):\n    await asyncio.sleep(seconds)\n    return name\n"],
        )
        # One write, so both start in the same turn of the loop however
        # slowly this machine runs the test.
        slow = frame(worker.pack([2, "call_async", "wait", [1.0, "slow"], None]))
        fast = frame(worker.pack([3, "call_async", "wait", [0.01, "fast"], None]))
        child.send_raw(slow + fast)
        self.assertEqual(child.reply(), [3, "ok", "fast"])
        self.assertEqual(child.reply(), [2, "ok", "slow"])

    def test_call_async_shares_one_event_loop_between_calls(self):
        child = self.start()
        code = textwrap.dedent(
            """
            import asyncio
            async def wait_for_signal():
                global signal
                signal = asyncio.get_running_loop().create_future()
                print('waiting for the signal')
                return await signal
            def send_signal(value):
                signal.set_result(value)
                return 'sent'
            """
        )
        self.ok(child, [1, "run", code])
        child.send([2, "call_async", "wait_for_signal", [], None])
        child.wait_for_stderr("waiting for the signal")
        self.assertEqual(child.request([3, "call", "send_signal", ["hi"]]), [3, "ok", "sent"])
        self.assertEqual(child.reply(), [2, "ok", "hi"])

    def test_call_async_past_its_limit_replies_timeout(self):
        child = self.start()
        self.ok(child, [1, "run", "import asyncio\nasync def forever():\n    await asyncio.sleep(3600)\n"])
        started = time.monotonic()
        self.assertEqual(child.request([2, "call_async", "forever", [], 0.1]), [2, "timeout"])
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertEqual(self.ok(child, [3, "eval", "'still here'"]), "still here")

    def test_call_async_errors_carry_the_coroutines_traceback(self):
        child = self.start()
        self.ok(child, [1, "run", "async def broken():\n    raise ValueError('bad value')\n"])
        kind, message, trace = self.error(child, [2, "call_async", "broken", [], None])
        self.assertEqual((kind, message), ("ValueError", "bad value"))
        self.assertIn("in broken", trace)

    def test_user_code_may_run_its_own_event_loop(self):
        child = self.start()
        code = "import asyncio\nasync def one():\n    return 1\nresult = asyncio.run(one())\n"
        self.ok(child, [1, "run", code])
        self.assertEqual(self.ok(child, [2, "read", "result"]), 1)
        self.ok(child, [3, "run", "async def two():\n    return 2\n"])
        self.assertEqual(self.ok(child, [4, "call_async", "two", [], None]), 2)

    # -- invoke and cancel ---------------------------------------------------

    def start_with_invoke_source(self):
        child = self.start()
        self.ok(child, [1, "run", INVOKE_SOURCE])
        return child

    def test_invoke_passes_args_and_kwargs(self):
        child = self.start_with_invoke_source()
        self.assertEqual(child.request(invoke(2, "add", [1, 2])), [2, "ok", 3])
        self.assertEqual(child.request(invoke(3, "kw", [1], {"c": 3})), [3, "ok", [1, 2, 3, 4]])
        self.assertEqual(child.request(invoke(4, "kw", [], {"a": 1, "b": 5, "c": 3, "d": 6}, True, 1.5)), [4, "data", [1, 5, 3, 6]])
        self.assertEqual(child.request(invoke(5, "math.sqrt", [16])), [5, "ok", 4.0])
        kind, message, trace = self.error(child, invoke(6, "kw", [1], {"c": 3, "nope": 0}))
        self.assertEqual(kind, "TypeError")
        self.assertIn("'nope'", message)
        self.assertEqual(self.error(child, invoke(7, "kw", [1, 2]))[0], "TypeError")  # c is keyword-only
        self.assertEqual(self.error(child, invoke(8, "missing.name"))[0], "NameError")
        self.assertEqual(child.request(invoke(9, "add", [2, 2])), [9, "ok", 4])

    def test_a_typed_invoke_sends_bytes_as_bin(self):
        child = self.start_with_invoke_source()
        typed = {"b": b"\x00\xff", "l": [b"ab", b"cd"], "n": None, "s": [1]}
        self.assertEqual(child.request(invoke(2, "blobs", typed=True)), [2, "data", typed])
        self.assertEqual(child.request(invoke(3, "blobs")), [3, "ok", {"b": [0, 255], "l": [[97, 98], [99, 100]], "n": None, "s": [1]}])
        self.assertEqual(child.request(invoke(4, "echo", [[b"\x01", {"k": b""}]], {}, True)), [4, "data", [b"\x01", {"k": b""}]])
        self.assertEqual(child.request(invoke(5, "echo", [float("nan")], {}, True)), [5, "data", None])
        self.assertEqual(
            child.request(invoke(6, "huge", typed=True)), [6, "conv", "int of 65 bits does not fit in a 64-bit integer (i64 or u64)"]
        )

    def test_an_invoke_that_returns_a_generator_is_a_conversion_error(self):
        child = self.start_with_invoke_source()
        self.assertEqual(child.request(invoke(2, "numbers")), [2, "conv", "numbers returned a generator; read its items with .stream()"])
        self.assertEqual(child.request(invoke(3, "started", typed=True))[1], "conv")
        self.assertEqual(child.request(invoke(4, "agen")), [4, "conv", "agen returned an async generator; read its items with .stream()"])
        self.assertEqual(self.ok(child, [5, "eval", "state"]), ["closed"])

    def test_an_invoke_that_returns_an_awaitable_sends_awaiting_then_its_reply(self):
        child = self.start_with_invoke_source()
        self.assertEqual(child.request(invoke(2, "later", ["plain", 0.01])), ["awaiting", 2])
        self.assertEqual(child.reply(), [2, "ok", "plain"])
        self.assertEqual(child.request(invoke(3, "later", [b"\x07"], {"seconds": 0.01}, True, 5.0)), ["awaiting", 3])
        self.assertEqual(child.reply(), [3, "data", b"\x07"])
        # Sync requests go on while it waits.
        self.assertEqual(child.request(invoke(4, "later", ["slow", 0.5], {}, True)), ["awaiting", 4])
        self.assertEqual(child.request(invoke(5, "add", [1, 1])), [5, "ok", 2])
        self.assertEqual(child.reply(), [4, "data", "slow"])

    def test_an_awaited_invoke_past_its_limit_replies_timeout(self):
        child = self.start_with_invoke_source()
        self.assertEqual(child.request(invoke(2, "later", [None, 3600], {}, True, 0.1)), ["awaiting", 2])
        self.assertEqual(child.reply(), [2, "timeout"])
        # A limit the call that made the coroutine used up: no awaiting, and
        # the coroutine is closed, never awaited.
        self.assertEqual(child.request(invoke(3, "slow_maker", [0.2], {}, False, 0.05)), [3, "timeout"])
        self.assertEqual(self.ok(child, [4, "eval", "__import__('gc').collect() * 0"]), 0)
        self.assertNotIn("never awaited", child.stderr())

    def test_cancel_stops_a_pending_coroutine_at_its_await_point(self):
        child = self.start_with_invoke_source()
        # One write: both start in the loop's turn after it.
        child.send_raw(frame(packed(invoke(2, "guarded", ["invoked"], {}, True))) + frame(worker.pack([3, "call_async", "guarded", ["awaited"], None])))
        self.assertEqual(child.reply(), ["awaiting", 2])
        self.assertEqual(self.ok(child, [4, "eval", "state"]), ["invoked started", "awaited started"])
        child.send_raw(frame(worker.pack(["cancel", 2])) + frame(worker.pack(["cancel", 3])))
        replies = [child.reply(), child.reply()]
        for request_id in (2, 3):
            self.assertIn([request_id, "err", "CancelledError", "the coroutine was cancelled", None], replies)
        self.assertEqual(self.ok(child, [5, "eval", "state[2:]"]), ["invoked unwound", "awaited unwound"])
        # Nothing pending under these ids, or any: ignored, no reply.
        child.send_raw(frame(worker.pack(["cancel", 2])) + frame(worker.pack(["cancel", 99])))
        self.assertEqual(self.ok(child, [6, "eval", "'alive'"]), "alive")
        self.assertEqual([each for each in child.frames[-4:] if each != ["out"]][-2:], [[5, "ok", ["invoked unwound", "awaited unwound"]], [6, "ok", "alive"]])
        self.assertNotIn("async_py worker:", child.stderr())

    def test_an_invoke_with_8_mib_of_bytes_in_and_out(self):
        child = self.start_with_invoke_source()
        data = os.urandom(8 << 20)
        reply = child.request(invoke(2, "echo", [data], {}, True))
        self.assertEqual(reply[:2], [2, "data"])
        self.assertIs(type(reply[2]), bytes)
        self.assertTrue(reply[2] == data)
        self.assertEqual(child.request(invoke(3, "len", [data])), [3, "ok", 8 << 20])

    def test_many_requests_in_one_write_are_answered_in_order(self):
        child = self.start()
        child.send_raw(b"".join(frame(worker.pack([i, "eval", "%d * 2" % i])) for i in range(200)))
        for i in range(200):
            self.assertEqual(child.reply(), [i, "ok", i * 2])

    def test_a_100k_int_list_echoes_back(self):
        child = self.start()
        self.ok(child, [1, "run", "def echo(x):\n    return x\n"])
        items = list(range(100000))
        self.assertEqual(self.ok(child, [2, "call", "echo", [items]]), items)

    # -- the value table -----------------------------------------------------

    def test_values_convert_by_the_table(self):
        child = self.start()
        self.ok(child, [1, "run", "import enum\nclass Colour(enum.IntEnum):\n    RED = 1\nclass Plain:\n    def __str__(self):\n        return 'plain!'\n"])
        cases = [
            ("None", None),
            ("True", True),
            ("[False, 0]", [False, 0]),
            ("7", 7),
            ("2**64 - 1", 2**64 - 1),
            ("-2**63", -(2**63)),
            ("1.25", 1.25),
            ("float('nan')", None),
            ("[float('inf'), -float('inf')]", [None, None]),
            ("'héllo'", "héllo"),
            ("(1, [2, (3,)])", [1, [2, [3]]]),
            ("{'a': 1, 2: 'b', None: [], (1, 2): 0}", {"a": 1, "2": "b", "None": [], "(1, 2)": 0}),
            ("{5}", [5]),
            ("frozenset()", []),
            ("b'\\x00\\x7f\\xff'", [0, 127, 255]),
            ("bytearray(b'ab')", [97, 98]),
            ("Colour.RED", 1),
            ("Plain()", "plain!"),
            ("[Plain()] * 2", ["plain!", "plain!"]),
            ("list(range(-50, 50))", list(range(-50, 50))),
            ("[True] * 20", [True] * 20),
            ("[0.5] * 20 + [float('nan')]", [0.5] * 20 + [None]),
        ]
        for request_id, (expr, value) in enumerate(cases, start=10):
            with self.subTest(expr=expr):
                got = self.ok(child, [request_id, "eval", expr])
                self.assertEqual(got, value)
                self.assertEqual(repr(got), repr(value))
        self.assertTrue(self.ok(child, [50, "eval", "object()"]).startswith("<object object at"))

    def test_args_arrive_by_the_table(self):
        child = self.start()
        self.ok(child, [1, "run", "def kinds(*args):\n    return [type(a).__name__ for a in args]\n"])
        kinds = self.ok(child, [2, "call", "kinds", [None, True, 1, -1, 2**64 - 1, 1.5, "s", [1], {"k": "v"}]])
        self.assertEqual(kinds, ["NoneType", "bool", "int", "int", "int", "float", "str", "list", "dict"])

    def test_hand_written_wire_types_arrive(self):
        child = self.start()
        self.ok(child, [1, "run", "def show(*args):\n    return repr(args)\n"])
        args = [
            b"\xca" + struct.pack(">f", 0.5),  # float 32
            b"\xda\x00\x02hi",  # str 16
            b"\xdc\x00\x01\x07",  # array 16
            b"\xde\x00\x01\xa1k\xc3",  # map 16
            b"\xc4\x02\x00\xff",  # bin 8
            b"\xd1\xff\x00",  # int 16
            b"\xcf\x00\x00\x00\x00\x00\x00\x00\x05",  # uint 64
        ]
        payload = b"\x94\x02\xa4call\xa4show\x97" + b"".join(args)
        child.send_raw(frame(payload))
        self.assertEqual(child.reply(), [2, "ok", "(0.5, 'hi', [7], {'k': True}, b'\\x00\\xff', -256, 5)"])

    def test_big_ints_are_conversion_errors_naming_their_size(self):
        child = self.start()
        self.assertEqual(
            child.request([1, "eval", "2**64"]), [1, "conv", "int of 65 bits does not fit in a 64-bit integer (i64 or u64)"]
        )
        self.assertEqual(
            child.request([2, "eval", "[1, -2**100]"]), [2, "conv", "int of 101 bits does not fit in a 64-bit integer (i64 or u64)"]
        )

    def test_deep_or_self_containing_values_are_conversion_errors(self):
        child = self.start()
        self.ok(child, [1, "run", "deep = 0\nfor _ in range(200):\n    deep = [deep]\nloop = []\nloop.append(loop)\n"])
        self.assertEqual(self.ok(child, [2, "eval", "len(deep)"]), 1)
        child.send([3, "read", "deep"])
        self.assertEqual(child.reply()[:2], [3, "ok"])
        too_deep = "value nests deeper than 200 levels (or contains itself)"
        self.assertEqual(child.request([4, "eval", "[deep]"]), [4, "conv", too_deep])
        self.assertEqual(child.request([5, "read", "loop"]), [5, "conv", too_deep])

    def test_too_deep_args_are_a_conversion_error(self):
        child = self.start()
        self.ok(child, [1, "run", "def f(x):\n    return 'called'\n"])
        deep_arg = b"\x91" * 3000 + b"\x01"  # past the C msgpack package's own limit too
        child.send_raw(frame(b"\x94\x02\xa4call\xa1f\x91" + deep_arg))
        self.assertEqual(child.reply(), [2, "conv", "value nests deeper than 200 levels (or contains itself)"])
        self.assertEqual(self.ok(child, [3, "eval", "1"]), 1)

    def test_lone_surrogates_are_conversion_errors(self):
        child = self.start()
        reply = child.request([1, "eval", "'\\ud800'"])
        self.assertEqual(reply[:2], [1, "conv"])

    def test_a_failing_str_is_an_error_reply(self):
        child = self.start()
        self.ok(child, [1, "run", "class Bad:\n    def __str__(self):\n        raise RuntimeError('no str for you')\n"])
        kind, message, _ = self.error(child, [2, "eval", "Bad()"])
        self.assertEqual((kind, message), ("RuntimeError", "no str for you"))

    # -- errors --------------------------------------------------------------

    def test_exceptions_become_err_replies_with_a_traceback(self):
        child = self.start()
        self.ok(child, [1, "run", "def inner():\n    return 1 / 0\ndef outer():\n    return inner()\n"])
        kind, message, trace = self.error(child, [2, "call", "outer", []])
        self.assertEqual((kind, message), ("ZeroDivisionError", "division by zero"))
        self.assertTrue(trace.startswith("Traceback (most recent call last):"), trace)
        self.assertIn("in inner", trace)
        self.assertIn("ZeroDivisionError: division by zero", trace)
        self.assertNotIn("worker.py", trace)

    def test_syntax_errors_and_nul_bytes_are_err_replies(self):
        child = self.start()
        kind, _, _ = self.error(child, [1, "run", "def ("])
        self.assertEqual(kind, "SyntaxError")
        kind, _, _ = self.error(child, [2, "run", "x = 1\0"])
        self.assertIn(kind, ("ValueError", "SyntaxError"))
        self.assertEqual(self.ok(child, [3, "eval", "1 + 1"]), 2)

    def test_system_exit_and_keyboard_interrupt_do_not_end_the_child(self):
        child = self.start()
        kind, message, _ = self.error(child, [1, "run", "import sys\nsys.exit(4)"])
        self.assertEqual((kind, message), ("SystemExit", "4"))
        kind, _, _ = self.error(child, [2, "run", "raise KeyboardInterrupt"])
        self.assertEqual(kind, "KeyboardInterrupt")
        self.ok(child, [3, "run", "import sys\nasync def leave():\n    sys.exit(5)\n"])
        kind, message, _ = self.error(child, [4, "call_async", "leave", [], None])
        self.assertEqual((kind, message), ("SystemExit", "5"))
        self.assertEqual(self.ok(child, [5, "eval", "'alive'"]), "alive")

    def test_sigint_interrupts_the_running_command_then_the_child_exits(self):
        child = self.start()
        child.send([1, "run", "import time\ntry:\n    print('sleeping')\n    time.sleep(30)\nfinally:\n    print('unwound')\n"])
        child.wait_for_stderr("sleeping")
        # Queued behind the interrupted command: the parent replays it on a
        # fresh child, so this child must not start it.
        child.send([2, "run", "print('must not run')"])
        child.process.send_signal(signal.SIGINT)
        reply = child.reply()
        self.assertEqual(reply[:3], [1, "err", "KeyboardInterrupt"])
        child.wait_for_stderr("unwound")
        self.assertEqual(child.wait(), 130)
        self.assertNotIn("must not run", child.stderr())

    def test_sigint_between_commands_is_ignored(self):
        child = self.start()
        code = "import asyncio\nasync def nap():\n    print('napping')\n    await asyncio.sleep(0.3)\n    return 'rested'\n"
        self.ok(child, [1, "run", code])
        child.process.send_signal(signal.SIGINT)
        time.sleep(0.1)
        child.send([2, "call_async", "nap", [], None])
        child.wait_for_stderr("napping")
        child.process.send_signal(signal.SIGINT)
        self.assertEqual(child.reply(), [2, "ok", "rested"])
        self.assertEqual(self.ok(child, [3, "eval", "'alive'"]), "alive")

    def test_deep_recursion_is_a_recursion_error(self):
        child = self.start()
        self.ok(child, [1, "run", "def down(n):\n    return down(n + 1)\n"])
        kind, _, _ = self.error(child, [2, "call", "down", [0]])
        self.assertEqual(kind, "RecursionError")
        self.assertEqual(self.ok(child, [3, "eval", "'alive'"]), "alive")

    # -- file descriptors ----------------------------------------------------

    def test_stdout_writes_go_to_stderr_not_the_protocol(self):
        child = self.start()
        code = textwrap.dedent(
            """
            import os, subprocess, sys
            print('from print')
            sys.stdout.write('from sys.stdout\\n')
            os.write(1, b'from fd 1\\n')
            sys.stdout.buffer.write(b'\\x00\\x00\\x00\\x05junk\\n')
            subprocess.call([sys.executable, '-c', 'print("from a grandchild")'])
            """
        )
        self.assertIsNone(self.ok(child, [1, "run", code]))
        self.assertEqual(self.ok(child, [2, "eval", "'clean'"]), "clean")
        child.wait_for_stderr("from a grandchild")
        for line in ("from print", "from sys.stdout", "from fd 1", "junk"):
            child.wait_for_stderr(line)

    def test_an_output_mark_goes_before_a_reply_after_output_and_only_then(self):
        child = self.start()
        self.ok(child, [1, "eval", "1"])
        self.ok(child, [2, "run", "print('printed')"])
        self.ok(child, [3, "run", "import sys\nsys.stderr.write('written')"])
        self.ok(child, [4, "run", "import os\nos.write(2, b'not noted')"])
        self.ok(child, [5, "eval", "2"])
        heads = [frame[0] for frame in child.frames[1:]]
        self.assertEqual(heads, [1, "out", 2, "out", 3, 4, 5])
        # The mark says the output is in the pipe already.
        child.wait_for_stderr("printed")
        child.wait_for_stderr("written")

    def test_print_reaches_stderr_while_the_child_runs(self):
        child = self.start()
        self.ok(child, [1, "run", "print('line one')"])
        child.wait_for_stderr("line one")
        self.ok(child, [2, "run", "import sys\nprint('line two', file=sys.stderr)"])
        child.wait_for_stderr("line two")

    def test_input_gets_end_of_file(self):
        child = self.start()
        kind, _, _ = self.error(child, [1, "eval", "input()"])
        self.assertEqual(kind, "EOFError")
        self.assertEqual(self.ok(child, [2, "eval", "__import__('sys').stdin.read()"]), "")
        self.assertEqual(self.ok(child, [3, "eval", "__import__('os').read(0, 10)"]), [])

    def test_the_workers_folder_is_not_on_sys_path(self):
        child = self.start()
        folder = os.path.dirname(WORKER)
        self.assertFalse(self.ok(child, [1, "eval", "%r in __import__('sys').path" % folder]))

    # -- malformed input -----------------------------------------------------

    def test_malformed_requests_with_an_id_get_a_protocol_error(self):
        child = self.start()
        for request in [
            [1],
            [2, "nope"],
            [3, 7],
            [4, "run"],
            [5, "run", 5],
            [6, "run", "x", "y"],
            [7, "call", "f", "not a list"],
            [8, "call_async", "f", [], -1],
            [9, "call_async", "f", [], "soon"],
            [10, "call_async", "f", []],
            [11, "stop", "now"],
            [12, "invoke", "f", [], {}, False],
            [13, "invoke", "f", [], {}, None, None],
            [14, "invoke", "f", [], {}, True, -0.5],
            [15, "invoke", "f", [], "kwargs", True, None],
        ]:
            with self.subTest(request=request):
                reply = child.request(request)
                self.assertEqual(reply[:3], [request[0], "err", "ProtocolError"])
                self.assertIsInstance(reply[3], str)
                self.assertIsNone(reply[4])
        self.assertEqual(self.ok(child, [20, "eval", "'alive'"]), "alive")

    def test_a_malformed_cancel_is_dropped_with_a_line_on_stderr(self):
        child = self.start()
        for message in (["cancel"], ["cancel", "1"], ["cancel", 1, 2], ["cancel", None]):
            child.send(message)
        self.assertEqual(self.ok(child, [5, "eval", "'alive'"]), "alive")
        child.wait_for_stderr("ignoring a malformed cancel")
        self.assertEqual([reply for reply in child.frames[1:] if reply != ["out"]], [[5, "ok", "alive"]])

    def test_requests_without_an_id_are_dropped_with_a_line_on_stderr(self):
        child = self.start()
        for request in [{"a": 1}, "text", [], ["1", "eval", "1"], [True, "eval", "1"], [None]]:
            child.send(request)
        self.assertEqual(self.ok(child, [5, "eval", "'alive'"]), "alive")
        child.wait_for_stderr("without an id")

    def test_bytes_that_are_not_messagepack_exit_with_status_3(self):
        for payload in [b"\xc1", b"\xd4\x01\x00", b"\x92\x01", b"\x93\x01\xa2ok\xc0\xc0", b"\xa2\xff\xfe"]:
            with self.subTest(payload=payload):
                child = self.start()
                child.send_raw(frame(payload))
                self.assertEqual(child.wait(), 3)
                self.assertIn("not valid MessagePack", child.stderr())

    def test_replies_before_a_bad_frame_are_still_sent(self):
        child = self.start()
        child.send_raw(frame(worker.pack([1, "eval", "'first'"])) + frame(b"\xc1"))
        self.assertEqual(child.reply(), [1, "ok", "first"])
        self.assertEqual(child.wait(), 3)

    def test_a_frame_over_1_gib_exits_with_status_3(self):
        child = self.start()
        child.send_raw(struct.pack(">I", (1 << 30) + 1))
        self.assertEqual(child.wait(), 3)
        self.assertIn("1 GiB", child.stderr())

    def test_a_truncated_frame_at_end_of_input_exits_with_status_3(self):
        for cut in (1, 3, 4, 7):
            with self.subTest(cut=cut):
                child = self.start()
                child.send_raw(frame(worker.pack([1, "eval", "'never'"]))[:cut])
                child.close_input()
                self.assertEqual(child.wait(), 3)

    def test_random_and_truncated_frames_never_hang_the_child(self):
        rng = random.Random(1234)
        samples = [
            [1, "eval", "1 + 1"],
            [2, "call", "len", [[1, 2, 3]]],
            [3, "run", "x = 5"],
            [4, "read", "x"],
            [5, "call_async", "len", [[1]], 1.5],
            [6, "eval", "{'a': [1.5, None, True]}"],
            [7, "call", "max", [list(range(40))]],
            [8, "call", "str", [{"k": [300, -5, 70000]}]],
            [9, "invoke", "max", [[1, 2]], {"default": 0}, True, None],
            [10, "invoke", "len", [[1]], {}, False, 2.5],
            ["cancel", 5],
        ]
        sentinel = [999999, "eval", "'alive'"]
        child = None
        for case in range(60):
            if child is None or child.process.poll() is not None:
                child = self.start()
            kind = rng.choice(["random", "mutated", "mutated", "resized", "truncated"])
            payload = worker.pack(rng.choice(samples))
            if kind == "random":
                data = frame(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40))))
            elif kind == "mutated":
                payload = bytearray(payload)
                for _ in range(rng.randrange(1, 4)):
                    payload[rng.randrange(len(payload))] = rng.getrandbits(8)
                data = frame(bytes(payload))
            elif kind == "resized":  # the header and the payload disagree
                data = struct.pack(">I", max(0, len(payload) + rng.randrange(-5, 6))) + payload
            else:
                data = frame(payload)[: rng.randrange(1, len(payload) + 4)]
                child.send_raw(data)
                child.close_input()
                self.assertEqual(child.wait(), 3, "case %d (%s): %r" % (case, kind, data))
                continue
            child.send_raw(data + frame(worker.pack(sentinel)))
            outcome = self._await_sentinel(child, sentinel[0])
            with self.subTest(case=case, kind=kind, data=data):
                if outcome == "alive":
                    continue
                if outcome == "silent":  # still waiting for the rest of a frame
                    child.close_input()
                self.assertIn(child.wait(5.0), (0, 3))

    def _await_sentinel(self, child, sentinel_id, timeout=1.0):
        """"alive" when the sentinel is answered, "exited" or "silent" otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "silent"
            try:
                reply = child.replies.get(timeout=left)
            except queue.Empty:
                return "silent"
            if isinstance(reply, Exited):
                return "exited"
            self.assertIsInstance(reply, list, "a reply that is not a list: %r" % (reply,))
            if reply[0] == "awaiting":
                continue
            self.assertIn(reply[1], ("ok", "data", "err", "conv", "timeout"), "reply %r" % (reply,))
            if reply[0] == sentinel_id:
                return "alive"


@unittest.skipUnless(sys.platform.startswith("linux"), "PR_SET_PDEATHSIG is Linux only")
class ParentDeathTests(unittest.TestCase):
    def test_the_child_dies_with_its_parent(self):
        """The worker's parent exits while someone else holds its request pipe."""
        python = sys.executable
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, write_end)
        launcher = textwrap.dedent(
            """
            import subprocess, sys
            child = subprocess.Popen([sys.executable, %r], stdin=%d, stdout=subprocess.PIPE, pass_fds=[%d])
            child.stdout.read(4)  # the hello's header: prctl has run
            print(child.pid)
            """
            % (WORKER, read_end, read_end)
        )
        pid = int(subprocess.check_output([python, "-c", launcher], pass_fds=[read_end], timeout=REPLY_TIMEOUT))
        os.close(read_end)
        deadline = time.monotonic() + REPLY_TIMEOUT
        while _process_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                self.fail("the worker outlived its parent")
            time.sleep(0.02)


def _process_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _child_test_classes():
    classes = {}
    for version, python in sorted(INTERPRETERS.items()):
        name = "ChildOnPython" + version.replace(".", "_")
        attributes = {"python": python, "__doc__": "python worker.py, on %s" % python}
        classes[name] = type(name, (ChildTests, unittest.TestCase), attributes)
        if version in BOOTSTRAP_VERSIONS:
            attributes = {"python": python, "launch": "bootstrap", "__doc__": "python -u -c ..., on %s" % python}
            classes[name + "_bootstrap"] = type(name + "_bootstrap", (ChildTests, unittest.TestCase), attributes)
    return classes


globals().update(_child_test_classes())

if __name__ == "__main__":
    unittest.main()
