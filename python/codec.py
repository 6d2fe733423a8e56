# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""Values on the wire: the value table and a small MessagePack codec.

`pack` turns a Python object into MessagePack by the value table in the
crate docs, `pack_typed` does the same for a typed result (whose bytes go
as bin), and `unpack` turns one MessagePack value back into Python.
Most values take the plain recursive path. Two fast paths keep big
homogeneous lists cheap, because their per-item cost would dominate a call:
a long list of plain ints or floats is packed with `array` and strided
`bytearray` copies, and a run of same-width numbers inside an array is
unpacked the same way. `_msgpack_codec` puts the C `msgpack` package in
their place where the interpreter has it.
"""

import marshal
import math
import struct
import sys
from array import array

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


class _TypedOut(list):
    """The parts `pack_typed` joins: packing into one of these turns bytes,
    bytearray and memoryview into bin instead of arrays of ints. The mode
    rides on the output's type so that `pack`'s own path checks nothing
    more (bytes reach only `_pack_other`)."""

    __slots__ = ()


def pack_typed(value):
    """MessagePack bytes of a typed result: the value table of `pack`,
    except that bytes, bytearray and memoryview, at any depth, become bin
    (a memoryview its `tobytes()`), never arrays of ints.

    Raises as `pack` does.
    """
    if type(value) is int:
        return _int_bytes(value)  # the commonest typed result too
    out = _TypedOut()
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
    elif type(out) is _TypedOut and isinstance(obj, (bytes, bytearray, memoryview)):
        # The stored bytes, whatever a subclass's own methods say; bytes
        # themselves are not copied here, the others once.
        _pack_bin(obj if type(obj) is bytes else memoryview(obj).tobytes(), out)
    elif isinstance(obj, (bytes, bytearray)):
        _pack_bytes(obj, out)
    else:
        if depth >= MAX_DEPTH:
            raise ConversionError(_TOO_DEEP)
        _pack(table_form(obj), out, depth + 1)


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


def _pack_bin(data, out):
    """bytes as bin (typed results only): the header, then `data` itself."""
    size = len(data)
    if size <= 0xFF:
        out.append(_U8(0xC4, size))
    elif size <= 0xFFFF:
        out.append(_U16(0xC5, size))
    elif size <= 0xFFFFFFFF:
        out.append(_U32(0xC6, size))
    else:
        raise ConversionError("bytes of %d bytes are too long for MessagePack" % size)
    out.append(data)


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
        end = pos + size
        # One copy, out of a bytearray frame too (a slice of it would be a
        # second). A view past the end stops at the end, as a slice does.
        return bytes(memoryview(data)[pos:end]), end

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
    """(pack, unpack, pack_typed) backed by the C `msgpack` package, or None
    without it.

    Requests are decoded by the package. Replies are packed by it only when
    a shallow look shows nothing the value table treats differently from
    MessagePack's defaults (bytes, sets, NaN, subclasses, other objects; for
    a typed result bytes and bytearray are plain: both become bin);
    everything else, and anything the package refuses, goes through `pack`
    or `pack_typed`.
    """
    try:
        import msgpack
    except ImportError:
        return None
    packb = msgpack.packb
    unpackb = msgpack.unpackb
    stack_error = getattr(msgpack.exceptions, "StackError", ())
    scalars = {type(None), bool, int, str}

    def plain_check(scalars):
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

        return is_plain

    is_plain = plain_check(scalars)
    is_plain_typed = plain_check(scalars | {bytes, bytearray})

    def fast_pack(value):
        if is_plain(value):
            try:
                return packb(value, use_bin_type=True)
            except Exception:
                pass  # a big int or a lone surrogate: `pack` names the problem
        return pack(value)

    def fast_pack_typed(value):
        if is_plain_typed(value):
            try:
                return packb(value, use_bin_type=True)
            except Exception:
                pass
        return pack_typed(value)

    def reject_ext(code, data):
        raise ValueError("ext type %d is not supported" % code)

    def fast_unpack(data):
        try:
            return unpackb(data, raw=False, strict_map_key=False, ext_hook=reject_ext)
        except stack_error:
            raise _TooDeep() from None
        except Exception as exc:
            raise FrameError(str(exc) or type(exc).__name__) from None

    return fast_pack, fast_unpack, fast_pack_typed
