# Run once in every RustPython runner, before any user code.
#
# RustPython's native `_json` parses nested arrays and objects by recursing
# on the runner's native stack, with no check of its own: a document nested
# about 190 000 deep (release build; about 20 000 in a debug build of
# rustpython-stdlib) overflows the stack and aborts the whole process. The
# scanner is wrapped here so that a document nested deeper than _MOST is
# refused with RecursionError before the native parser sees it. (CPython
# refuses past its recursion limit, 1000 by default.) Only a document with
# more than _MOST opening brackets, strings included, is looked at closely;
# that look costs about twice the parse. The native parser is kept: json's
# pure-Python one is hundreds of times slower here.
from itertools import accumulate as _accumulate, repeat as _repeat

import _json

_MOST = 5_000

_native_make_scanner = _json.make_scanner

# Everything that can stand outside a string in a JSON document, bar the
# brackets: what is left of a stretch between strings is its brackets (and
# whatever invalid characters it holds, which the parser reports).
_NOT_BRACKETS = str.maketrans("", "", "0123456789 \t\r\n,:.-+eEtrufalsnIiyNa")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _deeper_than(text, start, limit):
    """Whether arrays and objects in text[start:] nest deeper than `limit`
    (brackets inside strings do not count)."""
    parts = text[start:].split('"')
    if '\\"' in text:
        # Some quote may be escaped (an odd run of backslashes before it):
        # the parts between strings are found one by one.
        between = []
        inside = False
        for part in parts:
            if not inside:
                between.append(part)
                inside = True
            elif (len(part) - len(part.rstrip("\\"))) % 2 == 0:
                inside = False
    else:
        between = parts[0::2]
    brackets = "".join(between).translate(_NOT_BRACKETS)
    depths = _accumulate(map(_STEP.get, brackets, _repeat(0)))
    return max(depths, default=0) > limit


def _make_scanner(context):
    scan = _native_make_scanner(context)

    def scan_once(text, start):
        if type(text) is str and text.count("[", start) + text.count("{", start) > _MOST:
            if _deeper_than(text, start, _MOST):
                raise RecursionError(
                    "maximum recursion depth exceeded while decoding a JSON document "
                    "(nested deeper than %d)" % _MOST
                )
        return scan(text, start)

    return scan_once


_json.make_scanner = _make_scanner
