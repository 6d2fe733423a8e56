"""Python side of async_py.

This file serves two masters. The in-process (PyO3) backend loads it as a
module and calls its helpers, so both backends give the same answers for
the same code. The subprocess backend runs it as a program (`python
worker.py`, or its source through `python -c`); `main()` then speaks the
wire protocol of PROTOCOL.md beside this file:

- frames are a 4-byte big-endian length and one MessagePack value;
- the child first sends `["hello", 2, "3.11.7", pid, executable, ring]`;
- with the reply ring the parent offers (shared memory), replies go there
  and stdout carries only doorbells;
- requests are `[id, op, ...]` (ops `run`, `run_file`, `eval`, `read`,
  `call`, `call_async`, `set_venv`, `stop`) and are handled in arrival order;
- replies are `[id, "ok", value]`, `[id, "err", kind, message, traceback]`,
  `[id, "conv", message]` or `[id, "timeout"]`; only `call_async` replies
  can come back out of order;
- `["out"]` goes before the replies that follow output written through
  sys.stdout or sys.stderr, which is in the stderr pipe by then.

It uses the standard library only, and runs on CPython 3.8 and later. It
carries its own MessagePack codec, and uses the C `msgpack` package instead
when the interpreter has it.
"""

import builtins
import functools
import io
import math
import marshal
import mmap
import operator
import os
import reprlib
import select
import signal
import site
import struct
import sys
import time
import traceback
from array import array

_HERE = globals().get("__file__", "<async_py>")


class RunnerTimeout(BaseException):
    """Raised inside code that ran past its limit.

    A BaseException, so that ``except Exception`` in user code does not
    swallow it and keep a timed-out loop running.
    """


def new_globals():
    """A fresh namespace for one runner: what a script sees at top level."""
    return {"__name__": "__main__", "__builtins__": builtins}


def _compile_without_nul(source, filename, mode):
    if not isinstance(source, (str, bytes)):
        return source  # compiled already, by the RustPython backend
    if (b"\0" if isinstance(source, bytes) else "\0") in source:
        raise ValueError("source code string cannot contain null bytes")
    return compile(source, filename, mode)


# RustPython's parser calls a NUL byte plain invalid syntax; this says what
# CPython up to 3.11 says (3.12 raises SyntaxError with the same message).
# CPython keeps its own check and pays nothing for this one.
_compile = _compile_without_nul if sys.implementation.name == "rustpython" else compile


def run_code(code, namespace):
    exec(_compile(code, "<string>", "exec"), namespace)


def eval_expr(expr, namespace):
    return eval(_compile(expr, "<string>", "eval"), namespace)


def native_path(path):
    """A path as str: the bytes of one that is not UTF-8 (an array of ints
    on the wire, bytes in process) are decoded as os.fsdecode does, so the
    os functions find the same file."""
    if isinstance(path, str):
        return path
    return os.fsdecode(bytes(path))


def run_file(path, namespace, code=None):
    """Runs a file (or `code`, compiled from it) in the namespace, with its
    folder first on sys.path."""
    path = os.path.abspath(native_path(path))
    if code is None:
        with open(path, "rb") as source_file:
            source = source_file.read()
    else:
        source = code
    folder = os.path.dirname(path)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    namespace["__file__"] = path
    exec(_compile(source, path, "exec"), namespace)


def resolve(name, namespace):
    """Looks up `a.b.c`: `a` in the namespace (then builtins), the rest as attributes."""
    first, dot, rest = name.partition(".")
    try:
        target = namespace[first]
    except KeyError:
        try:
            target = getattr(builtins, first)
        except AttributeError:
            raise NameError("name %r is not defined" % first) from None
    if dot:
        for part in rest.split("."):
            target = getattr(target, part)
    return target


def venv_site_packages(venv):
    """The site-packages folder of a venv, preferring this interpreter's version."""
    if not os.path.isdir(venv):
        raise FileNotFoundError("venv folder not found: %s" % venv)
    windows = os.path.join(venv, "Lib", "site-packages")
    if os.path.isdir(windows):
        return windows
    version = "python%d.%d" % sys.version_info[:2]
    for lib in ("lib", "lib64"):
        exact = os.path.join(venv, lib, version, "site-packages")
        if os.path.isdir(exact):
            return exact
    found = []
    seen = set()
    for lib in ("lib", "lib64"):
        lib_dir = os.path.join(venv, lib)
        if os.path.isdir(lib_dir):
            for entry in sorted(os.listdir(lib_dir)):
                candidate = os.path.join(lib_dir, entry, "site-packages")
                # lib64 is often a link to lib: name each folder once, by lib.
                real = os.path.realpath(candidate)
                if entry.startswith("python") and os.path.isdir(candidate) and real not in seen:
                    seen.add(real)
                    found.append(candidate)
    if not found:
        raise FileNotFoundError("no site-packages folder in venv: %s" % venv)
    return found[-1]


def venv_version(venv):
    """(major, minor) of the Python a venv was made for, from its pyvenv.cfg,
    or None where the file does not say (venv writes `version`, uv and
    virtualenv `version_info`)."""
    try:
        with open(os.path.join(venv, "pyvenv.cfg"), encoding="utf-8", errors="replace") as cfg:
            lines = cfg.read().splitlines()
    except OSError:
        return None
    for line in lines:
        key, eq, value = line.partition("=")
        if eq and key.strip() in ("version", "version_info"):
            parts = value.strip().split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return int(parts[0]), int(parts[1])
    return None


def check_venv_version(venv):
    """Refuses a venv made for another CPython minor version: its compiled
    packages would fail later with an import error that names neither.
    RustPython runs pure-Python packages of any CPython venv, so it is not asked."""
    if sys.implementation.name != "cpython":
        return
    made_for = venv_version(venv)
    running = sys.version_info[:2]
    if made_for is not None and made_for != running:
        raise ImportError(
            "venv %s was made for Python %d.%d, but this interpreter is Python %s: "
            "its packages would not import. Make the venv with this interpreter "
            "(uv venv --python %d.%d), or run the venv's own interpreter with the "
            "subprocess backend (PyRunner::builder().subprocess().venv(dir))"
            % ((venv,) + made_for + ("%d.%d.%d" % sys.version_info[:3],) + running)
        )


def set_venv(venv):
    """Puts a venv's site-packages (and what its .pth files name) first on sys.path."""
    venv = os.path.abspath(native_path(venv))
    check_venv_version(venv)
    packages = venv_site_packages(venv)
    before = set(sys.path)
    site.addsitedir(packages)
    added = [entry for entry in sys.path if entry not in before]
    for entry in added:
        sys.path.remove(entry)
    sys.path[0:0] = added
    return packages


def _user_traceback(exc):
    """The exception's traceback without this module's own frames at the top."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == _HERE:
        tb = tb.tb_next
    return tb


def describe_error(exc):
    """(class name, str(), formatted traceback) of an exception, as text
    UTF-8 can carry (lone surrogates escaped)."""
    try:
        message = str(exc)
    except BaseException:
        message = "<exception str() failed>"
    try:
        lines = traceback.format_exception(type(exc), exc, _user_traceback(exc))
        text = "".join(lines)
    except BaseException:
        text = None
    return _wire_text(type(exc).__name__), _wire_text(message), _wire_text(text)


class CoroutineDriver:
    """One long-lived asyncio event loop that runs every awaited call of a runner.

    Calls overlap at their await points, and asyncio objects made in one call
    (futures, locks, sessions) stay usable in the next, because they all
    belong to this loop. The host drives the loop in turns: `turn(False)`
    runs what is ready and returns; `turn(True)` blocks until a call
    finishes or the host writes to its wake-up fd.
    """

    def __init__(self, wake_fd=None):
        _import_asyncio()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.finished = []
        self.pending = 0
        self.turning = False
        if wake_fd is not None:
            self.loop.add_reader(wake_fd, self._on_wake, wake_fd)

    def start(self, token, function, args, limit):
        """Calls `function(*args)`; schedules the result if it is awaitable.

        Returns (False, value) when there was nothing to await, else (True, None)
        and the outcome later appears in `finished` as (token, ok, value).
        """
        result = function(*args)
        if not inspect.isawaitable(result):
            return False, result
        asyncio.set_event_loop(self.loop)
        ended = []
        if limit is not None:
            result = self._noting_end(result, ended)
        task = asyncio.ensure_future(result, loop=self.loop)
        timer = None
        if limit is not None:
            timer = self.loop.call_later(limit, self._expire, task)
        task.add_done_callback(functools.partial(self._done, token, timer, ended))
        self.pending += 1
        return True, None

    async def _noting_end(self, awaitable, ended):
        """Awaits a limited call, noting when it ended: its done callback
        may run much later, if another coroutine keeps the loop meanwhile."""
        try:
            return await awaitable
        finally:
            ended.append(self.loop.time())

    def _expire(self, task):
        task.async_py_expired = True
        task.cancel()

    def _done(self, token, timer, ended, task):
        # Past its limit, a call is a timeout however it ended: cancelled
        # at the limit, going on after its cancellation, or keeping the
        # loop (no await) so that the cancellation never came.
        late = timer is not None and (
            getattr(task, "async_py_expired", False) or (ended and ended[0] >= timer.when())
        )
        if timer is not None:
            timer.cancel()
        self.pending -= 1
        if late:
            if not task.cancelled():
                task.exception()  # taken, or asyncio would log it as never retrieved
            outcome = (token, False, "timeout")
        elif task.cancelled():
            outcome = (token, False, "cancelled")
        elif task.exception() is not None:
            outcome = (token, False, task.exception())
        else:
            outcome = (token, True, task.result())
        self.finished.append(outcome)
        self.wake()

    def _on_wake(self, fd):
        try:
            os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            pass
        self.wake()

    def wake(self):
        """Ends the current `turn`. Outside one it does nothing: the loop may
        then be running user code's own `run_until_complete`, which a stop
        would break."""
        if self.turning:
            self.loop.stop()

    def turn(self, block):
        """Runs the loop once (block=False) or until woken; returns what finished."""
        if not block or self.finished:
            self.loop.call_soon(self.loop.stop)
        self.turning = True
        try:
            self.loop.run_forever()
        finally:
            self.turning = False
        finished, self.finished = self.finished, []
        return finished

    def cancel_all(self):
        """Cancels every pending call, gives them a moment to unwind, closes the loop."""
        tasks = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
        self.loop.close()


def _import_asyncio():
    """Imports asyncio when the first CoroutineDriver is made: it is by far
    the slowest import here, and a child that never awaits starts without it."""
    global asyncio, inspect
    import asyncio
    import inspect


def _prepare_embedded():
    """Gives an embedded interpreter the process attributes scripts expect."""
    if not hasattr(sys, "argv") or not sys.argv:
        sys.argv = [""]


# ---------------------------------------------------------------------------
# Values on the wire: the value table and a small MessagePack codec.
#
# `pack` turns a Python object into MessagePack by the value table in the
# crate docs, and `unpack` turns one MessagePack value back into Python.
# Most values take the plain recursive path. Two fast paths keep big
# homogeneous lists cheap, because their per-item cost would dominate a call:
# a long list of plain ints or floats is packed with `array` and strided
# `bytearray` copies, and a run of same-width numbers inside an array is
# unpacked the same way.
# ---------------------------------------------------------------------------

MAX_DEPTH = 200
"""How deeply values may nest; the same limit as the Rust side's."""

_TOO_DEEP = "value nests deeper than %d levels (or contains itself)" % MAX_DEPTH
_LONE_SURROGATE = "str holds a lone surrogate, which UTF-8 cannot carry"


class ConversionError(Exception):
    """A value that has no form in the value table (a `conv` reply)."""


class FrameError(Exception):
    """Bytes that are not exactly one valid MessagePack value."""


class _TooDeep(Exception):
    """A request nests deeper than the value table allows."""


def _int_too_large(value):
    return "int of %d bits does not fit in a 64-bit integer (i64 or u64)" % value.bit_length()


_BYTE = [bytes((i,)) for i in range(256)]
_U8 = struct.Struct(">BB").pack
_U16 = struct.Struct(">BH").pack
_U32 = struct.Struct(">BI").pack
_U64 = struct.Struct(">BQ").pack
_I8 = struct.Struct(">Bb").pack
_I16 = struct.Struct(">Bh").pack
_I32 = struct.Struct(">Bi").pack
_I64 = struct.Struct(">Bq").pack
_F64 = struct.Struct(">Bd").pack
_isfinite = math.isfinite
_marshal_dumps = marshal.dumps

# Lists at least this long are tried as a whole (all ints or all floats)
# before item by item; arrays this long are scanned for runs of numbers.
_RUN_MIN = 16


def _typecode(size, signed):
    """The `array` type code of a machine integer of `size` bytes."""
    for code in ("bhilq" if signed else "BHILQ"):
        if array(code).itemsize == size:
            return code
    raise RuntimeError("no array type code for %d-byte integers" % size)


_BIG_ENDIAN_HOST = sys.byteorder == "big"


def pack(value):
    """MessagePack bytes of `value` by the value table.

    Raises ConversionError for a value with no form in the table; an
    exception raised by `str(obj)` of some object propagates.
    """
    if type(value) is int:
        return _int_bytes(value)  # the commonest reply
    out = []
    _pack(value, out, 0)
    return b"".join(out)


def _pack(obj, out, depth):
    kind = type(obj)
    if kind is str:
        _pack_str(obj, out)
    elif kind is int:
        out.append(_int_bytes(obj))
    elif obj is None:
        out.append(b"\xc0")
    elif kind is bool:
        out.append(b"\xc3" if obj else b"\xc2")
    elif kind is float:
        out.append(_F64(0xCB, obj) if _isfinite(obj) else b"\xc0")
    elif kind is list or kind is tuple:
        _pack_array(obj, out, depth)
    elif kind is dict:
        _pack_map(obj, out, depth)
    else:
        _pack_other(obj, out, depth)


def _pack_other(obj, out, depth):
    """Subclasses of the table's types, sets, bytes, and everything else."""
    # The same order as the table: bool is caught by _pack, int comes before float.
    # A subclass's stored value, not what its own __int__, __float__ or
    # __str__ (a str Enum) would say: the in-process backend reads the same.
    if isinstance(obj, int):
        out.append(_int_bytes(int.__int__(obj)))
    elif isinstance(obj, float):
        _pack(float.__float__(obj), out, depth)
    elif isinstance(obj, str):
        _pack_str(obj, out)
    elif isinstance(obj, (list, tuple)):
        _pack_array(obj, out, depth)
    elif isinstance(obj, dict):
        _pack_map(obj, out, depth)
    elif isinstance(obj, (set, frozenset)):
        _pack_array(list(obj), out, depth)
    elif isinstance(obj, (bytes, bytearray)):
        _pack_bytes(obj, out)
    else:
        if depth >= MAX_DEPTH:
            raise ConversionError(_TOO_DEEP)
        _pack(table_form(obj), out, depth + 1)


def table_form(obj):
    """What the value table makes of an object that none of its exact rows
    (None, bool, int, float, str, list, tuple, dict, set, bytes) fits: an
    object that one of them, or this function again, turns into a value.

    It imports nothing: a row whose module user code has not imported
    cannot match, since no object of it can exist yet.
    """
    kind = type(obj)
    if hasattr(kind, "__index__"):  # numpy integers; numpy's bool_ refuses
        try:
            return operator.index(obj)
        except TypeError:
            pass
    real = _loaded("numbers", "Real")
    if real is not None and isinstance(obj, real) and hasattr(kind, "__float__"):
        return float(obj)  # numpy floats, Fraction
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()  # numpy arrays and scalars (bool_), array.array
    fields = _loaded("dataclasses", "fields")
    if fields is not None and hasattr(kind, "__dataclass_fields__") and not isinstance(obj, type):
        return {field.name: getattr(obj, field.name) for field in fields(obj)}
    mapping = _loaded("collections.abc", "Mapping")
    if mapping is not None and isinstance(obj, mapping):
        return dict(obj.items())
    date, time_of_day = _loaded("datetime", "date"), _loaded("datetime", "time")
    if date is not None and time_of_day is not None and isinstance(obj, (date, time_of_day)):
        return obj.isoformat()  # datetime is a date
    return str(obj)


def _loaded(module, name):
    """`module.name` if user code has imported the module, else None. A
    module another thread is importing right now may lack the name yet."""
    return getattr(sys.modules.get(module), name, None)


def _int_bytes(value):
    """The shortest MessagePack form of an int."""
    if value >= 0:
        if value < 0x80:
            return _BYTE[value]
        elif value <= 0xFF:
            return _U8(0xCC, value)
        elif value <= 0xFFFF:
            return _U16(0xCD, value)
        elif value <= 0xFFFFFFFF:
            return _U32(0xCE, value)
        elif value <= 0xFFFFFFFFFFFFFFFF:
            return _U64(0xCF, value)
        else:
            raise ConversionError(_int_too_large(value))
    elif value >= -0x20:
        return _BYTE[value + 0x100]
    elif value >= -0x80:
        return _I8(0xD0, value)
    elif value >= -0x8000:
        return _I16(0xD1, value)
    elif value >= -0x80000000:
        return _I32(0xD2, value)
    elif value >= -0x8000000000000000:
        return _I64(0xD3, value)
    else:
        raise ConversionError(_int_too_large(value))


_encode_str = str.encode


def _pack_str(text, out):
    try:
        data = _encode_str(text, "utf-8")  # a subclass's characters, whatever its own encode does
    except UnicodeEncodeError:
        raise ConversionError(_LONE_SURROGATE) from None
    size = len(data)
    if size < 32:
        out.append(_BYTE[0xA0 | size])
    elif size <= 0xFF:
        out.append(_U8(0xD9, size))
    elif size <= 0xFFFF:
        out.append(_U16(0xDA, size))
    elif size <= 0xFFFFFFFF:
        out.append(_U32(0xDB, size))
    else:
        raise ConversionError("str of %d bytes is too long for MessagePack" % size)
    out.append(data)


def _pack_header(size, fix, marker16, out):
    """The header of an array (fix=0x90) or a map (fix=0x80) of `size` items."""
    if size < 16:
        out.append(_BYTE[fix | size])
    elif size <= 0xFFFF:
        out.append(_U16(marker16, size))
    elif size <= 0xFFFFFFFF:
        out.append(_U32(marker16 + 1, size))
    else:
        raise ConversionError("a container of %d items is too long for MessagePack" % size)


def _pack_array(items, out, depth):
    size = len(items)
    _pack_header(size, 0x90, 0xDC, out)
    if not size:
        return
    if depth >= MAX_DEPTH:
        raise ConversionError(_TOO_DEEP)
    if size >= _RUN_MIN and _pack_numbers(items, out):
        return
    if type(items) is not tuple:
        # A copy (no user code ran since the header): str() of an item may
        # change the list, and the header must count what follows it.
        items = tuple(items)
    depth += 1
    for item in items:
        _pack(item, out, depth)


def _pack_map(mapping, out, depth):
    items = list(mapping.items())  # a copy, as in _pack_array
    size = len(items)
    _pack_header(size, 0x80, 0xDE, out)
    if not size:
        return
    if depth >= MAX_DEPTH:
        raise ConversionError(_TOO_DEEP)
    depth += 1
    for key, item in items:
        _pack_str(key if isinstance(key, str) else str(key), out)
        _pack(item, out, depth)


def _pack_bytes(data, out):
    """bytes and bytearray go as an array of ints 0..255."""
    size = len(data)
    _pack_header(size, 0x90, 0xDC, out)
    if size:
        _pack_bytes_as_ints(data, out)


def _pack_bytes_as_ints(data, out):
    """The items of a non-empty run of ints 0..255, given as bytes."""
    if max(data) < 0x80:
        out.append(bytes(data))  # every byte is already a positive fixint
    else:
        out.append(_interleave(b"\xcc", data, 1))


def _pack_numbers(items, out):
    """Packs a list of only plain ints or only finite floats with C-level loops.

    Every item gets the same encoding, the first that holds them all.
    Returns False, having packed nothing, for any other list; the
    item-by-item path then handles it (and names a too-large int). No user
    code runs here: bytes(), sum() and array() only ever see lists that
    marshal or a check of types has shown to hold plain ints or floats.
    Lists of small ints are only checked by marshal, not rewritten from it.
    """
    first = type(items[0])
    if (first is not int and first is not float) or type(items[-1]) is not first:
        return False
    flat = _marshalled(items, first)
    if flat is None:
        # Not all plain floats, or not all plain ints within 32 bits.
        if first is float or set(map(type, items)) != {int}:
            return False
        # The first of these that holds every item; array() stops at the
        # first item out of its range.
        for marker, code, width in _WIDE_INTS:
            try:
                numbers = array(code, items)
            except OverflowError:
                continue
            out.append(_interleave(marker, _big_endian(numbers), width))
            return True
        return False
    if first is float:
        if not _isfinite(sum(items)):
            return False  # NaN or an infinity somewhere: they become nil one by one
        out.append(_from_marshal(flat, first, len(items)))
        return True
    try:
        small = bytes(items)  # succeeds when every item is in 0..255
    except ValueError:
        out.append(_from_marshal(flat, first, len(items)))
        return True
    _pack_bytes_as_ints(small, out)
    return True


# For each type: its record's code in marshal's format (version 2), the
# width of the number after it, and the MessagePack marker for that width.
_MARSHAL_RECORDS = {int: (b"i", 4, b"\xd2"), float: (b"g", 8, b"\xcb")}


def _marshalled(items, kind):
    """marshal's copy of a list of only plain ints that fit in 32 bits or
    only floats; None for any other list.

    marshal writes such a list, in C, as "[", a 4-byte count, then for each
    item one code byte and the number, least significant byte first. Bools,
    subclasses and wider ints have other records (or none: ValueError),
    which the checks of codes and length catch.
    """
    code, width, _ = _MARSHAL_RECORDS[kind]
    try:
        flat = _marshal_dumps(items, 2)  # version 2: no back-references
    except ValueError:
        return None
    count = len(items)
    stride = width + 1
    if len(flat) != 5 + stride * count or flat[5::stride] != code * count:
        return None
    return flat


def _from_marshal(flat, kind, count):
    """The MessagePack items of a list of `count` items, from `_marshalled`'s
    copy of it: a MessagePack item is one marker and the number, most
    significant byte first, so the records have the same length, and only
    the code and the byte order change."""
    _, width, marker = _MARSHAL_RECORDS[kind]
    stride = width + 1
    body = bytearray(stride * count)  # every byte is written below
    body[0::stride] = marker * count
    for i in range(width):
        body[1 + i :: stride] = flat[5 + width - i :: stride]
    return body


# For ints past 32 bits: (MessagePack marker, array type code, width in bytes)
_WIDE_INTS = [
    (b"\xce", _typecode(4, False), 4),
    (b"\xcf", _typecode(8, False), 8),
    (b"\xd3", _typecode(8, True), 8),
]


def _big_endian(numbers):
    """The bytes of an array of numbers, most significant byte first."""
    if not _BIG_ENDIAN_HOST:
        numbers.byteswap()
    return numbers.tobytes()


def _interleave(marker, raw, width):
    """`marker` before each `width`-byte number of `raw`, by strided copies."""
    count = len(raw) // width
    stride = width + 1
    body = bytearray(stride * count)
    body[0::stride] = marker * count
    for i in range(width):
        body[1 + i :: stride] = raw[i::width]
    return body


# Unpacking. Every function takes (data, pos, depth) and returns (value, end).
# A slice that runs past the end of the data is not checked where it is
# taken: the position then ends past the end too, which `unpack` refuses.
# Requests nest two levels above their arguments ([id, op, name, [args]]).
_WIRE_DEPTH = MAX_DEPTH + 2

_unpack_u8 = struct.Struct(">B").unpack_from
_unpack_u16 = struct.Struct(">H").unpack_from
_unpack_u32 = struct.Struct(">I").unpack_from
_unpack_u64 = struct.Struct(">Q").unpack_from
_unpack_i8 = struct.Struct(">b").unpack_from
_unpack_i16 = struct.Struct(">h").unpack_from
_unpack_i32 = struct.Struct(">i").unpack_from
_unpack_i64 = struct.Struct(">q").unpack_from
_unpack_f32 = struct.Struct(">f").unpack_from
_unpack_f64 = struct.Struct(">d").unpack_from
# Numbers by marker: (reader, width after the marker). `_UNPACK_MARKER`
# reads them through these, and short arrays (call arguments) directly.
_NUMBERS = {
    0xCA: (_unpack_f32, 4),
    0xCB: (_unpack_f64, 8),
    0xCC: (_unpack_u8, 1),
    0xCD: (_unpack_u16, 2),
    0xCE: (_unpack_u32, 4),
    0xCF: (_unpack_u64, 8),
    0xD0: (_unpack_i8, 1),
    0xD1: (_unpack_i16, 2),
    0xD2: (_unpack_i32, 4),
    0xD3: (_unpack_i64, 8),
}


def unpack(data):
    """The Python value of one MessagePack value filling `data`.

    Raises FrameError for bytes that are not one valid value (truncated,
    trailing bytes, ext types, invalid UTF-8, unhashable map keys).
    """
    try:
        value, end = _unpack(data, 0, 0)
    except RecursionError:  # user code lowered the recursion limit
        raise _TooDeep() from None
    except (IndexError, struct.error, UnicodeDecodeError, TypeError, ValueError) as exc:
        raise FrameError(str(exc) or type(exc).__name__) from None
    if end > len(data):
        raise FrameError("the value runs %d bytes past the end" % (end - len(data)))
    if end < len(data):
        raise FrameError("%d bytes after the value" % (len(data) - end))
    return value


def _unpack(data, pos, depth):
    marker = data[pos]
    if marker < 0x80:
        return marker, pos + 1
    if marker >= 0xE0:
        return marker - 0x100, pos + 1
    if marker >= 0xA0:
        if marker < 0xC0:
            end = pos + 1 + (marker & 0x1F)
            return data[pos + 1 : end].decode(), end
        return _UNPACK_MARKER[marker - 0xC0](data, pos + 1, depth)
    if marker >= 0x90:
        return _unpack_array(data, pos + 1, marker & 0x0F, depth)
    return _unpack_map(data, pos + 1, marker & 0x0F, depth)


def _unpack_array(data, pos, count, depth):
    if count and depth >= _WIRE_DEPTH:
        raise _TooDeep()
    depth += 1
    items = []
    append = items.append
    if count < _RUN_MIN:
        for _ in range(count):
            marker = data[pos]
            if marker < 0x80:
                append(marker)
                pos += 1
            elif 0xA0 <= marker < 0xC0:
                end = pos + 1 + (marker & 0x1F)
                append(data[pos + 1 : end].decode())
                pos = end
            elif (number := _NUMBERS.get(marker)) is not None:
                read, width = number
                append(read(data, pos + 1)[0])
                pos += 1 + width
            else:
                value, pos = _unpack(data, pos, depth)
                append(value)
        return items, pos
    remaining = count
    while remaining:
        run = _RUNS.get(data[pos])
        if run is not None:
            size = _run_length(data, pos, remaining, run)
            if size > 1:
                end = pos + size * run.stride
                items.extend(_unpack_run(data, pos, end, run))
                remaining -= size
                pos = end
                continue
        value, pos = _unpack(data, pos, depth)
        append(value)
        remaining -= 1
    return items, pos


class _Run:
    """Numbers that share one encoding: `markers` are the bytes that can start
    one, each takes `stride` bytes, and `code` is their `array` type code."""

    def __init__(self, markers, stride, code):
        self.markers = markers
        self.stride = stride
        self.code = code


def _run_length(data, pos, limit, run):
    """How many numbers of this run's encoding follow at `pos` (at most `limit`).

    The bytes at each stride are the markers while the run lasts; the first
    one that is not ends it. They are looked at in windows that grow
    eightfold, so a short run costs a short look however many items follow.
    """
    stride = run.stride
    counted = 0
    window = 8
    while counted < limit:
        size = min(window, limit - counted)
        start = pos + counted * stride
        starts = data[start : start + stride * size : stride]
        same = len(starts) - len(starts.lstrip(run.markers))
        counted += same
        if same < size:
            break
        window *= 8
    return counted


def _unpack_run(data, pos, end, run):
    """The numbers of one run, data[pos:end], as a list or an array."""
    stride = run.stride
    if stride == 1:  # fixints: each byte is its own value
        return data[pos:end] if run.code == "B" else array(run.code, data[pos:end])
    width = stride - 1
    if width == 1:
        raw = data[pos + 1 : end : stride]
    else:
        raw = bytearray(width * ((end - pos) // stride))
        for i in range(width):
            raw[i::width] = data[pos + 1 + i : end : stride]
    numbers = array(run.code, raw)
    if not _BIG_ENDIAN_HOST:
        numbers.byteswap()
    return numbers


_POSITIVE_FIXINTS = _Run(bytes(range(0x00, 0x80)), 1, "B")
_NEGATIVE_FIXINTS = _Run(bytes(range(0xE0, 0x100)), 1, "b")
_RUNS = dict.fromkeys(range(0x00, 0x80), _POSITIVE_FIXINTS)
_RUNS.update(dict.fromkeys(range(0xE0, 0x100), _NEGATIVE_FIXINTS))
for _marker, _width, _code in [
    (0xCA, 4, "f"),
    (0xCB, 8, "d"),
    (0xCC, 1, "B"),
    (0xCD, 2, _typecode(2, False)),
    (0xCE, 4, _typecode(4, False)),
    (0xCF, 8, _typecode(8, False)),
    (0xD0, 1, "b"),
    (0xD1, 2, _typecode(2, True)),
    (0xD2, 4, _typecode(4, True)),
    (0xD3, 8, _typecode(8, True)),
]:
    _RUNS[_marker] = _Run(_BYTE[_marker], _width + 1, _code)
del _marker, _width, _code


def _unpack_map(data, pos, count, depth):
    if count and depth >= _WIRE_DEPTH:
        raise _TooDeep()
    depth += 1
    result = {}
    for _ in range(count):
        marker = data[pos]
        if 0xA0 <= marker < 0xC0:
            end = pos + 1 + (marker & 0x1F)
            key = data[pos + 1 : end].decode()
            pos = end
        else:
            key, pos = _unpack(data, pos, depth)
        value, pos = _unpack(data, pos, depth)
        result[key] = value
    return result, pos


def _take(data, pos, size):
    end = pos + size
    return data[pos:end], end


def _unpack_str(size_of):
    def unpack_str(data, pos, depth):
        size, pos = size_of(data, pos)
        text, end = _take(data, pos, size)
        return text.decode(), end

    return unpack_str


def _unpack_bin(size_of):
    def unpack_bin(data, pos, depth):
        size, pos = size_of(data, pos)
        blob, end = _take(data, pos, size)
        return bytes(blob), end

    return unpack_bin


def _unpack_container(size_of, unpack_items):
    def unpack_container(data, pos, depth):
        count, pos = size_of(data, pos)
        return unpack_items(data, pos, count, depth)

    return unpack_container


def _number(unpack_from, width):
    def unpack_number(data, pos, depth):
        return unpack_from(data, pos)[0], pos + width

    return unpack_number


def _size8(data, pos):
    return data[pos], pos + 1


def _size16(data, pos):
    return _unpack_u16(data, pos)[0], pos + 2


def _size32(data, pos):
    return _unpack_u32(data, pos)[0], pos + 4


def _constant(value):
    def unpack_constant(data, pos, depth):
        return value, pos

    return unpack_constant


def _invalid(name):
    def unpack_invalid(data, pos, depth):
        raise ValueError("%s at byte %d is not supported" % (name, pos - 1))

    return unpack_invalid


# Markers 0xc0..0xdf, in order.
_UNPACK_MARKER = [
    _constant(None),  # c0 nil
    _invalid("marker 0xc1"),  # c1 never used
    _constant(False),  # c2
    _constant(True),  # c3
    _unpack_bin(_size8),  # c4 bin 8
    _unpack_bin(_size16),  # c5 bin 16
    _unpack_bin(_size32),  # c6 bin 32
    _invalid("ext 8"),  # c7
    _invalid("ext 16"),  # c8
    _invalid("ext 32"),  # c9
    *[_number(*_NUMBERS[marker]) for marker in range(0xCA, 0xD4)],  # ca..d3 numbers
    _invalid("fixext 1"),  # d4
    _invalid("fixext 2"),  # d5
    _invalid("fixext 4"),  # d6
    _invalid("fixext 8"),  # d7
    _invalid("fixext 16"),  # d8
    _unpack_str(_size8),  # d9 str 8
    _unpack_str(_size16),  # da str 16
    _unpack_str(_size32),  # db str 32
    _unpack_container(_size16, _unpack_array),  # dc array 16
    _unpack_container(_size32, _unpack_array),  # dd array 32
    _unpack_container(_size16, _unpack_map),  # de map 16
    _unpack_container(_size32, _unpack_map),  # df map 32
]



def _msgpack_codec():
    """(pack, unpack) backed by the C `msgpack` package, or None without it.

    Requests are decoded by the package. Replies are packed by it only when
    a shallow look shows nothing the value table treats differently from
    MessagePack's defaults (bytes, sets, NaN, subclasses, other objects);
    everything else, and anything the package refuses, goes through `pack`.
    """
    try:
        import msgpack
    except ImportError:
        return None
    packb = msgpack.packb
    unpackb = msgpack.unpackb
    stack_error = getattr(msgpack.exceptions, "StackError", ())
    scalars = {type(None), bool, int, str}

    def is_plain(value):
        kind = type(value)
        if kind in scalars:
            return True
        if kind is float:
            return _isfinite(value)
        if kind is list or kind is tuple:
            kinds = set(map(type, value))
            if kinds == {float}:
                return _isfinite(sum(value))
            return kinds <= scalars
        if kind is dict:
            return set(map(type, value)) <= {str} and set(map(type, value.values())) <= scalars
        return False

    def fast_pack(value):
        if is_plain(value):
            try:
                return packb(value, use_bin_type=True)
            except Exception:
                pass  # a big int or a lone surrogate: `pack` names the problem
        return pack(value)

    def reject_ext(code, data):
        raise ValueError("ext type %d is not supported" % code)

    def fast_unpack(data):
        try:
            return unpackb(data, raw=False, strict_map_key=False, ext_hook=reject_ext)
        except stack_error:
            raise _TooDeep() from None
        except Exception as exc:
            raise FrameError(str(exc) or type(exc).__name__) from None

    return fast_pack, fast_unpack


# ---------------------------------------------------------------------------
# The child process: `python worker.py` speaks PROTOCOL.md on its stdin and
# stdout.
# ---------------------------------------------------------------------------

PROTOCOL_VERSION = 2
FRAME_LIMIT = 1 << 30
"""Frames longer than this (1 GiB) make the child exit with status 3."""

EXIT_PROTOCOL = 3
"""Exit status after bytes that are not a frame of valid MessagePack."""

# A pipe wake-up costs more than this, so the child polls for the next
# request for a moment before it sleeps in the selector.
_SPIN_SECONDS = 50e-6
# Pipes hand over at most 64 KiB at a time, and a bigger read buffer costs
# an mmap per read.
_READ_CHUNK = 1 << 16

_frame_header = struct.Struct(">I").pack
# ["out"]: what sys.stdout and sys.stderr took is in the stderr pipe.
_OUTPUT_MARK = _frame_header(5) + b"\x91\xa3out"
# The frame header and the start of [id, "ok", value], the id as a uint 64.
_ok_head = struct.Struct(">IBBQ3s").pack
_OK_HEAD_SIZE = 13
# How request ids are written after their marker: (width, reader).
_ID_READERS = {0xCC: (1, _unpack_u8), 0xCD: (2, _unpack_u16), 0xCE: (4, _unpack_u32), 0xCF: (8, _unpack_u64)}
_LATER = object()
"""Returned by a request handler whose reply comes when a coroutine finishes."""


_in_forked_copy = False
"""True in a process forked (os.fork) by user code in the worker."""

_worker_driver = None
"""The worker's CoroutineDriver, once it has one (a child worker only)."""


def _note_fork():
    global _in_forked_copy
    _in_forked_copy = True
    # Forked in a coroutine: the copy's loop turn ends after what is ready
    # now, and the copy with it (see ChildWorker._turn_loop). Only the
    # worker's own loop, and only in its turn: a loop that user code runs
    # inside a request (asyncio.run) is the user's, and the copy leaves when
    # that request returns. (asyncio cannot tell: it reports no running
    # loop in a forked process.)
    driver = _worker_driver
    if driver is not None and driver.turning:
        driver.loop.stop()


def _leave_forked_copy(exc):
    """Ends a copy of the worker that user code forked, once the code that
    forked returns into the worker (the worker is the other copy, and it
    answers): its output flushed, with the status a script ending with
    `exc` (None: none) would have."""
    status = 0
    try:
        if isinstance(exc, SystemExit):
            if isinstance(exc.code, int):
                status = exc.code & 0xFF
            elif exc.code is not None:
                print(exc.code, file=sys.stderr)
                status = 1
        elif exc is not None:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
            status = 1
        _flush_stdio()
    finally:
        os._exit(status)


_output_written = False
"""True once sys.stdout or sys.stderr took a write since the last output
mark (see ChildWorker._flush)."""

_fileio_write = io.FileIO.write


class _NotedFileIO(io.FileIO):
    """The fd under the worker's sys.stdout and sys.stderr: each write is
    noted, so that only replies that follow output go out behind a mark,
    and a reply after none costs nothing more."""

    def write(self, data):
        global _output_written
        _output_written = True
        return _fileio_write(self, data)


def _noted_stream(fd, like):
    """A text stream on `fd` that notes its writes, writing through as
    `python -u` streams do, with `like`'s encoding and error handler."""
    return io.TextIOWrapper(
        _NotedFileIO(fd, "w", closefd=False),
        encoding=getattr(like, "encoding", None) or "utf-8",
        errors=getattr(like, "errors", None) or "backslashreplace",
        newline="\n",
        line_buffering=True,
        write_through=True,
    )


def _say(message):
    """One line on stderr, straight to the fd: user code may have replaced sys.stderr."""
    global _output_written
    _output_written = True
    try:
        os.write(2, ("async_py worker: %s\n" % message).encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _flush_stdio():
    """Flushes what user code printed (sys.stdout is fd 2 by now)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # closed or replaced by user code
            pass


def _wire_text(text):
    """`text` with anything UTF-8 cannot carry (lone surrogates) escaped."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_limit(value):
    """nil, or a finite number of seconds that is not negative."""
    return value is None or (type(value) in (int, float) and _isfinite(value) and value >= 0)


# The types of each op's arguments after [id, op]; `call_async`'s limit is nil
# or a number of seconds.
_OPS = {
    "run": (str,),
    "run_file": (str,),
    "eval": (str,),
    "read": (str,),
    "call": (str, list),
    "call_async": (str, list, "limit"),
    "set_venv": (str,),
    "stop": (),
}


# The reply ring: shared memory the parent offers for replies (see
# src/subprocess/ring.rs for the layout). Its counters are native u64s read
# and written through a memoryview, which moves each one whole (struct's
# pack_into zero-fills first: a reader could see 0 between the two stores).
_RING_PUBLISHED = 0  # index of the u64 at byte 0
_RING_TAKEN = 8  # byte 64
_RING_WAITING = 16  # byte 128
_RING_INTERRUPT_TARGET = 24  # byte 192
_RING_IN_LOOP = 32  # byte 256
_RING_LAST_COROUTINE = 40  # byte 320
_RING_INTERRUPT_TAKEN = 48  # byte 384
_RING_DATA = 4096
_RING_SIZE = 1 << 20
_RING_MASK = _RING_SIZE - 1
_RING_FULL_NAP = 100e-6


class ReplyRing:
    """The child's end of the reply ring: whole frames are copied in, then
    the new total is published; a doorbell byte follows on stdout when the
    parent has said it sleeps until one comes."""

    def __init__(self, path):
        fd = os.open(path, os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, _RING_DATA + _RING_SIZE)
        finally:
            os.close(fd)
        self.counters = memoryview(self.map)[:_RING_DATA].cast("Q")
        self.published = self.counters[_RING_PUBLISHED]
        self.interrupt_target = self.counters[_RING_INTERRUPT_TARGET]

    def new_interrupt_target(self):
        """The id of the request the parent's last SIGINT is for, if the
        parent named one since the last call; else None."""
        target = self.counters[_RING_INTERRUPT_TARGET]
        if target == self.interrupt_target:
            return None
        self.interrupt_target = target
        return target

    def take_interrupt(self, request_id):
        """Tells the parent that this request stops for its SIGINT: stored
        before the request's reply is published, so a parent that takes the
        reply sees it."""
        self.counters[_RING_INTERRUPT_TAKEN] = request_id

    def put(self, data, doorbell):
        """Copies `data` in, waiting for room as the parent takes it;
        False once the parent is gone."""
        size = len(data)
        published = self.published
        start = published & _RING_MASK
        counters = self.counters
        # The common case: a reply that fits before the end and in the room left.
        if start + size <= _RING_SIZE and published + size - counters[_RING_TAKEN] <= _RING_SIZE:
            start += _RING_DATA
            self.map[start : start + size] = data
            published += size
            self.published = published
            counters[_RING_PUBLISHED] = published
            return not counters[_RING_WAITING] or doorbell()
        return self._put_in_pieces(data, doorbell)

    def _put_in_pieces(self, data, doorbell):
        ring = self.map
        counters = self.counters
        if len(data) > 4096:
            data = memoryview(data)
        size = len(data)
        done = 0
        published = self.published
        while done < size:
            room = _RING_SIZE - (published - counters[_RING_TAKEN])
            if room <= 0:
                if not doorbell():
                    return False
                time.sleep(_RING_FULL_NAP)
                continue
            take = min(room, size - done)
            start = _RING_DATA + published % _RING_SIZE
            first = min(take, _RING_DATA + _RING_SIZE - start)
            ring[start : start + first] = data[done : done + first]
            if first < take:
                ring[_RING_DATA : _RING_DATA + take - first] = data[done + first : done + take]
            published += take
            done += take
            self.published = published
            counters[_RING_PUBLISHED] = published
            if counters[_RING_WAITING] and not doorbell():
                return False
        return True


def _open_ring(path):
    """The ring at `path`, or None (no path, or it cannot be mapped here)."""
    if not path:
        return None
    try:
        return ReplyRing(path)
    except (OSError, ValueError) as exc:
        _say("replies take the pipe: the reply ring did not open: %s" % exc)
        return None


class ChildWorker:
    """Answers the requests of one parent until `stop` or end of input.

    Every op runs to completion in the order its request arrived, outside the
    event loop (so user code may call `asyncio.run`), except `call_async`,
    whose coroutine runs on the CoroutineDriver's loop while the child waits
    for the next request in that loop's selector.
    """

    def __init__(
        self, proto_in, proto_out, pack_value=pack, unpack_frame=unpack, ring=None, share=False
    ):
        self.proto_in = proto_in
        # A pool's worker shares the cores with its siblings and the parent:
        # while it polls for a request it gives its core to whichever of them
        # is ready to run.
        self.pause = getattr(os, "sched_yield", None) if share else None
        self.proto_out = proto_out
        # Replies take the ring from the first one after the hello.
        self.offered_ring = ring
        self.ring = None
        self.pack_value = pack_value
        self.unpack_frame = unpack_frame
        self.globals = new_globals()
        self.driver = None  # made by the first call_async
        self.poller = select.poll()
        self.poller.register(proto_in, select.POLLIN)
        self.inbox = bytearray()
        self.outbox = []
        self.at_eof = False
        self.stopping = False
        self.running = None  # the id of the request running now, if any
        self.interrupted = False
        self.handlers = {op: getattr(self, "op_" + op) for op in _OPS}
        # The common request gets a decoder of its own with the pure-Python codec.
        self.quick_calls = unpack_frame is unpack
        # Streams that write straight to their fd need no flush before a reply.
        streams = (sys.stdout, sys.stderr)
        self.direct_streams = streams if all(map(_writes_through, streams)) else (_LATER, _LATER)
        os.set_blocking(proto_in, False)

    # -- the loop ----------------------------------------------------------

    def serve(self):
        """Handles requests until `stop` or end of input; returns the exit status."""
        global _output_written
        hello = ["hello", PROTOCOL_VERSION, "%d.%d.%d" % sys.version_info[:3], _pid_outside or os.getpid(), _executable()]
        self._send(pack(hello + [self.offered_ring is not None]))
        _output_written = False  # nothing goes before the hello
        self._flush()
        if self.offered_ring is not None:
            os.set_blocking(self.proto_out, False)  # a full pipe holds doorbells enough
            self.ring = self.offered_ring
        while True:
            self._handle_frames()
            if self.driver is not None and self.driver.pending and not self.stopping:
                self._turn_loop(block=False)  # let coroutines move between batches
            # Every reply is out by now: each request's and each turn's flush it.
            if self.stopping:
                return 0
            if self.interrupted:
                return 130
            if self.at_eof:
                if self.inbox:
                    self._fail("the request pipe ended inside a frame (%d bytes left)" % len(self.inbox))
                return 0
            # A loop turn may have moved whole requests into the inbox.
            if self._has_whole_frame() or self._spin():
                continue
            if self.driver is None:
                self.poller.poll()
                self._read_available()
            else:
                self._turn_loop(block=True)

    def close(self):
        """Cancels pending coroutines and closes the event loop."""
        if self.driver is None or self.driver.loop.is_closed():
            return
        self.driver.loop.remove_reader(self.proto_in)
        try:
            self.driver.cancel_all()
        except BaseException as exc:
            _say("while cancelling pending calls: %s: %s" % (type(exc).__name__, exc))

    def _coroutine_driver(self):
        """The event loop for coroutines, made on first use; from then on the
        child also waits for requests in it."""
        global _worker_driver
        if self.driver is None:
            self.driver = CoroutineDriver()
            self.driver.loop.add_reader(self.proto_in, self._on_readable)
            _worker_driver = self.driver
        return self.driver

    def _turn_loop(self, block):
        """Runs the event loop once, or until bytes arrive or a call finishes.

        With a ring, the child says there while it is in the loop (the id of
        the last coroutine it started is there already, see op_call_async):
        requests run only outside the loop, so a parent that finds a limit
        passed while the child is inside knows a coroutine holds the loop, no
        request runs, and which coroutines had started. (Its replies are
        published before the flag is set.)
        """
        counters = None if self.ring is None else self.ring.counters
        if counters is not None:
            counters[_RING_IN_LOOP] = 1
        try:
            finished = self.driver.turn(block)
        except BaseException as exc:
            if _in_forked_copy:
                _leave_forked_copy(exc)
            # SystemExit or KeyboardInterrupt from a coroutine leaves run_forever
            # after its task has recorded it; the task's reply follows next turn.
            if not isinstance(exc, (SystemExit, KeyboardInterrupt)):
                _say("event loop error: %s" % "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            return
        finally:
            if _in_forked_copy:
                _leave_forked_copy(None)
            if counters is not None:
                counters[_RING_IN_LOOP] = 0
        for token, ok, value in finished:
            self._reply_finished(token, ok, value)
        # Published now, before the next request or turn: the parent reads
        # the flag above as "every reply before it is out".
        self._flush()

    def on_interrupt(self, signum, frame):
        """SIGINT during a command is a KeyboardInterrupt in it, so its
        `finally` blocks run. When the parent sent it for this command (it
        ran past its limit), the child then exits without starting anything
        else: the parent replaces it and sends what was queued to the new
        child.

        With a reply ring the parent names there the request each SIGINT
        of its own is for. One for a request that has ended (it ended just
        before the signal came) is ignored, and the child goes on: the
        parent, which sees that request answered without being stopped,
        keeps this child and waits for what it sent after. A SIGINT with no
        new name is of the command's own making (`signal.raise_signal`,
        `_thread.interrupt_main`): only a KeyboardInterrupt. Without a ring
        every SIGINT during a command is taken for the parent's. Between
        commands SIGINT is ignored."""
        running = self.running
        if self.ring is None:
            from_parent = True
        else:
            target = self.ring.new_interrupt_target()
            if target is not None and target != running:
                return
            from_parent = target is not None
        if running is None:
            return
        if from_parent:
            if self.ring is not None:
                self.ring.take_interrupt(running)
            self.interrupted = True
        raise KeyboardInterrupt

    def _on_readable(self):
        if _in_forked_copy:
            _leave_forked_copy(None)  # forked in a coroutine: the requests are the worker's
        self._read_available()
        self.driver.wake()

    def _read_available(self):
        """Moves what the request pipe holds into the inbox; True if anything came."""
        got = False
        while True:
            try:
                chunk = os.read(self.proto_in, _READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return got
            if not chunk:
                self.at_eof = True
                return True
            self.inbox += chunk
            got = True
            if len(chunk) < _READ_CHUNK:
                return True  # a short read leaves the pipe empty

    def _spin(self):
        """Polls briefly for the next request; True if bytes (or end of input) came."""
        deadline = time.perf_counter() + _SPIN_SECONDS
        poll = self.poller.poll
        pause = self.pause
        while True:
            # poll(0) rather than reads that fail: each failed read builds
            # an exception and its message.
            if poll(0):
                return self._read_available()
            if time.perf_counter() >= deadline:
                return False
            if pause is not None:
                pause()

    def _has_whole_frame(self):
        inbox = self.inbox
        return len(inbox) >= 4 and len(inbox) - 4 >= _unpack_u32(inbox, 0)[0]

    def _handle_frames(self):
        """Handles every complete frame in the inbox, in order.

        Each reply is written before the next request starts: the parent
        takes the oldest unanswered request to be the one running, for its
        time limit and to know what a dead child had not started."""
        inbox = self.inbox
        pos = 0
        while len(inbox) - pos >= 4 and not self.stopping and not self.interrupted:
            (size,) = _unpack_u32(inbox, pos)
            if size > FRAME_LIMIT:
                self._fail("a frame of %d bytes is over the 1 GiB limit" % size)
            end = pos + 4 + size
            if end > len(inbox):
                break
            frame = inbox[pos + 4 : end]
            pos = end
            self._handle_frame(frame)
            self._flush()
        del inbox[:pos]

    def _handle_frame(self, frame):
        call = _call_request(frame) if self.quick_calls else None
        if call is None:
            request = self._decode_request(frame)
            if request is None:
                return
            request_id, handler, args = request[0], self.handlers[request[1]], request[2:]
        else:
            request_id, name, args = call
        try:
            self.running = request_id
            try:
                if call is None:
                    value = handler(request_id, *args)
                else:
                    # op_call without the method call: the commonest request.
                    value = resolve(name, self.globals)(*args)
            finally:
                self.running = None
        except BaseException as exc:
            # Anything user code raises, SystemExit and KeyboardInterrupt too,
            # is the caller's error; the child goes on. (Set again: a signal
            # may have cut the `finally` short.)
            self.running = None
            if _in_forked_copy:
                _leave_forked_copy(exc)
            self._reply_error(request_id, exc)
            return
        if value is not _LATER:
            self._reply_value(request_id, value)

    def _decode_request(self, frame):
        """The request [id, op, ...] in a frame, checked; None if it was
        answered (or ignored) as malformed here."""
        try:
            request = self.unpack_frame(frame)
        except _TooDeep:
            request_id = _request_id_of(frame)
            if request_id is None:
                _say("ignoring a request that nests too deeply and has no id")
            else:
                self._send_reply([request_id, "conv", _TOO_DEEP])
            return
        except FrameError as exc:
            self._fail("a frame is not valid MessagePack: %s" % exc)
        if type(request) is not list or not request or type(request[0]) is not int:
            _say("ignoring a request without an id: %s" % _preview(request))
            return
        problem = _request_problem(request)
        if problem is not None:
            self._send_reply([request[0], "err", "ProtocolError", problem, None])
            return None
        return request

    # -- one method per op: each returns the reply's value, or raises --------

    def op_run(self, request_id, code):
        run_code(code, self.globals)

    def op_run_file(self, request_id, path):
        run_file(path, self.globals)

    def op_eval(self, request_id, expr):
        return eval_expr(expr, self.globals)

    def op_read(self, request_id, name):
        return resolve(name, self.globals)

    def op_call(self, request_id, name, args):
        # Calls that `_call_request` decodes skip this method (_handle_frame).
        return resolve(name, self.globals)(*args)

    def op_call_async(self, request_id, name, args, limit):
        function = resolve(name, self.globals)
        driver = self._coroutine_driver()
        counters = None if self.ring is None else self.ring.counters
        if counters is not None:
            # The last coroutine started, which the loop's turns leave in
            # place. The call that makes it is part of it: the parent judges
            # that call by the coroutine's limit, as it judges a coroutine
            # that holds the loop, and knows that no request runs meanwhile.
            counters[_RING_LAST_COROUTINE] = request_id
            counters[_RING_IN_LOOP] = 1
        try:
            scheduled, value = driver.start(request_id, function, args, limit)
        finally:
            if counters is not None:
                counters[_RING_IN_LOOP] = 0
        return _LATER if scheduled else value

    def op_set_venv(self, request_id, path):
        set_venv(path)

    def op_stop(self, request_id):
        self.stopping = True

    # -- replies -----------------------------------------------------------

    def _reply_finished(self, request_id, ok, value):
        """The reply to a call_async: `value` is the result, the exception,
        or "timeout" / "cancelled" (see CoroutineDriver._done)."""
        if ok:
            self._reply_value(request_id, value)
        elif isinstance(value, BaseException):
            self._reply_error(request_id, value)
        elif value == "timeout":
            self._send_reply([request_id, "timeout"])
        else:
            self._send_reply([request_id, "err", "CancelledError", "the coroutine was cancelled", None])

    def _reply_value(self, request_id, value):
        try:
            body = self.pack_value(value)
        except ConversionError as exc:
            self._send_reply([request_id, "conv", str(exc)])
            return
        except BaseException as exc:  # str(obj) of some object raised
            self._reply_error(request_id, exc)
            return
        size = _OK_HEAD_SIZE + len(body)
        if size > 0xFFFFFFFF:
            self._send_reply([request_id, "conv", "a reply of %d bytes does not fit in a frame" % size])
            return
        if 0 <= request_id <= 0xFFFFFFFFFFFFFFFF:
            self.outbox.append(_ok_head(size, 0x93, 0xCF, request_id, b"\xa2ok") + body)
        else:
            self._send(b"\x93" + pack(request_id) + b"\xa2ok" + body)

    def _reply_error(self, request_id, exc):
        self._send_reply([request_id, "err", *describe_error(exc)])

    def _send_reply(self, reply):
        self._send(pack(reply))

    def _send(self, payload):
        self.outbox += (_frame_header(len(payload)), payload)

    def _flush(self):
        """Writes every reply produced since the last flush, in one go.

        What the requests printed is flushed first, so it reaches stderr
        before their replies reach the parent; if anything was written
        through sys.stdout or sys.stderr since the last flush, an output
        mark goes before the replies, and the parent forwards its copy of
        the stderr pipe up to here before it hands them out. (Writes
        straight to fd 1 or 2, by os.write or C code, are not noted: noting
        them would cost a system call for every reply.)
        """
        global _output_written
        if _in_forked_copy:
            # A copy whose forking code returned (one that raised left in
            # _handle_frame): every reply passes here, once per request.
            _leave_forked_copy(None)
        outbox = self.outbox
        if not outbox:
            return
        stdout, stderr = self.direct_streams
        if sys.stdout is not stdout or sys.stderr is not stderr:
            _flush_stdio()
        if _output_written:
            _output_written = False
            outbox.insert(0, _OUTPUT_MARK)
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        if self.ring is not None:
            if not self.ring.put(data, self._doorbell):
                self._parent_gone()
            return
        data = memoryview(data)
        while True:
            try:
                written = os.write(self.proto_out, data)
            except (BlockingIOError, InterruptedError):
                select.select([], [self.proto_out], [])
                continue
            except BrokenPipeError:
                self._parent_gone()
                return
            if written == len(data):
                return
            data = data[written:]

    def _doorbell(self):
        """Wakes a parent that sleeps until replies come; False if it is gone."""
        try:
            os.write(self.proto_out, b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full of doorbells the parent has yet to read
        except BrokenPipeError:
            return False
        return True

    def _parent_gone(self):
        """The parent stopped reading: nobody is left to answer."""
        self.at_eof = True
        self.inbox.clear()

    def _fail(self, message):
        """A broken protocol stream: say why on stderr and exit with status 3."""
        self._flush()
        _flush_stdio()
        _say(message)
        os._exit(EXIT_PROTOCOL)


def _writes_through(stream):
    """Whether text written to `stream` reaches its fd at once (python -u)."""
    return getattr(stream, "write_through", False) and type(getattr(stream, "buffer", None)) in (io.FileIO, _NotedFileIO)


def _call_request(frame):
    """(id, name, args) of a `call` request shaped the way the parent writes
    one (a short name, a short argument list), or None: anything else, valid
    or not, takes the general decoder."""
    try:
        if frame[0] != 0x94:
            return None
        marker = frame[1]
        if marker < 0x80:
            request_id, pos = marker, 2
        else:
            width, read = _ID_READERS[marker]
            (request_id,) = read(frame, 2)
            pos = 2 + width
        if frame[pos : pos + 5] != b"\xa4call":
            return None
        marker = frame[pos + 5]
        if not 0xA0 <= marker < 0xC0:
            return None
        start = pos + 6
        end = start + (marker & 0x1F)
        name = frame[start:end].decode()
        marker = frame[end]
        if not 0x90 <= marker < 0xA0:
            return None
        # The arguments sit one level down in the request, as in `unpack`.
        args, end = _unpack_array(frame, end + 1, marker & 0x0F, 1)
        if end != len(frame):
            return None
        return request_id, name, args
    except Exception:
        return None


_PATH_OPS = ("run_file", "set_venv")
"""Ops whose path is a str, or the bytes of a path that is not UTF-8."""


def _is_byte_list(value):
    return type(value) is list and all(type(b) is int and 0 <= b <= 255 for b in value)


def _request_problem(request):
    """Why a request [id, op, ...] is malformed, or None."""
    if len(request) < 2 or type(request[1]) is not str:
        return "a request is [id, op, arguments...], got %s" % _preview(request)
    op = request[1]
    expected = _OPS.get(op)
    if expected is None:
        return "unknown op %s" % _preview(op)
    args = request[2:]
    if op == "call_async":
        fits = len(args) == 3 and type(args[0]) is str and type(args[1]) is list and _is_limit(args[2])
    elif op in _PATH_OPS:
        fits = len(args) == 1 and (type(args[0]) is str or _is_byte_list(args[0]))
    else:
        fits = tuple(map(type, args)) == expected
    if fits:
        return None
    shape = ", ".join([repr(op)] + [getattr(kind, "__name__", kind) for kind in expected])
    return "%s takes [id, %s], got %s" % (op, shape, _preview(request))


def _request_id_of(frame):
    """The id of a request whose body could not be decoded, if its start shows one."""
    try:
        marker = frame[0]
        if 0x91 <= marker <= 0x9F:
            start = 1
        elif marker == 0xDC:
            start = 3
        elif marker == 0xDD:
            start = 5
        else:
            return None
        request_id, _ = _unpack(frame, start, 0)
    except Exception:
        return None
    return request_id if type(request_id) is int else None


def _preview(value):
    """A short repr, for messages about malformed requests."""
    return reprlib.repr(value)


def _executable():
    """sys.executable as text UTF-8 can carry (a path need not be)."""
    return _wire_text(os.fsdecode(os.fsencode(sys.executable or "")))


def _move_protocol_off_stdio():
    """Keeps the protocol on private fds; fd 1 becomes stderr, fd 0 /dev/null.

    print(), os.write(1, ...) and C printf then land on stderr, and input()
    raises EOFError instead of eating requests. sys.stdout and sys.stderr
    become streams that note their writes (see ChildWorker._flush).
    Returns (proto_in, proto_out).
    """
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr at all
        os.dup2(null, 1)
    os.close(null)
    try:
        # The originals are left unclosed: they do not own fds 1 and 2.
        sys.stdout = sys.__stdout__ = _noted_stream(1, sys.stdout)
        sys.stderr = sys.__stderr__ = _noted_stream(2, sys.stderr)
    except OSError:  # no stderr at all: the originals stay, unnoted
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                try:
                    stream.reconfigure(line_buffering=True)
                except (AttributeError, ValueError):
                    pass
    return proto_in, proto_out


def _exit_with_parent(proto_in):
    """On Linux, asks for SIGKILL when the parent dies, then checks it is alive.

    The death signal only covers deaths from now on. A parent that died
    earlier left this process to init (parent pid 1) and its request pipe
    without a writer; pid 1 alone is not proof, as a container's init can be
    the real parent.
    """
    libc = _linux_libc()
    if libc is None:
        return
    _die_with_parent(libc)
    if os.getppid() == 1:
        poller = select.poll()
        poller.register(proto_in, select.POLLIN)
        for _, events in poller.poll(0):
            if events & select.POLLHUP:
                os._exit(0)


def _linux_libc():
    """The C library through ctypes on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except Exception:
        return None


def _die_with_parent(libc):
    """Asks for SIGKILL when the parent dies (a fork does not inherit it)."""
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


_CLONE_NEWPID = 0x20000000
_CLONE_NEWUSER = 0x10000000

_PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
"""The signals the stand-in passes on to a contained worker."""

_pid_outside = None
"""A contained worker's pid as its parent knows it (the stand-in's)."""


def _contain():
    """Moves the rest of this worker into a pid namespace of its own, so that
    nothing it starts outlives it: not a process that left its process
    group (os.setsid()), nor one whose parent is gone. When the init of a
    pid namespace dies, the kernel SIGKILLs everything in it.

    A process cannot enter a new pid namespace, only fork into it, so this
    one (the one the parent started, or the zygote forked) makes the
    namespace and forks two processes into it: a small init (pid 1), and the
    worker, which returns from here and goes on. This process stays outside
    as the worker's stand-in and never returns: it passes on the signals its
    parent sends, and once the worker has ended, kills the init, and with it
    the whole namespace, then ends as the worker did (its exit status, or
    the same signal). The init dies with the stand-in, the stand-in with its
    parent, and the parent's kills of the process group reach all three.

    Where the kernel makes no namespace (not Linux; no privilege for one and
    no user namespaces), this returns at once, and the worker runs here,
    uncontained.
    """
    global _pid_outside
    libc = _linux_libc()
    if libc is None or not _unshare_pid_namespace(libc):
        return
    outside = os.getpid()
    # The init reads end of file here when the stand-in is gone.
    alive_r, alive_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        init = os.fork()
    except OSError as exc:
        _say("could not start the pid namespace's init: %s" % exc)
        os._exit(1)
    if init == 0:
        os.close(alive_w)
        os.close(ready_r)
        _namespace_init(libc, outside, alive_r, ready_w)
    os.close(alive_r)
    os.close(ready_w)
    os.read(ready_r, 1)  # the init has claimed the worker's pid
    os.close(ready_r)
    try:
        worker = os.fork()
    except OSError as exc:
        _say("could not fork the worker into its pid namespace: %s" % exc)
        os.kill(init, signal.SIGKILL)
        os._exit(1)
    if worker == 0:
        os.close(alive_w)
        _die_with_parent(libc)
        _pid_outside = outside
        return
    _stand_in(worker, init)


def _unshare_pid_namespace(libc):
    """Has this process's children made in a new pid namespace; False if the
    kernel refuses. Without the privilege for one (CAP_SYS_ADMIN), a new
    user namespace gives it, with this user's ids mapped to themselves."""
    if libc.unshare(_CLONE_NEWPID) == 0:
        return True
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWPID) != 0:
        return False
    for path, text in (
        ("/proc/self/uid_map", "%d %d 1" % (uid, uid)),
        ("/proc/self/setgroups", "deny"),  # the kernel's condition for a gid map
        ("/proc/self/gid_map", "%d %d 1" % (gid, gid)),
    ):
        try:
            with open(path, "w") as file:
                file.write(text)
        except OSError as exc:
            _say("could not write %s: %s" % (path, exc))
    return True


def _namespace_init(libc, outside, alive, ready):
    """pid 1 of a contained worker's namespace, until the stand-in is gone.
    The kernel reaps the orphans it inherits (SIGCHLD ignored). Signals sent
    from inside the namespace cannot end an init that has no handler for
    them; SIGINT's handler is dropped for that. Never returns."""
    try:
        _die_with_parent(libc)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _claim_pid(outside)
        os.write(ready, b"r")
        os.close(ready)
        for fd in (0, 1, 2):
            os.close(fd)
        # End of file: the stand-in died, perhaps before the prctl above.
        while os.read(alive, 1):
            pass
    finally:
        os._exit(0)


def _claim_pid(pid):
    """Has the next process made in this namespace, the worker, get `pid`
    (its stand-in's): os.getpid() in the worker is then the pid its parent
    knows, and a kill of its own pid still reaches the worker. Where the
    kernel does not allow it, the worker is pid 2."""
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w") as last:
            last.write(str(pid - 1))
    except OSError:
        pass


def _stand_in(worker, init):
    """The rest of the process the parent started, once the worker runs in a
    namespace: passes signals on to it, and ends as it ended. Never returns."""

    def pass_on(signum, frame):
        os.kill(worker, signum)

    try:
        for signum in _PASSED_ON:
            signal.signal(signum, pass_on)
        # The worker's pipes stay open here until this process ends: end of
        # file or a broken pipe then tells the parent that all of it is
        # ending, with the worker's status.
        # Unreaped, the worker's pid cannot be another's while signals may
        # be passed on to it.
        os.waitid(os.P_PID, worker, os.WEXITED | os.WNOWAIT)
        for signum in _PASSED_ON:
            signal.signal(signum, signal.SIG_IGN)
        _, status = os.waitpid(worker, 0)
        os.kill(init, signal.SIGKILL)
        os.waitpid(init, 0)
        _end_as(status)
    except BaseException as exc:
        _say("the worker's stand-in failed: %s: %s" % (type(exc).__name__, exc))
    finally:
        os._exit(1)  # the init, and so the worker, die with this process


def _end_as(status):
    """Ends this process as wait status `status` says another ended."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            import resource

            # The worker's core, if it left one, is the one that tells.
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except Exception:
            pass
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal whose default is not to end
    os._exit(os.WEXITSTATUS(status))


def _forget_own_folder():
    """Drops the entry Python put first on sys.path for how it was started
    (this file's folder, or '' for `python -c`), as the in-process backend
    has no such entry and the child's working folder should not shadow
    installed packages."""
    here = os.path.dirname(os.path.abspath(_HERE))
    if sys.path and (sys.path[0] == "" or os.path.abspath(sys.path[0]) == here):
        del sys.path[0]


def _zygote_main():
    """A zygote: forks workers on request, so that a pool's workers start
    without paying for a Python start each (see PROTOCOL.md, "The zygote").

    Its stdin is a Unix stream socket to the parent. It sends b"r" once
    ready. A request b"f" carries, as passed fds, the new worker's stdin,
    stdout and stderr, and its reply ring if it has one; the answer is b"p"
    and the worker's pid (0: no fork). When a worker it forked exits, it
    sends b"x", the pid and the raw wait status, but leaves the worker a
    zombie until the request b"w" and the pid (answered b"d" and the pid
    once reaped): until then the worker's pid and process group cannot be
    reused, so the parent's signals to them reach no other process. It
    exits at end of file.
    """
    # Before any import: what the zygote imports, every fork inherits, and
    # a file in the working folder must not stand in for a module.
    _forget_own_folder()
    import socket

    _exit_with_parent(0)
    control = socket.socket(fileno=0)
    _msgpack_codec()  # its import, if it has one, is then done for every worker
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    poller = select.poll()
    poller.register(control.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    running, ended = set(), set()
    control.sendall(b"r")
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                os.read(wake_r, 512)
                for pid in sorted(running):
                    status = _ended_status(pid)
                    if status is not None:
                        running.discard(pid)
                        ended.add(pid)
                        control.sendall(struct.pack(">cIi", b"x", pid, status))
                continue
            data, ancdata, _, _ = control.recvmsg(1, socket.CMSG_SPACE(4 * 4))
            if not data:
                return 0
            fds = array("i")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if data == b"w":
                (pid,) = struct.unpack(">I", _receive_exactly(control, 4))
                if pid in ended:
                    ended.discard(pid)
                    os.waitpid(pid, 0)
                control.sendall(struct.pack(">cI", b"d", pid))
                continue
            forked = None  # the worker's pid here, 0 in the worker
            if data == b"f" and len(fds) in (3, 4):
                try:
                    forked = os.fork()
                except OSError as exc:  # no room for a process: the parent starts one
                    _say("the zygote could not fork: %s" % exc)
            if forked == 0:
                _forked_worker(list(fds), control, (wake_r, wake_w))
            pid = forked or 0
            if pid > 0:
                running.add(pid)
                try:
                    # Here too, so the group exists once the parent hears the pid.
                    os.setpgid(pid, pid)
                except OSError:
                    pass
            for fd in fds:
                os.close(fd)
            control.sendall(struct.pack(">cI", b"p", pid))


def _ended_status(pid):
    """The raw wait status of child `pid` if it has ended, else None; an
    ended child is left a zombie (WNOWAIT)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    if info.si_code == os.CLD_DUMPED:
        return info.si_status | 0x80
    return info.si_status  # killed by that signal


def _receive_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the parent's socket ended inside a request")
        data += chunk
    return data


def _forked_worker(fds, control, wake):
    """In a child the zygote forked: takes the passed fds as stdin, stdout
    and stderr (and the reply ring), leads a process group of its own, and
    serves as a started pool worker does. Never returns: SystemExit ends the
    interpreter as it ends a started worker (atexit handlers, threads
    joined)."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setpgid(0, 0)
        control.detach()  # fd 0, about to be the worker's stdin
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds[:3] + list(wake):
            os.close(fd)
        ring_fd = fds[3] if len(fds) > 3 else None
        ring_path = "" if ring_fd is None else "/proc/self/fd/%d" % ring_fd
        del sys.argv[1:]  # as a started worker's, once its arguments are taken
        _serve(True, ring_path, ring_fd)
    except SystemExit:
        raise
    except BaseException as exc:
        _say("the forked worker failed: %s: %s" % (type(exc).__name__, exc))
        os._exit(1)
    os._exit(0)  # never back into the zygote's loop


def main():
    """The child program: its arguments are `--zygote`, or an optional
    `--share-cores` and the reply ring's path (see PROTOCOL.md)."""
    if sys.argv[1:2] == ["--zygote"]:
        sys.exit(_zygote_main())
    share = sys.argv[1:2] == ["--share-cores"]
    if share:
        del sys.argv[1]
    _serve(share, sys.argv.pop(1) if len(sys.argv) > 1 else "")


def _serve(share, ring_path, ring_fd=None):
    """Serves one parent over stdin and stdout, then exits. `ring_fd` is the
    fd behind a ring passed as /proc/self/fd/<n>, closed once mapped."""
    if os.environ.get("ASYNC_PY_REPLY_RING") == "0":
        ring_path = ""  # replies take the pipe
    _exit_with_parent(0)
    # Mapped before containment: from a user namespace of its own the worker
    # may not open its parent's fds through /proc.
    ring = _open_ring(ring_path)
    if ring_fd is not None:
        os.close(ring_fd)
    _contain()
    proto_in, proto_out = _move_protocol_off_stdio()
    os.register_at_fork(after_in_child=_note_fork)
    _forget_own_folder()
    codec = _msgpack_codec() or (pack, unpack)
    worker = ChildWorker(proto_in, proto_out, *codec, ring=ring, share=share)
    signal.signal(signal.SIGINT, worker.on_interrupt)
    try:
        status = worker.serve()
    finally:
        worker.close()
    sys.exit(status)


if __name__ == "__main__":
    main()
else:
    _prepare_embedded()
