"""Tests of python/child_host.py: a child's host calls, played against a
parent written here (PROTOCOL.md, "Host functions").

    python3 -m unittest discover -s tests/python -v
"""

import os
import sys
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_worker import Child, worker  # noqa: E402

FUNCTIONS = "s:add,s:fail,a:later"


def host_child():
    """A child given the host functions of FUNCTIONS."""
    with mock.patch.dict(os.environ, {"ASYNC_PY_HOST": FUNCTIONS}):
        return Child(sys.executable)


class HostCallTests(unittest.TestCase):
    def setUp(self):
        self.child = host_child()
        self.assertEqual(self.child.reply()[0], "hello")
        self.addCleanup(self.child.finish)

    def test_the_setting_names_the_functions_and_leaves_the_environment(self):
        reply = self.child.request([1, "eval", "(__import__('async_py').host, __import__('os').environ.get('ASYNC_PY_HOST'))"])
        self.assertEqual(reply, [1, "ok", ["<async_py.host: add, fail, later>", None]])

    def test_a_sync_call_serves_a_nested_request_before_its_reply(self):
        self.child.send([1, "run", "import async_py\nr = async_py.host.add(1, b'\\x01', k=[2])"])
        self.assertEqual(self.child.reply(), ["host", 1, "add", [1, b"\x01"], {"k": [2]}])
        # The request waits: a nested request runs meanwhile.
        self.child.send(["nested", 2])
        self.assertEqual(self.child.request([2, "eval", "40 + 2"]), [2, "ok", 42])
        # A reply for a call nobody waits for is ignored.
        self.child.send(["host_reply", 99, True, "stray"])
        self.child.send(["host_reply", 1, True, {"sum": 3}])
        self.assertEqual(self.child.reply(), [1, "ok", None])
        self.assertEqual(self.child.request([3, "eval", "r"]), [3, "ok", {"sum": 3}])

    def test_a_nested_request_may_call_again(self):
        self.child.send([1, "eval", "__import__('async_py').host.add(1)"])
        self.assertEqual(self.child.reply(), ["host", 1, "add", [1], {}])
        self.child.send(["nested", 2])
        self.child.send([2, "eval", "__import__('async_py').host.add(2)"])
        self.assertEqual(self.child.reply(), ["host", 2, "add", [2], {}])
        self.child.send(["host_reply", 2, True, "inner"])
        self.assertEqual(self.child.reply(), [2, "ok", "inner"])
        self.child.send(["host_reply", 1, True, "outer"])
        self.assertEqual(self.child.reply(), [1, "ok", "outer"])

    def test_frames_behind_a_waiting_request_wait_for_it_in_order(self):
        self.child.send([1, "run", "import async_py\norder = []\norder.append(async_py.host.add(1))"])
        self.assertEqual(self.child.reply(), ["host", 1, "add", [1], {}])
        # Not nested: they run once the request that waits has ended.
        self.child.send([2, "run", "order.append('B')"])
        self.child.send(["cancel", 2])
        self.child.send([3, "stop"])
        self.child.send(["nested", 4])
        self.child.send([4, "run", "order.append('nested')"])
        self.assertEqual(self.child.reply(), [4, "ok", None])
        self.child.send(["host_reply", 1, True, "A"])
        self.assertEqual(self.child.reply(), [1, "ok", None])
        self.assertEqual(self.child.reply(), [2, "ok", None])
        self.assertEqual(self.child.reply(), [3, "ok", None])
        self.child.process.wait(timeout=10)

    def test_a_nested_note_outside_a_wait_is_dropped(self):
        self.child.send(["nested", 1])
        self.assertEqual(self.child.request([1, "eval", "6 * 7"]), [1, "ok", 42])

    def test_a_nested_awaitable_is_closed_and_refused(self):
        self.child.send([1, "run", "import async_py\nasync def coro():\n    global ran\n    ran = True\nran = False\nr = async_py.host.add(1)"])
        self.assertEqual(self.child.reply(), ["host", 1, "add", [1], {}])
        self.child.send(["nested", 2])
        self.child.send([2, "invoke", "coro", [], {}, False, None])
        reply = self.child.reply()
        self.assertEqual(reply[:3], [2, "err", "RuntimeError"])
        self.assertIn("awaitable", reply[3])
        self.child.send(["host_reply", 1, True, 0])
        self.assertEqual(self.child.reply(), [1, "ok", None])
        self.assertEqual(self.child.request([3, "eval", "ran"]), [3, "ok", False])

    def test_a_sigint_between_frames_of_a_wait_stops_the_waiting_request(self):
        self.child.send([1, "run", "import async_py, gc, signal\nworker = next(o for o in gc.get_objects() if type(o).__name__ == 'ChildWorker')\nasync_py.host.add(1)"])
        self.assertEqual(self.child.reply(), ["host", 1, "add", [1], {}])
        # As if the signal came while the nested request's reply is written:
        # no request runs, but one waits.
        self.child.send(["nested", 2])
        self.child.send([2, "eval", "(setattr(worker, 'running', None), signal.raise_signal(signal.SIGINT))[1]"])
        self.assertEqual(self.child.reply(), [2, "ok", None])
        reply = self.child.reply()
        self.assertEqual(reply[:3], [1, "err", "KeyboardInterrupt"])
        self.assertEqual(self.child.process.wait(timeout=10), 130)  # EXIT_INTERRUPTED

    def test_a_call_while_frames_are_written_raises_host_error(self):
        code = (
            "import async_py, gc\n"
            "worker = next(o for o in gc.get_objects() if type(o).__name__ == 'ChildWorker')\n"
            "worker.writing = True\n"
            "try:\n    async_py.host.add(1)\nexcept async_py.HostError as e:\n    heard = str(e)\n"
            "finally:\n    worker.writing = False\n"
        )
        self.assertEqual(self.child.request([1, "run", code]), [1, "ok", None])
        heard = self.child.request([2, "eval", "heard"])[2]
        self.assertIn("while the worker was writing its frames", heard)

    def test_an_error_reply_raises_host_error(self):
        self.child.send([1, "eval", "__import__('async_py').host.fail()"])
        self.assertEqual(self.child.reply()[:3], ["host", 1, "fail"])
        self.child.send(["host_reply", 1, False, "it failed"])
        reply = self.child.reply()
        self.assertEqual(reply[:4], [1, "err", "HostError", "it failed"])

    def test_an_async_call_is_settled_by_the_serve_loop(self):
        self.child.send([1, "run", "import async_py\nasync def twice(x):\n    return 2 * await async_py.host.later(x)"])
        self.assertEqual(self.child.reply(), [1, "ok", None])
        self.child.send([2, "call_async", "twice", [5], None])
        self.assertEqual(self.child.reply(), ["host", 1, "later", [5], {}])
        # Other requests run while the coroutine awaits.
        self.assertEqual(self.child.request([3, "eval", "'meanwhile'"]), [3, "ok", "meanwhile"])
        self.child.send(["host_reply", 1, True, 21])
        self.assertEqual(self.child.reply(), [2, "ok", 42])

    def test_an_async_call_on_a_loop_of_its_own_is_made_as_a_sync_one(self):
        code = "import async_py, asyncio\nr = asyncio.run(async_py.host.later(3))"
        self.child.send([1, "run", code])
        self.assertEqual(self.child.reply(), ["host", 1, "later", [3], {}])
        # Nested requests run meanwhile, as in a sync call's wait.
        self.child.send(["nested", 2])
        self.assertEqual(self.child.request([2, "eval", "'nested'"]), [2, "ok", "nested"])
        self.child.send(["host_reply", 1, True, 9])
        self.assertEqual(self.child.reply(), [1, "ok", None])
        self.assertEqual(self.child.request([3, "eval", "r"]), [3, "ok", 9])
        self.child.send([4, "run", "try:\n    asyncio.run(async_py.host.later())\nexcept async_py.HostError as e:\n    f = str(e)"])
        self.assertEqual(self.child.reply(), ["host", 2, "later", [], {}])
        self.child.send(["host_reply", 2, False, "no"])
        self.assertEqual(self.child.reply(), [4, "ok", None])
        self.assertEqual(self.child.request([5, "eval", "f"]), [5, "ok", "no"])

    def test_a_cancelled_await_sends_host_cancel(self):
        self.child.send([1, "run", "import async_py\nasync def wait():\n    return await async_py.host.later()"])
        self.assertEqual(self.child.reply(), [1, "ok", None])
        self.child.send([2, "call_async", "wait", [], 0.2])
        self.assertEqual(self.child.reply(), ["host", 1, "later", [], {}])
        self.assertEqual(self.child.reply(), ["host_cancel", 1])
        self.assertEqual(self.child.reply(), [2, "timeout"])
        # The late reply is ignored; the child serves on.
        self.child.send(["host_reply", 1, True, "late"])
        self.assertEqual(self.child.request([3, "eval", "1"]), [3, "ok", 1])

    def test_a_call_from_another_thread_raises_host_error(self):
        code = (
            "import async_py, threading\n"
            "caught = []\n"
            "def call():\n"
            "    try:\n"
            "        async_py.host.add(1)\n"
            "    except async_py.HostError as exc:\n"
            "        caught.append(str(exc))\n"
            "t = threading.Thread(target=call)\n"
            "t.start()\n"
            "t.join()\n"
        )
        self.assertEqual(self.child.request([1, "run", code]), [1, "ok", None])
        reply = self.child.request([2, "eval", "caught"])
        self.assertIn("thread", reply[2][0])


class NoHostTests(unittest.TestCase):
    def test_a_child_without_functions_has_the_module(self):
        child = Child(sys.executable)
        self.addCleanup(child.finish)
        self.assertEqual(child.reply()[0], "hello")
        reply = child.request([1, "eval", "repr(__import__('async_py').host)"])
        self.assertEqual(reply, [1, "ok", "<async_py.host: no functions>"])


if __name__ == "__main__":
    unittest.main()


class HostFrameTests(unittest.TestCase):
    """The fixed-shape paths of a host call's frames, against the general
    codec."""

    def test_a_reply_is_read_as_the_general_decoder_reads_it(self):
        for hid in (0, 127, 128, 70000, 1 << 40):
            for ok, value in ((True, None), (True, [1, "é", {"k": b"\x00"}]), (False, "it failed"), (True, 2.5)):
                frame = worker.pack([ "host_reply", hid, ok, value])
                self.assertEqual(worker._host_reply_fields(frame), (hid, ok, worker.unpack(frame)[3]))

    def test_a_reply_of_another_shape_takes_the_general_decoder(self):
        for message in (["host_reply", 1, 1, 2], ["host_reply", -1, True, 2], ["host_reply", 1, True]):
            self.assertIsNone(worker._host_reply_fields(worker.pack(message)))
        self.assertIsNone(worker._host_reply_fields(worker.pack(["host_reply", 1, True, 2]) + b"\xc0"))

    def test_a_call_is_packed_as_the_general_packer_packs_it(self):
        sent = []

        class Fake(worker.ChildHost):
            pack_data = staticmethod(worker.pack_typed)
            main_thread = worker._thread.get_ident()
            writing = False

            def _send(self, payload):
                sent.append(payload)

            def _flush(self):
                pass

        fake = Fake()
        for hid_start, args, kwargs in ((0, (1, b"\x01"), {}), (300, ([1.5, None],), {"k": "v"}), (1 << 33, (), {})):
            fake.host_next = hid_start
            fake._send_host_call("tick", args, kwargs)
            expected = worker.pack_typed(["host", hid_start + 1, "tick", list(args), kwargs])
            self.assertEqual(sent.pop(), expected)
