"""python/*.py joined into the worker, as build.rs joins them for the crate.

`WORKER` is the path of the joined child source (a temporary file, removed
at exit), which the tests run as a child and import as the module `worker`.
"""

import atexit
import os
import shutil
import tempfile

PYTHON_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))


def modules():
    """{"in-process": [file, ...], "child": [file, ...]} from python/MODULES."""
    groups = {}
    group = None
    with open(os.path.join(PYTHON_DIR, "MODULES")) as listing:
        for line in listing:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                group = groups.setdefault(line.strip("[]"), [])
            else:
                group.append(line)
    return groups


def without_comment_lines(text):
    """The text with each line that is only a comment left empty."""
    return "\n".join("" if line.lstrip().startswith("#") else line for line in text.rstrip("\n").split("\n"))


def joined(names):
    """The modules' text in this order, each under a line naming it, with
    comment-only lines left empty (as build.rs does)."""
    parts = []
    for name in names:
        with open(os.path.join(PYTHON_DIR, name), encoding="utf-8") as module:
            parts.append("# python/%s\n%s\n" % (name, without_comment_lines(module.read())))
    return "\n\n".join(parts)


def argument_pieces(source, size=96 << 10):
    """The source in pieces of at most `size` bytes cut after line ends, as
    the crate passes it to the bootstrap (one argument may not pass 128 KiB)."""
    pieces = []
    piece = []
    length = 0
    for line in source.splitlines(keepends=True):
        taken = len(line.encode("utf-8"))
        if piece and length + taken > size:
            pieces.append("".join(piece))
            piece, length = [], 0
        piece.append(line)
        length += taken
    pieces.append("".join(piece))
    return pieces


def in_process_source():
    return joined(modules()["in-process"])


def child_source():
    groups = modules()
    return joined(groups["in-process"] + groups["child"])


_folder = tempfile.mkdtemp(prefix="async_py-worker-")
atexit.register(shutil.rmtree, _folder, True)
WORKER = os.path.join(_folder, "worker.py")
with open(WORKER, "w", encoding="utf-8") as _worker:
    _worker.write(child_source())
