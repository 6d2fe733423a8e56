# A worker module, joined with the others into one source (python/MODULES): stdlib imports only; the others' names are globals here.
"""The wire protocol's layout (PROTOCOL.md), stated once for the worker.

Every name, number and offset the child writes or matches on the wire is
here: the protocol version, the frame limit and exit statuses, the ops and
their arguments, the message kinds, the reply ring's offsets and the
zygote's messages. The bytes that the fast paths of serve.py write or
match whole (the start of an `ok` or `data` reply, the output mark, the
start of a `call` or `invoke` request, a stream's item) are derived from these names with
the codec, once, at import. The Rust side states the same numbers in src/wire/mod.rs and
src/subprocess/ring.rs; tests/python/test_protocol.py checks that both
agree.
"""

import struct

PROTOCOL_VERSION = 5
"""Named in the hello; changes whenever a frame changes shape or meaning."""

FRAME_LIMIT = 1 << 30
"""Frames longer than this (1 GiB) make the child exit with EXIT_PROTOCOL."""

EXIT_PROTOCOL = 3
"""Exit status after bytes that are not a frame of valid MessagePack."""

EXIT_INTERRUPTED = 130
"""Exit status after the parent's SIGINT stopped a request."""

# -- frames: a 4-byte big-endian length, then one MessagePack value --------

FRAME_HEADER = struct.Struct(">I")
FRAME_HEADER_SIZE = FRAME_HEADER.size

# -- the child's first frame: [HELLO, version, python, pid, executable, ring]

HELLO = "hello"

# -- requests: [id, op, arguments...] ---------------------------------------

OP_RUN = "run"
OP_RUN_FILE = "run_file"
OP_EVAL = "eval"
OP_READ = "read"
OP_CALL = "call"
OP_CALL_ASYNC = "call_async"
OP_INVOKE = "invoke"
OP_STREAM = "stream"
OP_SET_VENV = "set_venv"
OP_STOP = "stop"
OP_RUN_CAPTURED = "run_captured"
OP_INVOKE_CAPTURED = "invoke_captured"

ARG_LIMIT = "limit"
"""An argument that is nil or a number of seconds (finite, not negative)."""

OPS = {
    OP_RUN: (str,),
    OP_RUN_FILE: (str,),
    OP_EVAL: (str,),
    OP_READ: (str,),
    OP_CALL: (str, list),
    OP_CALL_ASYNC: (str, list, ARG_LIMIT),
    OP_INVOKE: (str, list, dict, bool, ARG_LIMIT),  # name, args, kwargs, typed, limit
    OP_STREAM: (str, list, dict, bool, ARG_LIMIT, int),  # as invoke, then the first credit
    OP_SET_VENV: (str,),
    OP_STOP: (),
    OP_RUN_CAPTURED: (str,),
    OP_INVOKE_CAPTURED: (str, list, dict, bool, ARG_LIMIT),  # as OP_INVOKE
}
"""The types of each op's arguments after [id, op]."""

PATH_OPS = (OP_RUN_FILE, OP_SET_VENV)
"""Ops whose path is a str, or the bytes of a path that is not UTF-8."""

# -- replies: [id, kind, ...] ---------------------------------------------

REPLY_OK = "ok"  # [id, "ok", value]
REPLY_ERR = "err"  # [id, "err", kind, message, traceback]
REPLY_CONV = "conv"  # [id, "conv", message]
REPLY_TIMEOUT = "timeout"  # [id, "timeout"]
REPLY_DATA = "data"  # [id, "data", value]: a typed invoke's result, bytes as bin
REPLY_ITEM = "item"  # [id, "item", value]: one item of an open stream
REPLY_ITEM_DATA = "item_data"  # [id, "item_data", value]: one item of a typed stream, bytes as bin

# -- other messages: [kind, ...] --------------------------------------------

MSG_CANCEL = "cancel"
"""Parent to child, [MSG_CANCEL, id]: cancel that request's pending coroutine,
or close its open stream. It gets no reply of its own."""
MSG_AWAITING = "awaiting"
"""Child to parent, [MSG_AWAITING, id]: that invoke's result is being
awaited on the event loop; its reply comes when it finishes."""

MSG_OUTPUT = "output"
"""Child to parent, [MSG_OUTPUT, stream, lines]: lines written through
sys.stdout (stream 0) or sys.stderr (1), without their "\\n"; sent only
when the environment asked for them (ENV_OUTPUT)."""
MSG_CAPTURED = "captured"
"""Child to parent, [MSG_CAPTURED, id, stdout, stderr]: what captured
request `id` wrote; it goes right before that request's reply."""
MSG_STREAMING = "streaming"
"""Child to parent, [MSG_STREAMING, id]: that stream request's function
returned something iterable; its items follow, then its one reply."""
MSG_MORE = "more"
"""Parent to child, [MSG_MORE, id, granted]: stream `id` may have sent
`granted` items in all. It gets no reply of its own."""
MSG_HOST = "host"
"""Child to parent, [MSG_HOST, hid, name, args, kwargs]: Python called host
function `name`; `hid` (an int the child chose, unique among its host calls
pending) names the call in its reply. Bytes in the arguments go as bin."""
MSG_HOST_REPLY = "host_reply"
"""Parent to child, [MSG_HOST_REPLY, hid, ok, value]: host call `hid`
returned `value` (ok true) or failed with the message `value` (ok false)."""
MSG_BEAT = "beat"
"""[MSG_BEAT]: either way on a launched child's link when nothing else went
for a heartbeat's interval; no reply. It keeps an idle link open, and its
absence tells either side the link is dead."""
MSG_LIMIT = "limit"
"""[MSG_LIMIT, id, seconds]: to a launched child, right before request `id`,
its time limit; the child interrupts the request itself past it (no signal
of the parent's crosses the link), and ends its own process group if it does
not stop within KILL_GRACE. No reply."""
KILL_GRACE = 0.25
"""How long a launched child's request interrupted for its limit may take to
stop before the child ends its process group (the parent's grace)."""
LIMIT_MARGIN = 0.1
"""How long after its limit a launched child interrupts a request: the
parent's clock may start later than the child's by the link's latency, and
the parent must find the limit passed first, to take the child's end for the
interrupt it is."""
MSG_NESTED = "nested"
"""Parent to child, [MSG_NESTED, id]: the request right after this note, `id`,
was sent by a host function the child waits for, and runs inside that
wait. It gets no reply of its own."""
MSG_HOST_CANCEL = "host_cancel"
"""Child to parent, [MSG_HOST_CANCEL, hid]: the coroutine awaiting async
host call `hid` was cancelled; the parent drops its future and sends no
reply (a reply already on its way is ignored)."""

PROTOCOL_ERROR = "ProtocolError"
"""The `err` kind of a reply to a request the child cannot parse."""

OUTPUT_MARK = "out"
"""The frame [OUTPUT_MARK] goes before replies that follow output."""

DOORBELL = b"\0"
"""Written to stdout after a publish into the ring while the parent waits."""

# -- the child's arguments and environment --------------------------------

ARG_ZYGOTE = "--zygote"
ARG_SHARE_CORES = "--share-cores"
ENV_REPLY_RING = "ASYNC_PY_REPLY_RING"
"""Set to "0", the child keeps its replies on the pipe."""
ENV_OUTPUT = "ASYNC_PY_OUTPUT"
OUTPUT_FRAMES = "frames"
"""ENV_OUTPUT set to this: uncaptured output goes as MSG_OUTPUT frames."""
ENV_SANDBOX = "ASYNC_PY_SANDBOX"
"""A started child's sandbox settings, `key=value` lines (see sandbox.py);
the child removes it from os.environ."""
ENV_LAUNCHED = "ASYNC_PY_LAUNCHED"
"""Set, to its heartbeat interval in seconds, for a child started through a
launcher (ssh, container exec): no signal of its parent's reaches it, so it
enforces its requests' limits itself (MSG_LIMIT), beats when its link is
quiet (MSG_BEAT), and ends its own process group when its stdin closes; the
child removes it from os.environ."""
LINK_GRACE = 1.0
"""How long a launched child whose stdin closed is given to exit by itself
(it does at once unless user code is running) before it ends its group."""
ENV_HOST = "ASYNC_PY_HOST"
"""The runner's host functions, as `kind:name` entries joined by ","
(kind HOST_SYNC or HOST_ASYNC); the child removes it from os.environ."""
HOST_SYNC = "s"
HOST_ASYNC = "a"
ENV_MALLOC = "GLIBC_TUNABLES"
CHILD_MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"
"""What the parent sets ENV_MALLOC to when the child's environment has none
(src/tuning.rs, CHILD_MALLOC); the child removes it from os.environ."""

# -- the reply ring: byte offsets in the shared memory ----------------------
# Every counter is a native-endian u64 on its own cache line (ring.py reads
# them as u64 indexes derived from these).

RING_PUBLISHED = 0  # bytes published so far (child)
RING_TAKEN = 64  # bytes taken so far (parent)
RING_WAITING = 128  # 1 while the parent may sleep until a doorbell (parent)
RING_INTERRUPT_TARGET = 192  # the request the parent's last SIGINT is for (parent)
RING_IN_LOOP = 256  # 1 while the child runs its event loop, 2 while it makes a sync stream's items (child)
RING_LAST_COROUTINE = 320  # the last call_async, awaiting invoke or async stream started, stored before RING_IN_LOOP (child)
RING_INTERRUPT_TAKEN = 384  # the request stopped for the parent's SIGINT (child)
RING_MAKING = 448  # the sync stream whose items the child makes, stored before RING_IN_LOOP is set to 2 (child)
RING_SLICES = 512  # how many slices of sync streams the child began, counted before RING_MAKING is stored (child)
RING_IN_STREAM = 2  # what RING_IN_LOOP holds during a sync stream's slice
RING_DATA = 4096  # where the ring of reply bytes starts
RING_SIZE = 1 << 20  # the ring's length in bytes

# -- the zygote's socket: one byte names each message -----------------------

ZYGOTE_READY = b"r"  # zygote: loaded, ready to fork
ZYGOTE_FORK = b"f"  # parent: fork a worker on the fds passed with it
ZYGOTE_FORK_SANDBOXED = b"s"  # parent: the same, the ruleset's fd after stderr's, + ZYGOTE_PID-sized length + settings
ZYGOTE_FORKED = b"p"  # zygote: + ZYGOTE_PID (0: no fork), one for each fork
ZYGOTE_ENDED = b"x"  # zygote: + ZYGOTE_PID_STATUS, a forked worker has ended
ZYGOTE_REAP = b"w"  # parent: + ZYGOTE_PID, whose status it has taken
ZYGOTE_REAPED = b"d"  # zygote: + ZYGOTE_PID, once reaped
ZYGOTE_PID = struct.Struct(">I")
ZYGOTE_PID_STATUS = struct.Struct(">Ii")  # a pid and its raw wait status

# -- bytes the fast paths write and match whole, derived from the above -----


def _framed(payload):
    return FRAME_HEADER.pack(len(payload)) + payload


def _array_head(count):
    """The MessagePack header of an array of `count` items."""
    out = []
    _pack_header(count, 0x90, 0xDC, out)
    return out[0]


OUTPUT_MARK_FRAME = _framed(pack([OUTPUT_MARK]))
"""The whole frame [OUTPUT_MARK]."""
BEAT_FRAME = _framed(pack([MSG_BEAT]))
"""The whole frame [MSG_BEAT]."""

REPLY_OK_ARRAY = _array_head(3)
"""The header of the array [id, REPLY_OK, value] (and [id, REPLY_DATA,
value]), before the id."""
REPLY_OK_KIND = pack(REPLY_OK)
REPLY_DATA_KIND = pack(REPLY_DATA)

OK_HEAD_ID_START = REPLY_OK_ARRAY + pack(1 << 63)[:1]
"""The array's header and a uint 64's marker: the fast path writes every id
that fits one (any the parent sends) as a uint 64."""
OK_HEAD = struct.Struct(">I%dsQ%ds" % (len(OK_HEAD_ID_START), len(REPLY_OK_KIND)))
"""The frame header and the start of [id, REPLY_OK, value], packed from
(frame length, OK_HEAD_ID_START, id, REPLY_OK_KIND); the value's bytes follow."""
OK_HEAD_PAYLOAD = OK_HEAD.size - FRAME_HEADER.size
"""The bytes of OK_HEAD that count in the frame's length."""
DATA_HEAD = struct.Struct(">I%dsQ%ds" % (len(OK_HEAD_ID_START), len(REPLY_DATA_KIND)))
"""As OK_HEAD, for [id, REPLY_DATA, value]: packed from (frame length,
OK_HEAD_ID_START, id, REPLY_DATA_KIND)."""
DATA_HEAD_PAYLOAD = DATA_HEAD.size - FRAME_HEADER.size
REPLY_ITEM_KIND = pack(REPLY_ITEM)
REPLY_ITEM_DATA_KIND = pack(REPLY_ITEM_DATA)
ITEM_HEAD = struct.Struct(">I%dsQ%ds" % (len(OK_HEAD_ID_START), len(REPLY_ITEM_KIND)))
"""As OK_HEAD, for a stream's [id, REPLY_ITEM, value]."""
ITEM_HEAD_PAYLOAD = ITEM_HEAD.size - FRAME_HEADER.size
ITEM_DATA_HEAD = struct.Struct(">I%dsQ%ds" % (len(OK_HEAD_ID_START), len(REPLY_ITEM_DATA_KIND)))
"""As OK_HEAD, for a typed stream's [id, REPLY_ITEM_DATA, value]."""
ITEM_DATA_HEAD_PAYLOAD = ITEM_DATA_HEAD.size - FRAME_HEADER.size

CALL_ARRAY = _array_head(2 + len(OPS[OP_CALL]))[0]
"""The marker of a `call` request's array: [id, OP_CALL, name, args]."""
CALL_OP = pack(OP_CALL)

INVOKE_ARRAY = _array_head(2 + len(OPS[OP_INVOKE]))[0]
"""The marker of an `invoke` request's array: [id, OP_INVOKE, name, args,
kwargs, typed, limit]."""
INVOKE_OP = pack(OP_INVOKE)
INVOKE_CAPTURED_OP = pack(OP_INVOKE_CAPTURED)
"""invoke_captured has the arguments of invoke, and its fast path."""

HOST_REPLY_START = _array_head(4) + pack(MSG_HOST_REPLY)
"""How a host reply's frame begins: [MSG_HOST_REPLY, hid, ok, value]."""
HOST_CALL_START = _array_head(5) + pack(MSG_HOST)
"""How a host call's frame begins: [MSG_HOST, hid, name, args, kwargs]."""
NESTED_START = _array_head(2) + pack(MSG_NESTED)
"""How a nested request's note begins: [MSG_NESTED, id]."""
MORE_START = _array_head(3) + pack(MSG_MORE)
LIMIT_START = _array_head(3) + pack(MSG_LIMIT)
BEAT_START = _array_head(1) + pack(MSG_BEAT)
"""How a stream's credit begins: [MSG_MORE, id, granted]."""

REQUEST_ID_READERS = {}
"""After the array's marker, a request's id is a positive fixint or a uint
of 8 to 64 bits: (width, reader) by the uint's marker."""
for _size in (1, 2, 4, 8):
    _marker = pack((1 << 8 * _size) - 1)[0]
    REQUEST_ID_READERS[_marker] = (_size, _NUMBERS[_marker][0])
del _size, _marker
