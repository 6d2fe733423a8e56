"""Tests of python/output.py and python/child_output.py: captures, line
routes, and a child's captured requests and output frames.

    python3 -m unittest discover -s tests/python -v
"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_protocol import rust_constant  # noqa: E402
from test_worker import Child, worker  # noqa: E402  (the joined worker, as a module)


class CaptureTests(unittest.TestCase):
    def test_writes_are_kept_by_stream(self):
        capture = worker.Capture()
        capture.write(0, "out ")
        capture.write(1, "err")
        capture.write(0, "more\n")
        self.assertEqual(capture.finish(), ("out more\n", "err"))
        self.assertFalse(capture.open)

    def test_a_stream_past_the_cap_is_cut_whole_characters_and_marked(self):
        capture = worker.Capture(cap=10)
        capture.write(0, "abcdefgh")
        capture.write(0, "\u00e9\u00e9")  # two bytes each: only one fits
        capture.write(0, "dropped")
        capture.write(1, "x" * 10)
        stdout, stderr = capture.finish()
        self.assertEqual(stdout, "abcdefgh\u00e9\n[async_py: output cut at 10 bytes]\n")
        self.assertEqual(stderr, "x" * 10)

    def test_lone_surrogates_come_out_escaped(self):
        capture = worker.Capture()
        capture.write(0, "a\udc80")
        self.assertEqual(capture.finish()[0], "a\\udc80")


class RouterTests(unittest.TestCase):
    def setUp(self):
        streams = sys.stdout, sys.stderr
        self.addCleanup(setattr, sys, "stdout", streams[0])
        self.addCleanup(setattr, sys, "stderr", streams[1])
        self.router = worker.OutputRouter(100)

    def test_a_capture_takes_the_writes_of_its_context_only_while_open(self):
        capture = self.router.begin_capture()
        print("captured")
        self.router.leave_capture(capture)
        self.assertEqual(capture.finish(), ("captured\n", ""))
        self.assertIsNone(self.router.capture.get())

    def test_an_empty_capture_is_taken_again_and_one_that_held_output_is_not(self):
        first = self.router.begin_reused_capture()
        self.assertEqual(self.router.end_capture(first), ("", ""))
        again = self.router.begin_reused_capture()
        self.assertIs(again, first)
        self.assertTrue(again.open)
        sys.stderr.write("kept")
        self.assertEqual(self.router.end_capture(again), ("", "kept"))
        self.assertIsNot(self.router.begin_reused_capture(), first)


class LineRouteTests(unittest.TestCase):
    def setUp(self):
        self.lines = []
        self.route = worker.LineRoute(lambda index, lines: self.lines.extend((index, line) for line in lines))

    def test_lines_are_handed_on_as_they_end(self):
        self.route.write(0, "one\ntw")
        self.assertEqual(self.lines, [(0, "one")])
        self.route.write(1, "err\n")
        self.route.write(0, "o\n\nthree")
        self.assertEqual(self.lines, [(0, "one"), (1, "err"), (0, "two"), (0, "")])
        self.route.end_lines()
        self.assertEqual(self.lines[-1], (0, "three"))
        self.route.end_lines()
        self.assertEqual(len(self.lines), 5, "nothing open, nothing more")

    def test_a_line_without_end_goes_in_capped_pieces(self):
        cap = worker.LINE_CAP
        for _ in range(5):
            self.route.write(0, "y" * (cap // 2 + 1))
        self.assertEqual([len(line) for _, line in self.lines], [cap, cap])
        self.route.write(0, "z" * (3 * cap) + "\nrest")
        self.route.end_lines()
        sizes = [len(line) for _, line in self.lines]
        self.assertTrue(all(size <= cap for size in sizes), sizes)
        self.assertEqual(sum(sizes), 5 * (cap // 2 + 1) + 3 * cap + 4)
        self.assertEqual(self.lines[-1], (0, "rest"))


class AgreementTests(unittest.TestCase):
    def test_the_caps_agree_with_the_rust_side(self):
        tuning = os.path.join("src", "tuning.rs")
        self.assertEqual(worker.CAPTURE_CAP, rust_constant(tuning, "CAPTURE_CAP"))
        self.assertEqual(worker.LINE_CAP, rust_constant(tuning, "OUTPUT_LINE_CAP"))
        self.assertEqual(worker.cut_marker(worker.CAPTURE_CAP), "[async_py: output cut at 16777216 bytes]\n")

    def test_a_captured_invoke_takes_the_invoke_s_fast_decoder(self):
        request = worker.pack([9, worker.OP_INVOKE_CAPTURED, "f", [1], {"k": 2}, False, 1.5])
        self.assertEqual(worker._invoke_request(request, worker.INVOKE_CAPTURED_OP), (9, "f", [1], {"k": 2}, False, 1.5))
        self.assertIsNone(worker._invoke_request(request))


class ChildOutputTests(unittest.TestCase):
    """A child worker's captured requests and output frames."""

    def start(self, frames=False):
        if frames:
            os.environ[worker.ENV_OUTPUT] = worker.OUTPUT_FRAMES
        try:
            child = Child(sys.executable)
        finally:
            os.environ.pop(worker.ENV_OUTPUT, None)
        self.addCleanup(child.finish)
        hello = child.reply()
        self.assertEqual(hello[:2], ["hello", worker.PROTOCOL_VERSION])
        return child

    def test_a_captured_run_takes_its_fd_writes_in_order(self):
        child = self.start()
        child.send([1, "run_captured", "import os, sys\nos.write(1, b'a\\n')\nprint('b')\nos.write(2, b'c\\n')\nsys.stderr.write('d')"])
        self.assertEqual(child.reply(), ["captured", 1, "a\nb\n", "c\nd"])
        self.assertEqual(child.reply(), [1, "ok", None])
        # Its fds point at the stderr pipe again.
        child.send([2, "run", "print('after')"])
        self.assertEqual(child.reply(), [2, "ok", None])
        child.wait_for_stderr("after\n")
        self.assertNotIn("a\n", child.stderr())

    def test_without_a_capture_file_a_captured_request_fails_and_the_child_goes_on(self):
        child = self.start()
        child.send([1, "run", "import tempfile\nclass Refused:\n    def __init__(self, *a, **k):\n        raise OSError('no room')\ntempfile.TemporaryFile = Refused\ndef f():\n    return 1"])
        self.assertEqual(child.reply(), [1, "ok", None])
        child.send([2, "invoke_captured", "f", [], {}, False, None])
        reply = child.reply()
        self.assertEqual(reply[:4], [2, "err", "OSError", "no room"])
        child.send([3, "run_captured", "x = 1"])
        self.assertEqual(child.reply()[:3], [3, "err", "OSError"])
        self.assertEqual(child.request([4, "eval", "f() + x if 'x' in globals() else f()"]), [4, "ok", 1])

    def test_a_captured_invoke_that_awaits_sends_its_output_before_its_reply(self):
        child = self.start()
        child.send([1, "run", "import asyncio\nasync def later():\n    await asyncio.sleep(0)\n    print('awaited')\n    return 3\ndef starts():\n    print('called')\n    return later()"])
        self.assertEqual(child.reply(), [1, "ok", None])
        child.send([2, "invoke_captured", "starts", [], {}, False, None])
        self.assertEqual(child.reply(), ["awaiting", 2])
        self.assertEqual(child.reply(), ["captured", 2, "called\nawaited\n", ""])
        self.assertEqual(child.reply(), [2, "ok", 3])

    def test_output_frames_carry_lines_in_order_with_replies(self):
        child = self.start(frames=True)
        child.send([1, "run", "import os, sys\nprint('one')\nprint('two', file=sys.stderr)\nsys.stdout.write('open')\nos.write(1, b'raw\\n')"])
        self.assertEqual(child.reply(), ["output", 0, ["one"]])
        self.assertEqual(child.reply(), ["output", 1, ["two"]])
        self.assertEqual(child.reply(), ["output", 0, ["open"]], "ended with its command")
        self.assertEqual(child.reply(), [1, "ok", None])
        child.wait_for_stderr("raw\n")
        self.assertNotIn("one", child.stderr())

    def test_a_line_written_in_pieces_stays_one_line(self):
        child = self.start(frames=True)
        child.send([1, "run", "import sys\nsys.stdout.write('a\\nb')\nsys.stderr.write('x')\nsys.stdout.write('c\\n')\nsys.stderr.write('y\\n')"])
        self.assertEqual(child.reply(), ["output", 0, ["a"]])
        self.assertEqual(child.reply(), ["output", 0, ["bc"]], "the other stream's open line stays open")
        self.assertEqual(child.reply(), ["output", 1, ["xy"]])
        self.assertEqual(child.reply(), [1, "ok", None])
