# Run once in every RustPython runner, before any user code.
#
# RustPython's native `_json` parses nested arrays and objects by recursing
# on the runner's native stack, with no check of its own: a document nested
# about 190 000 deep (release build; about 20 000 in a debug build of
# rustpython-stdlib) overflows the stack and aborts the whole process. The
# scanner is wrapped here so that a document nested deeper than _MOST (less
# on a thread with a smaller stack, see _most) is refused with
# RecursionError before the native parser sees it. (CPython
# refuses past its recursion limit, 1000 by default.) Only a document with
# more opening brackets than that, strings included, is looked at closely.
# The native parser is kept: json's pure-Python one is hundreds of times
# slower here.
from itertools import accumulate as _accumulate, repeat as _repeat

import _json
import _thread

_MOST = 5_000

# The guard runs on the runner's own thread, whose stack is 32 MiB; other
# threads get the size `_thread.stack_size` names, 2 MiB when it names none.
# A level of nesting takes under 4 KiB of it, even in a debug build.
_RUNNER = _thread.get_ident()
_RUNNER_STACK = 32 << 20
_THREAD_STACK = 2 << 20
_BYTES_PER_LEVEL = 4096


def _most():
    """How deep a document may nest on the calling thread."""
    if _thread.get_ident() == _RUNNER:
        stack = _RUNNER_STACK
    else:
        stack = getattr(_thread, "stack_size", lambda: 0)() or _THREAD_STACK
    return min(_MOST, stack // _BYTES_PER_LEVEL)

_native_make_scanner = _json.make_scanner

# Everything that can stand outside a string in a JSON document, bar the
# brackets: what is left of a stretch between strings is its brackets (and
# whatever invalid characters it holds, which the parser reports).
_NOT_BRACKETS = str.maketrans("", "", "0123456789 \t\r\n,:.-+eEtrufalsnIiyNa")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _deeper_than(text, start, limit):
    """Whether arrays and objects in text[start:] nest deeper than `limit`
    (brackets inside strings do not count). The methods of str itself are
    used throughout: a subclass of str could answer otherwise."""
    rest = str.__getitem__(text, slice(start, None))
    # Escaped backslashes go first, then escaped quotes: every quote left
    # opens or closes a string, and the stretches between strings are the
    # even parts.
    rest = str.replace(str.replace(rest, "\\\\", ""), '\\"', "")
    brackets = "".join(rest.split('"')[0::2]).translate(_NOT_BRACKETS)
    depths = _accumulate(map(_STEP.get, brackets, _repeat(0)))
    return max(depths, default=0) > limit


def _make_scanner(context):
    scan = _native_make_scanner(context)

    def scan_once(text, start):
        if isinstance(text, str):
            most = _most()
            opening = str.count(text, "[", start) + str.count(text, "{", start)
            if opening > most and _deeper_than(text, start, most):
                raise RecursionError(
                    "maximum recursion depth exceeded while decoding a JSON document "
                    "(nested deeper than %d)" % most
                )
        return scan(text, start)

    return scan_once


_json.make_scanner = _make_scanner
