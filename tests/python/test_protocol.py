"""Tests of python/protocol.py, the worker's statement of the wire layout.

    python3 -m unittest discover -s tests/python -v

The Rust side states the same numbers as constants: the reply ring's
offsets in src/subprocess/ring.rs, the protocol version in
src/wire/mod.rs. `RustAgreementTests` reads those files and checks that
both sides say the same. `FastPathBytesTests` pins the bytes the worker's
fast paths write and match, which protocol.py derives from its names.
"""

import ast
import os
import re
import struct
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from worker_source import PYTHON_DIR, WORKER, modules  # noqa: E402  (python/*.py joined as build.rs joins them)

sys.path.insert(0, os.path.dirname(WORKER))
import worker  # noqa: E402

ROOT = os.path.dirname(PYTHON_DIR)


def _evaluate(expression, where):
    """The value of a Rust integer constant's expression: literals (with
    `_` separators), `<<`, `*` and `+`; anything else fails the test run."""
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise AssertionError("%s: cannot read the constant expression %r" % (where, expression))

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise AssertionError("%s: cannot read the constant expression %r" % (where, expression)) from None
    return value(tree.body)


_OPERATORS = {ast.LShift: lambda a, b: a << b, ast.Mult: lambda a, b: a * b, ast.Add: lambda a, b: a + b}


def rust_constants(path):
    """{NAME: value} of the integer constants (`const NAME: usize = N;`, or
    u64) of a Rust file under the repository."""
    where = os.path.join(ROOT, path)
    with open(where, encoding="utf-8") as source:
        text = source.read()
    found = {}
    pattern = r"^\s*(?:pub(?:\([^)]*\))?\s+)?const\s+([A-Z][A-Z0-9_]*)\s*:\s*(?:usize|u64)\s*=\s*([^;]+);"
    for name, expression in re.findall(pattern, text, re.MULTILINE):
        if name in found:
            raise AssertionError("%s states %s twice" % (path, name))
        found[name] = _evaluate(expression, "%s, %s" % (path, name))
    return found


def rust_constant(path, name):
    constants = rust_constants(path)
    if name not in constants:
        raise AssertionError("%s has no line `const %s: usize = ...;` (or u64): found only %s" % (path, name, sorted(constants)))
    return constants[name]


class RustAgreementTests(unittest.TestCase):
    """protocol.py and the Rust side state the same layout."""

    RING_RS = os.path.join("src", "subprocess", "ring.rs")
    WIRE_RS = os.path.join("src", "wire", "mod.rs")
    CONFIG_RS = os.path.join("src", "config.rs")

    def test_the_ring_offsets_agree(self):
        # Rust names them PUBLISHED, TAKEN, ..., DATA and RING_SIZE;
        # protocol.py names each with a RING_ prefix.
        rust = rust_constants(self.RING_RS)
        self.assertIn("TAKEN", rust, "no ring offsets found in %s: is `const TAKEN: usize = 64;` still there?" % self.RING_RS)
        rust = {(name if name.startswith("RING_") else "RING_" + name): value for name, value in rust.items()}
        python = {name: value for name, value in vars(worker).items() if name.startswith("RING_")}
        for name in sorted(set(rust) | set(python)):
            with self.subTest(name=name):
                self.assertIn(name, python, "%s states %s, python/protocol.py does not" % (self.RING_RS, name))
                self.assertIn(name, rust, "python/protocol.py states %s, %s does not" % (name, self.RING_RS))
                self.assertEqual(python[name], rust[name], "%s: python/protocol.py and %s differ" % (name, self.RING_RS))

    def test_every_ring_counter_has_its_own_cache_line_before_the_data(self):
        counters = [value for name, value in vars(worker).items() if name.startswith("RING_") and name not in ("RING_DATA", "RING_SIZE", "RING_IN_STREAM")]
        self.assertEqual(len(set(value // 64 for value in counters)), len(counters))
        self.assertTrue(all(value % 8 == 0 and value + 8 <= worker.RING_DATA for value in counters))
        # ring.py's indexes into its u64 view of the counters.
        self.assertEqual(worker._COUNTER_TAKEN * 8, worker.RING_TAKEN)
        self.assertEqual(worker._COUNTER_INTERRUPT_TAKEN * 8, worker.RING_INTERRUPT_TAKEN)
        self.assertEqual(worker._COUNTER_MAKING * 8, worker.RING_MAKING)

    def test_the_protocol_version_agrees(self):
        self.assertEqual(worker.PROTOCOL_VERSION, rust_constant(self.WIRE_RS, "PROTOCOL_VERSION"))
        with open(os.path.join(PYTHON_DIR, "PROTOCOL.md"), encoding="utf-8") as document:
            title = document.readline().strip()
        self.assertEqual(title, "# The async_py wire protocol, version %d" % worker.PROTOCOL_VERSION)

    def test_the_child_takes_any_frame_a_parent_sends_by_default(self):
        # Not one number on both sides: the parent's limit is a setting
        # (max_frame_length, 64 MiB by default), the child's a backstop.
        self.assertLessEqual(rust_constant(self.CONFIG_RS, "DEFAULT_FRAME_LIMIT"), worker.FRAME_LIMIT)

    def test_the_child_s_malloc_setting_agrees(self):
        # The child takes the setting out of its environment only when it
        # is the parent's own.
        with open(os.path.join(ROOT, "src", "tuning.rs"), encoding="utf-8") as source:
            text = source.read()
        found = re.search(r'const CHILD_MALLOC: &str =\s*"([^"]*)";', text)
        self.assertIsNotNone(found, "src/tuning.rs has no `const CHILD_MALLOC: &str = \"...\";`")
        self.assertEqual(found.group(1), worker.CHILD_MALLOC)

    def test_a_missing_constant_fails_loudly(self):
        with self.assertRaisesRegex(AssertionError, "has no line `const NO_SUCH_NAME"):
            rust_constant(self.RING_RS, "NO_SUCH_NAME")
        with self.assertRaisesRegex(AssertionError, "cannot read"):
            _evaluate("Duration::from_micros(200)", "here")


class FastPathBytesTests(unittest.TestCase):
    """The bytes protocol.py derives are the ones the wire has always had."""

    def test_the_output_mark(self):
        self.assertEqual(worker.OUTPUT_MARK_FRAME, b"\x00\x00\x00\x05\x91\xa3out")
        self.assertEqual(worker.unpack(worker.OUTPUT_MARK_FRAME[4:]), ["out"])

    def test_an_ok_reply_as_the_fast_path_writes_it(self):
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        child = worker.ChildWorker(read, write)
        child._reply_value(7, 3)
        child._reply_value(2**64 - 1, "x")
        expected = [
            b"\x00\x00\x00\x0e\x93\xcf" + struct.pack(">Q", 7) + b"\xa2ok\x03",
            b"\x00\x00\x00\x0f\x93\xcf" + b"\xff" * 8 + b"\xa2ok\xa1x",
        ]
        self.assertEqual(child.outbox, expected)
        self.assertEqual([worker.unpack(frame[4:]) for frame in expected], [[7, "ok", 3], [2**64 - 1, "ok", "x"]])

    def test_a_data_reply_as_the_fast_path_writes_it(self):
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        child = worker.ChildWorker(read, write)
        child._reply_data(7, b"\x00\xff")
        child._reply_data(2**64 - 1, [b""])
        expected = [
            b"\x00\x00\x00\x13\x93\xcf" + struct.pack(">Q", 7) + b"\xa4data\xc4\x02\x00\xff",
            b"\x00\x00\x00\x12\x93\xcf" + b"\xff" * 8 + b"\xa4data\x91\xc4\x00",
        ]
        self.assertEqual(child.outbox, expected)
        self.assertEqual([worker.unpack(frame[4:]) for frame in expected], [[7, "data", b"\x00\xff"], [2**64 - 1, "data", [b""]]])

    def test_the_invoke_request_prefix(self):
        self.assertEqual(worker.INVOKE_ARRAY, 0x97)
        self.assertEqual(worker.INVOKE_OP, b"\xa6invoke")
        for request_id in (0, 0x7F, 0x80, 2**64 - 1):
            with self.subTest(request_id=request_id):
                frame = bytearray(worker.pack_typed([request_id, "invoke", "f", [b"\x01"], {"k": 2}, True, 0.5]))
                self.assertEqual(worker._invoke_request(frame), (request_id, "f", [b"\x01"], {"k": 2}, True, 0.5))

    def test_the_message_names(self):
        self.assertEqual((worker.MSG_CANCEL, worker.MSG_AWAITING, worker.REPLY_DATA), ("cancel", "awaiting", "data"))
        self.assertEqual(worker.OPS[worker.OP_INVOKE], (str, list, dict, bool, worker.ARG_LIMIT))
        self.assertEqual(
            (worker.OP_STREAM, worker.MSG_STREAMING, worker.MSG_MORE, worker.REPLY_ITEM, worker.REPLY_ITEM_DATA),
            ("stream", "streaming", "more", "item", "item_data"),
        )
        self.assertEqual(worker.OPS[worker.OP_STREAM], (str, list, dict, bool, worker.ARG_LIMIT, int))

    def test_a_stream_item_as_the_fast_path_writes_it(self):
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        child = worker.ChildWorker(read, write)
        child._send_item(worker._OpenStream(7, iter(()), False, None, 1, False), b"\x01")
        child._send_item(worker._OpenStream(2**64 - 1, iter(()), True, None, 1, False), b"\x01")
        expected = [
            b"\x00\x00\x00\x11\x93\xcf" + struct.pack(">Q", 7) + b"\xa4item\x91\x01",
            b"\x00\x00\x00\x17\x93\xcf" + b"\xff" * 8 + b"\xa9item_data\xc4\x01\x01",
        ]
        self.assertEqual(child.outbox, expected)
        self.assertEqual([worker.unpack(frame[4:]) for frame in expected], [[7, "item", [1]], [2**64 - 1, "item_data", b"\x01"]])

    def test_the_call_request_prefix(self):
        self.assertEqual(worker.CALL_ARRAY, 0x94)
        self.assertEqual(worker.CALL_OP, b"\xa4call")
        self.assertEqual({marker: width for marker, (width, _) in worker.REQUEST_ID_READERS.items()}, {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8})
        for request_id in (0, 0x7F, 0x80, 0xFFFF, 0x10000, 2**32, 2**64 - 1):
            with self.subTest(request_id=request_id):
                frame = bytearray(worker.pack([request_id, "call", "f", [1, "a"]]))
                self.assertEqual(worker._call_request(frame), (request_id, "f", [1, "a"]))

    def test_the_zygote_messages(self):
        self.assertEqual(
            [worker.ZYGOTE_READY, worker.ZYGOTE_FORK, worker.ZYGOTE_FORKED, worker.ZYGOTE_ENDED, worker.ZYGOTE_REAP, worker.ZYGOTE_REAPED],
            [b"r", b"f", b"p", b"x", b"w", b"d"],
        )
        self.assertEqual(worker.ZYGOTE_ENDED + worker.ZYGOTE_PID_STATUS.pack(5, 9), b"x\x00\x00\x00\x05\x00\x00\x00\x09")


class JoinedNamesTests(unittest.TestCase):
    """The modules share one namespace once joined: a module-level name in
    two of them would let the later one replace the earlier's."""

    def test_no_two_modules_define_the_same_name(self):
        groups = modules()
        owners = {}
        for module in groups["in-process"] + groups["child"]:
            with open(os.path.join(PYTHON_DIR, module), encoding="utf-8") as source:
                tree = ast.parse(source.read())
            defined, deleted = set(), set()
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    defined.add(node.name)
                elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.For)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        defined.update(name.id for name in ast.walk(target) if isinstance(name, ast.Name))
                elif isinstance(node, ast.Delete):
                    for target in node.targets:
                        deleted.update(name.id for name in ast.walk(target) if isinstance(name, ast.Name))
            for name in defined - deleted:
                with self.subTest(name=name):
                    self.assertFalse(name in owners, "python/%s and python/%s both define %s" % (owners.get(name), module, name))
                    owners[name] = module


class JoinedSourceTests(unittest.TestCase):
    """The joined source has its comment-only lines left empty (build.rs):
    a smaller command line for every child, the same line numbers."""

    def test_every_line_left_empty_is_a_comment(self):
        import io
        import tokenize

        groups = modules()
        for module in groups["in-process"] + groups["child"]:
            with open(os.path.join(PYTHON_DIR, module), encoding="utf-8") as source:
                text = source.read()
            comments = {token.start[0] for token in tokenize.generate_tokens(io.StringIO(text).readline) if token.type == tokenize.COMMENT}
            for number, line in enumerate(text.split("\n"), 1):
                if line.lstrip().startswith("#"):
                    self.assertIn(number, comments, "python/%s:%d starts with # inside a string: the join would empty it" % (module, number))


if __name__ == "__main__":
    unittest.main()
