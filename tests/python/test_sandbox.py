"""Tests of python/sandbox.py: how a child reads its sandbox settings, and
that a step it cannot take ends it before its hello, with the reason on
stderr. (What the sandbox refuses is tested end to end with real attack code
in tests/it/sandbox.rs and tests/it/sandbox_attacks.rs.)

    python3 -m unittest discover -s tests/python -v
"""

import os
import sys
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_worker import Child, Exited, worker  # noqa: E402


class SettingsTests(unittest.TestCase):
    def test_lines_split_on_newlines_only_and_values_keep_equals_signs(self):
        settings = worker.parse_sandbox("a=1\nfilter=ab,cd\nodd=x=y\u2028z\n\nnot a pair\n")
        self.assertEqual(settings, {"a": "1", "filter": "ab,cd", "odd": "x=y\u2028z"})

    def test_paths_are_hex_of_their_bytes(self):
        raw = b"/tmp/with space/\xff\n"
        settings = {"scratch": raw.hex()}
        self.assertEqual(os.fsencode(worker._path(settings, "scratch")), raw)
        self.assertEqual(worker._path({}, "cgroup"), "")


def sandboxed_child(setting):
    with mock.patch.dict(os.environ, {"ASYNC_PY_SANDBOX": setting}):
        return Child(sys.executable)


class FailedStepTests(unittest.TestCase):
    def assert_ends_before_hello(self, setting, why):
        child = sandboxed_child(setting)
        self.addCleanup(child.finish)
        first = child.reply()
        self.assertIsInstance(first, Exited, "it said %r" % (first,))
        self.assertEqual(child.process.wait(10), 1)
        self.assertIn("could not enter the sandbox: " + why, child.stderr())

    def test_a_missing_open_file_limit(self):
        self.assert_ends_before_hello("ruleset=-1\nnetwork=0\n", "setting the open-file limit")

    def test_a_cgroup_that_is_not_hex(self):
        self.assert_ends_before_hello("ruleset=-1\ncgroup=zz\nnofile=64\n", "reading its cgroup")

    def test_a_ruleset_that_is_not_a_number(self):
        self.assert_ends_before_hello("nofile=64\n", "finding its landlock ruleset")

    def test_a_scratch_folder_that_is_not_there(self):
        # It gets as far as its namespaces only where it may make them.
        setting = "ruleset=-1\nnofile=64\nnetwork=0\nmount_setattr=442\nscratch=%s\n" % b"/no/such/folder".hex()
        child = sandboxed_child(setting)
        self.addCleanup(child.finish)
        self.assertIsInstance(child.reply(), Exited)
        self.assertIn("could not enter the sandbox: ", child.stderr())


if __name__ == "__main__":
    unittest.main()
