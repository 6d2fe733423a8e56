"""Tests of python/host.py as a backend whose async host functions finish
on another thread uses it: the loop is woken through a socket
(`host_wake_on`), and the futures are settled on the loop's thread.

    python3 -m unittest discover -s tests/python -v
"""

import asyncio
import os
import socket
import sys
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_worker import worker  # noqa: E402  (the joined worker, as a module)


class ThreadedHost:
    """A stand-in for the Rust side: each call finishes on a thread of its
    own after `delay`, puts its result aside and writes a byte to the
    socket; `drain` settles what finished."""

    def __init__(self, delay):
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.delay = delay
        self.finished = []
        self.pending = {}
        self.cancelled = []
        self.next_token = 1
        self.lock = threading.Lock()
        self.drained_by = []

    def start(self, args, kwargs, future):
        worker.host_wake_on(future.get_loop(), self.reader.fileno(), self.drain)
        token = self.next_token
        self.next_token += 1
        self.pending[token] = future

        def finish():
            with self.lock:
                self.finished.append((token, [args, kwargs]))
            self.writer.send(b"\x01")

        timer = threading.Timer(self.delay, finish)
        timer.daemon = True
        timer.start()
        return token

    def cancel(self, token):
        self.cancelled.append(token)
        self.pending.pop(token, None)

    def drain(self, loop):
        self.drained_by.append(loop)
        try:
            while self.reader.recv(256):
                pass
        except BlockingIOError:
            pass
        with self.lock:
            finished, self.finished = self.finished, []
        for token, value in finished:
            future = self.pending.pop(token, None)
            if future is not None:
                worker.settle_host(future, True, value)

    def close(self):
        self.reader.close()
        self.writer.close()


class HostWakeTests(unittest.TestCase):
    def setUp(self):
        worker.host_module()
        self.host = ThreadedHost(0.05)
        self.addCleanup(self.host.close)
        self.call = worker.host_coroutine("slow", self.host.start, self.host.cancel)

    def test_calls_awaited_together_overlap_and_get_their_values(self):
        async def main():
            return await asyncio.gather(*(self.call(i, k=i) for i in range(20)))

        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        started = loop.time()
        results = loop.run_until_complete(main())
        self.assertEqual(results, [[(i,), {"k": i}] for i in range(20)])
        self.assertLess(loop.time() - started, 0.5)

    def test_each_loop_is_watched_once_and_a_new_loop_again(self):
        for _ in range(2):
            loop = asyncio.new_event_loop()
            self.addCleanup(loop.close)
            loop.run_until_complete(self.call(1))
            loop.run_until_complete(self.call(2))
            self.assertEqual(loop._async_py_host_wake, {self.host.reader.fileno()})
            self.assertEqual(len(loop._selector.get_map()), 2)  # its self-pipe and ours
            self.assertIs(self.host.drained_by[-1], loop)  # the drain is told its loop

    def test_a_loop_may_watch_several_sockets(self):
        other = ThreadedHost(0.05)
        self.addCleanup(other.close)
        other_call = worker.host_coroutine("other", other.start, other.cancel)

        async def main():
            return await asyncio.gather(self.call(1), other_call(2))

        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        self.assertEqual(loop.run_until_complete(main()), [[(1,), {}], [(2,), {}]])
        self.assertEqual(loop._async_py_host_wake, {self.host.reader.fileno(), other.reader.fileno()})

    def test_a_cancelled_await_cancels_the_call_and_a_late_result_is_dropped(self):
        async def main():
            try:
                await asyncio.wait_for(self.call(1), 0.01)
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(0.1)  # the call finishes meanwhile: nothing to settle

        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        loop.run_until_complete(main())
        self.assertEqual(self.host.cancelled, [1])
        self.assertEqual(self.host.pending, {})

    def test_an_error_raises_host_error(self):
        async def main():
            future = asyncio.get_running_loop().create_future()
            worker.settle_host(future, False, "it failed")
            worker.settle_host(future, True, "ignored: already settled")
            return await future

        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        with self.assertRaises(sys.modules["async_py"].HostError) as raised:
            loop.run_until_complete(main())
        self.assertEqual(str(raised.exception), "it failed")


if __name__ == "__main__":
    unittest.main()
