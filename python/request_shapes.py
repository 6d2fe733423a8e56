# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""Requests as the child reads them: fast decoders for the two commonest
(`call` and `invoke`, shaped as the parent writes them), and the check of
every other request's shape against protocol.py's OPS, with the message a
malformed one is answered with."""

import reprlib

_CALL_OP_SIZE = len(CALL_OP)


def _call_request(frame):
    """(id, name, args) of a `call` request shaped the way the parent writes
    one (a short name, a short argument list), or None: anything else, valid
    or not, takes the general decoder."""
    try:
        if frame[0] != CALL_ARRAY:
            return None
        marker = frame[1]
        if marker < 0x80:
            request_id, pos = marker, 2
        else:
            width, read = REQUEST_ID_READERS[marker]
            (request_id,) = read(frame, 2)
            pos = 2 + width
        end = pos + _CALL_OP_SIZE
        if frame[pos:end] != CALL_OP:
            return None
        marker = frame[end]
        if not 0xA0 <= marker < 0xC0:
            return None
        start = end + 1
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


def _invoke_request(frame, op=INVOKE_OP):
    """(id, name, args, kwargs, typed, limit) of an `invoke` request (or
    another `op` with its arguments) shaped the way the parent writes one
    (a short name, str keys, a float limit), or None: anything else, valid
    or not, takes the general decoder."""
    try:
        if frame[0] != INVOKE_ARRAY:
            return None
        marker = frame[1]
        if marker < 0x80:
            request_id, pos = marker, 2
        else:
            width, read = REQUEST_ID_READERS[marker]
            (request_id,) = read(frame, 2)
            pos = 2 + width
        end = pos + len(op)
        if frame[pos:end] != op:
            return None
        marker = frame[end]
        if not 0xA0 <= marker < 0xC0:
            return None
        start = end + 1
        end = start + (marker & 0x1F)
        name = frame[start:end].decode()
        # The arguments sit one level down in the request, as in `unpack`.
        marker = frame[end]
        if 0x90 <= marker < 0xA0:
            args, end = _unpack_array(frame, end + 1, marker & 0x0F, 1)
        elif marker == 0xDC or marker == 0xDD:
            args, end = _unpack(frame, end, 1)
        else:
            return None
        marker = frame[end]
        if marker == 0x80:  # the commonest: none
            kwargs = {}
            end += 1
        else:
            if 0x80 < marker < 0x90:
                kwargs, end = _unpack_map(frame, end + 1, marker & 0x0F, 1)
            elif marker == 0xDE or marker == 0xDF:
                kwargs, end = _unpack(frame, end, 1)
            else:
                return None
            for key in kwargs:
                if type(key) is not str:
                    return None
        typed = frame[end]
        marker = frame[end + 1]
        if marker == 0xC0:
            limit = None
            end += 2
        elif marker == 0xCB:
            (limit,) = _unpack_f64(frame, end + 2)
            if not (_isfinite(limit) and limit >= 0):
                return None
            end += 10
        else:
            return None
        if end != len(frame) or not 0xC2 <= typed <= 0xC3:  # false, true
            return None
        return request_id, name, args, kwargs, typed == 0xC3, limit
    except Exception:
        return None


def _is_byte_list(value):
    return type(value) is list and all(type(b) is int and 0 <= b <= 255 for b in value)


def _request_problem(request):
    """Why a request [id, op, ...] is malformed, or None."""
    if len(request) < 2 or type(request[1]) is not str:
        return "a request is [id, op, arguments...], got %s" % _preview(request)
    op = request[1]
    expected = OPS.get(op)
    if expected is None:
        return "unknown op %s" % _preview(op)
    args = request[2:]
    if op == OP_CALL_ASYNC:
        fits = len(args) == 3 and type(args[0]) is str and type(args[1]) is list and _is_limit(args[2])
    elif op == OP_INVOKE or op == OP_INVOKE_CAPTURED or op == OP_STREAM:
        fits = (
            len(args) == len(expected)
            and type(args[0]) is str
            and type(args[1]) is list
            and type(args[2]) is dict
            and type(args[3]) is bool
            and (args[4] is None or _is_limit(args[4]))
            and (not args[2] or set(map(type, args[2])) == {str})
            and (op != OP_STREAM or (type(args[5]) is int and args[5] >= 0))
        )
    elif op in PATH_OPS:
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
