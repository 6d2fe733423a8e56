//! What goes to the child: one typed message per request, borrowing the
//! request's data, written as the positional array of `python/PROTOCOL.md`
//! (`[id, op, args...]`).

use std::path::Path;

use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::Value;

use crate::call::Packed;
use crate::command::{path_arg, PathArg, Request, Returns};

/// One request to the child, with the id its reply will carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ToChild<'a> {
    Run {
        id: u64,
        code: &'a str,
    },
    /// A `run` whose output comes back in a `captured` frame before its
    /// reply.
    RunCaptured {
        id: u64,
        code: &'a str,
    },
    RunFile {
        id: u64,
        path: &'a Path,
    },
    Eval {
        id: u64,
        expr: &'a str,
    },
    Read {
        id: u64,
        name: &'a str,
    },
    /// Arguments were checked for depth when the request was made.
    Call {
        id: u64,
        name: &'a str,
        args: &'a [Value],
    },
    /// `limit` is the coroutine's time limit in seconds; the child cancels
    /// it and answers `timeout` past it.
    CallAsync {
        id: u64,
        name: &'a str,
        args: &'a [Value],
        limit: Option<f64>,
    },
    SetVenv {
        id: u64,
        dir: &'a Path,
    },
    /// A call of the call builder. Its arguments are already MessagePack:
    /// the codec writes them as they are (see [`ToChild::write_invoke`]).
    /// `typed`: the result is wanted with bytes kept (a `data` reply).
    /// `captured`: its output comes back in a `captured` frame (the op
    /// `invoke_captured`, same arguments).
    Invoke {
        id: u64,
        name: &'a str,
        args: &'a Packed,
        kwargs: &'a Packed,
        typed: bool,
        limit: Option<f64>,
        captured: bool,
    },
    /// A call of the call builder whose result is iterated: written as an
    /// invoke is, with the first `credit` (how many items the child may
    /// send before it hears `more`) at the end. `limit` is each item's.
    Stream {
        id: u64,
        name: &'a str,
        args: &'a Packed,
        kwargs: &'a Packed,
        typed: bool,
        limit: Option<f64>,
        credit: u64,
    },
    /// `["more", id, granted]`: stream `id` may have sent `granted` items
    /// in all. No reply.
    More {
        id: u64,
        granted: u64,
    },
    /// `["cancel", id]`: cancel the coroutine of request `id`, if one runs,
    /// or close its stream, if one is open. No reply.
    Cancel {
        id: u64,
    },
    Stop {
        id: u64,
    },
    /// `["nested", id]`: the request that follows, `id`, was sent by a
    /// host function the child waits for, and runs inside that wait. No
    /// reply.
    Nested {
        id: u64,
    },
    /// `["limit", id, seconds]`, to a launched child right before request
    /// `id`: its time limit, which the child enforces itself. No reply.
    Limit {
        id: u64,
        seconds: f64,
    },
    /// `["beat"]`, on a launched child's quiet link. No reply.
    Beat,
    /// `["host_reply", hid, ok, value]`: host call `hid` returned `value`
    /// (`ok`) or failed with the message `value`. No reply.
    HostReply {
        hid: u64,
        result: &'a Result<Value, String>,
    },
}

impl<'a> ToChild<'a> {
    /// What goes out for `request` under `id`. `limit` is the coroutine
    /// time limit in seconds, used by `call_async` and `invoke`. A pool's
    /// broadcast goes out as a plain `run`: which worker runs it is the
    /// pool's business, not the child's. For a cancel, `id` is that of
    /// the request to cancel.
    pub fn new(id: u64, request: &'a Request, limit: Option<f64>) -> Self {
        match request {
            Request::Run { code } | Request::Broadcast { code, .. } => ToChild::Run { id, code },
            Request::RunCaptured { code } => ToChild::RunCaptured { id, code },
            Request::RunFile { path } => ToChild::RunFile { id, path },
            Request::Eval { expr } => ToChild::Eval { id, expr },
            Request::ReadVariable { name } => ToChild::Read { id, name },
            Request::CallFunction { name, args } => ToChild::Call { id, name, args },
            Request::CallAsyncFunction { name, args } => ToChild::CallAsync {
                id,
                name,
                args,
                limit,
            },
            Request::SetVenv { dir } => ToChild::SetVenv { id, dir },
            Request::Invoke(invoke) => match &invoke.stream {
                None => ToChild::Invoke {
                    id,
                    name: &invoke.name,
                    args: &invoke.args,
                    kwargs: &invoke.kwargs,
                    typed: matches!(invoke.returns, Returns::Typed(_)),
                    limit,
                    captured: invoke.capture,
                },
                Some(feed) => ToChild::Stream {
                    id,
                    name: &invoke.name,
                    args: &invoke.args,
                    kwargs: &invoke.kwargs,
                    typed: matches!(invoke.returns, Returns::Typed(_)),
                    limit,
                    credit: feed.window(),
                },
            },
            // A stream's signal is answered with `more` or a cancel, which
            // the supervisor writes itself; it never goes out as it is.
            Request::Cancel(_) | Request::Stream(_) => ToChild::Cancel { id },
            Request::HostDone { .. } => unreachable!("the supervisor writes host replies itself"),
            Request::Stop => ToChild::Stop { id },
        }
    }

    /// The id the child's reply will carry.
    pub fn id(&self) -> u64 {
        match *self {
            ToChild::Run { id, .. }
            | ToChild::RunCaptured { id, .. }
            | ToChild::RunFile { id, .. }
            | ToChild::Eval { id, .. }
            | ToChild::Read { id, .. }
            | ToChild::Call { id, .. }
            | ToChild::CallAsync { id, .. }
            | ToChild::SetVenv { id, .. }
            | ToChild::Invoke { id, .. }
            | ToChild::Stream { id, .. }
            | ToChild::More { id, .. }
            | ToChild::Cancel { id }
            | ToChild::Nested { id }
            | ToChild::Limit { id, .. }
            | ToChild::Stop { id } => id,
            ToChild::HostReply { hid, .. } => hid,
            ToChild::Beat => 0,
        }
    }

    /// The operation's name on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            ToChild::Run { .. } => "run",
            ToChild::RunCaptured { .. } => "run_captured",
            ToChild::RunFile { .. } => "run_file",
            ToChild::Eval { .. } => "eval",
            ToChild::Read { .. } => "read",
            ToChild::Call { .. } => "call",
            ToChild::CallAsync { .. } => "call_async",
            ToChild::SetVenv { .. } => "set_venv",
            ToChild::Invoke {
                captured: false, ..
            } => "invoke",
            ToChild::Invoke { captured: true, .. } => "invoke_captured",
            ToChild::Stream { .. } => "stream",
            ToChild::More { .. } => "more",
            ToChild::Cancel { .. } => "cancel",
            ToChild::Nested { .. } => "nested",
            ToChild::Limit { .. } => "limit",
            ToChild::Beat => "beat",
            ToChild::Stop { .. } => "stop",
            ToChild::HostReply { .. } => "host_reply",
        }
    }

    /// About how many bytes [`write_invoke`](Self::write_invoke) writes.
    pub fn invoke_size(&self) -> usize {
        match self {
            ToChild::Invoke {
                name, args, kwargs, ..
            }
            | ToChild::Stream {
                name, args, kwargs, ..
            } => 80 + name.len() + args.bytes.len() + kwargs.bytes.len(),
            _ => 0,
        }
    }

    /// Writes `[id, "invoke", name, args, kwargs, typed, limit]` (a stream:
    /// `[id, "stream", ..., limit, credit]`) with the packed arguments
    /// copied in as they are (serde has no way to write bytes that are
    /// already MessagePack); other messages go through their `Serialize`.
    /// Writing to a buffer cannot fail.
    pub fn write_invoke<W: std::io::Write>(&self, out: &mut W) -> bool {
        let (id, name, args, kwargs, typed, limit, credit) = match *self {
            ToChild::Invoke {
                id,
                name,
                args,
                kwargs,
                typed,
                limit,
                ..
            } => (id, name, args, kwargs, typed, limit, None),
            ToChild::Stream {
                id,
                name,
                args,
                kwargs,
                typed,
                limit,
                credit,
            } => (id, name, args, kwargs, typed, limit, Some(credit)),
            _ => return false,
        };
        let (Ok(args_count), Ok(kwargs_count)) =
            (u32::try_from(args.count), u32::try_from(kwargs.count))
        else {
            return false;
        };
        let _ = rmp::encode::write_array_len(out, if credit.is_some() { 8 } else { 7 });
        let _ = rmp::encode::write_uint(out, id);
        let _ = rmp::encode::write_str(out, self.op());
        let _ = rmp::encode::write_str(out, name);
        let _ = rmp::encode::write_array_len(out, args_count);
        let _ = out.write_all(&args.bytes);
        let _ = rmp::encode::write_map_len(out, kwargs_count);
        let _ = out.write_all(&kwargs.bytes);
        let _ = rmp::encode::write_bool(out, typed);
        let _ = match limit {
            Some(limit) => rmp::encode::write_f64(out, limit).map_err(drop),
            None => rmp::encode::write_nil(out).map_err(drop),
        };
        if let Some(credit) = credit {
            let _ = rmp::encode::write_uint(out, credit);
        }
        true
    }
}

/// `(request, id, limit)`, as [`ToChild::new`] takes them.
impl<'a> From<(&'a Request, u64, Option<f64>)> for ToChild<'a> {
    fn from((request, id, limit): (&'a Request, u64, Option<f64>)) -> Self {
        ToChild::new(id, request, limit)
    }
}

/// The array `[id, op, args...]`: the same bytes as the tuple of those
/// values would make.
impl Serialize for ToChild<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let ToChild::Invoke { .. } | ToChild::Stream { .. } = self {
            return Err(serde::ser::Error::custom(
                "an invoke is written by ToChild::write_invoke",
            ));
        }
        if let ToChild::More { id, granted } = *self {
            let mut array = serializer.serialize_tuple(3)?;
            array.serialize_element(self.op())?;
            array.serialize_element(&id)?;
            array.serialize_element(&granted)?;
            return array.end();
        }
        if let ToChild::HostReply { hid, result } = *self {
            let mut array = serializer.serialize_tuple(4)?;
            array.serialize_element(self.op())?;
            array.serialize_element(&hid)?;
            array.serialize_element(&result.is_ok())?;
            match result {
                Ok(value) => array.serialize_element(value)?,
                Err(message) => array.serialize_element(message)?,
            }
            return array.end();
        }
        if let ToChild::Beat = *self {
            let mut array = serializer.serialize_tuple(1)?;
            array.serialize_element(self.op())?;
            return array.end();
        }
        if let ToChild::Limit { id, seconds } = *self {
            let mut array = serializer.serialize_tuple(3)?;
            array.serialize_element(self.op())?;
            array.serialize_element(&id)?;
            array.serialize_element(&seconds)?;
            return array.end();
        }
        if let ToChild::Cancel { id } | ToChild::Nested { id } = *self {
            let mut array = serializer.serialize_tuple(2)?;
            array.serialize_element(self.op())?;
            array.serialize_element(&id)?;
            return array.end();
        }
        let len = match self {
            ToChild::Stop { .. } => 2,
            ToChild::Call { .. } => 4,
            ToChild::CallAsync { .. } => 5,
            _ => 3,
        };
        let mut array = serializer.serialize_tuple(len)?;
        array.serialize_element(&self.id())?;
        array.serialize_element(self.op())?;
        match *self {
            ToChild::Run { code: text, .. }
            | ToChild::RunCaptured { code: text, .. }
            | ToChild::Eval { expr: text, .. }
            | ToChild::Read { name: text, .. } => array.serialize_element(text)?,
            ToChild::RunFile { path, .. } | ToChild::SetVenv { dir: path, .. } => {
                array.serialize_element(&path_arg(path))?
            }
            ToChild::Call { name, args, .. } => {
                array.serialize_element(name)?;
                array.serialize_element(args)?;
            }
            ToChild::CallAsync {
                name, args, limit, ..
            } => {
                array.serialize_element(name)?;
                array.serialize_element(args)?;
                array.serialize_element(&limit)?;
            }
            ToChild::Stop { .. }
            | ToChild::Invoke { .. }
            | ToChild::Stream { .. }
            | ToChild::More { .. }
            | ToChild::Cancel { .. }
            | ToChild::Nested { .. }
            | ToChild::Limit { .. }
            | ToChild::Beat
            | ToChild::HostReply { .. } => {}
        }
        array.end()
    }
}

/// On the wire a path is a str, or, when it is not UTF-8, an array of its
/// bytes as ints: a str there must be UTF-8, and bin is kept out of the
/// protocol.
impl Serialize for PathArg<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PathArg::Text(text) => serializer.serialize_str(text),
            PathArg::Bytes(bytes) => serializer.collect_seq(bytes.iter()),
        }
    }
}
