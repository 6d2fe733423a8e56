//! The wire protocol of `python/PROTOCOL.md`, Rust side: length-prefixed
//! MessagePack frames between this process and a child running `worker.py`.
//!
//! [`ChildCodec`] is the one codec of the protocol: a tokio-util
//! `Encoder<ToChild>` that appends a request's frame to a buffer, and a
//! `Decoder` whose items are [`FromChild`] messages. Frames are cut and
//! checked by tokio-util's `LengthDelimitedCodec` (4-byte big-endian
//! length), used here on plain buffers: the subprocess backend does its own
//! non-blocking I/O on its own thread, appends what it reads to a buffer
//! ([`FrameReader`] keeps one beside its codec) and pulls messages from it.
//! A frame over the limit is refused before any room is reserved for it.

use std::fmt;
use std::io;

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

mod data;
mod decode;
mod from_child;
mod to_child;

pub(crate) use data::read_data;
pub(crate) use from_child::{FromChild, Hello, Outcome};
pub(crate) use to_child::ToChild;

use crate::error::PyRunnerError;

/// The protocol version this crate speaks; the child's hello must match
/// (`PROTOCOL_VERSION` of `python/protocol.py`, checked by
/// `tests/python/test_protocol.py`).
pub(crate) const PROTOCOL_VERSION: u64 = 5;

/// Why the codec failed, as the [`PyRunnerError`] it turns into (`?` does
/// it); it displays as that error does. A frame that was cut whole but
/// holds no message this side reads comes with its bytes, to quote. Boxed:
/// the messages pulled on the reply path are not made to carry its size.
#[derive(Debug)]
pub(crate) struct WireError(Box<Failure>);

#[derive(Debug)]
struct Failure {
    error: PyRunnerError,
    frame: Option<BytesMut>,
}

impl WireError {
    fn new(error: PyRunnerError, frame: Option<BytesMut>) -> Self {
        WireError(Box::new(Failure { error, frame }))
    }

    fn protocol(why: String) -> Self {
        WireError::new(PyRunnerError::Protocol(why), None)
    }

    /// The frame that did not decode, if it was one (rather than a length
    /// over the limit, or a request this side could not encode).
    pub fn frame(&self) -> Option<&[u8]> {
        self.0.frame.as_deref()
    }
}

impl From<WireError> for PyRunnerError {
    fn from(err: WireError) -> Self {
        err.0.error
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.error.fmt(f)
    }
}

impl std::error::Error for WireError {}

/// What tokio-util's codec traits ask of an error type: an I/O error is the
/// framing's, on the reading side (this codec does no I/O itself).
impl From<io::Error> for WireError {
    fn from(err: io::Error) -> Self {
        WireError::protocol(format!("bad frame from the child: {err}"))
    }
}

/// The protocol's codec: requests out, messages in, each a frame of at most
/// `limit` bytes.
#[derive(Debug)]
pub(crate) struct ChildCodec {
    frames: LengthDelimitedCodec,
    /// The limit as given, to name in the error of a request over it.
    limit: usize,
}

impl ChildCodec {
    pub fn new(limit: usize) -> Self {
        ChildCodec {
            frames: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(limit)
                .new_codec(),
            limit,
        }
    }

    /// The next whole frame in `src`, without its length.
    fn next_frame(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, WireError> {
        Ok(self.frames.decode(src)?)
    }
}

/// Appends the message's frame to `dst`, or nothing if it fails. The body
/// is written in place behind a length filled in after it: the bytes the
/// length-delimited codec would make of it, with no copy.
impl Encoder<ToChild<'_>> for ChildCodec {
    type Error = WireError;

    fn encode(&mut self, message: ToChild<'_>, dst: &mut BytesMut) -> Result<(), WireError> {
        let start = dst.len();
        dst.put_u32(0);
        let written = if let ToChild::Invoke { .. } | ToChild::Stream { .. } = message {
            // Straight into `dst`, arguments and all: one copy of them.
            dst.reserve(message.invoke_size());
            if message.write_invoke(&mut (&mut *dst).writer()) {
                Ok(())
            } else {
                Err(rmp_serde::encode::Error::Syntax(
                    "too many arguments for one frame".into(),
                ))
            }
        } else {
            rmp_serde::encode::write(&mut (&mut *dst).writer(), &message)
        };
        let size = dst.len() - start - 4;
        let refused = match written {
            Err(err) => Some(WireError::new(
                PyRunnerError::Conversion(format!("could not encode the request: {err}")),
                None,
            )),
            Ok(()) if size > self.limit => Some(WireError::protocol(format!(
                "a request of {size} bytes is over the frame limit of {} bytes (max_frame_length)",
                self.limit
            ))),
            // A limit past what 4 bytes can count is held to what they can.
            Ok(()) if size > self.frames.max_frame_length() || u32::try_from(size).is_err() => {
                Some(WireError::protocol(
                    "could not frame the request: frame size too big".into(),
                ))
            }
            Ok(()) => None,
        };
        if let Some(err) = refused {
            dst.truncate(start);
            return Err(err);
        }
        dst[start..start + 4].copy_from_slice(&(size as u32).to_be_bytes());
        Ok(())
    }
}

impl Decoder for ChildCodec {
    type Item = FromChild;
    type Error = WireError;

    /// The next message, if `src` holds a whole frame; the frame is taken
    /// from `src` whether or not it decodes.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<FromChild>, WireError> {
        let Some(frame) = self.next_frame(src)? else {
            return Ok(None);
        };
        let frame = frame.freeze();
        match FromChild::decode_shared(&frame) {
            Ok(message) => Ok(Some(message)),
            Err(error) => Err(WireError::new(error, Some(BytesMut::from(&frame[..])))),
        }
    }
}

/// The child's output as it is read: a buffer for the bytes, and the codec
/// that takes messages out of it.
pub(crate) struct FrameReader {
    codec: ChildCodec,
    buffer: BytesMut,
}

impl FrameReader {
    pub fn new(limit: usize) -> Self {
        FrameReader {
            codec: ChildCodec::new(limit),
            buffer: BytesMut::with_capacity(64 << 10),
        }
    }

    /// Where freshly read bytes go.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// The next message, if the buffer holds a whole frame.
    pub fn next_message(&mut self) -> Result<Option<FromChild>, WireError> {
        self.codec.decode(&mut self.buffer)
    }
}

/// Feeds bytes, as a child might write them, through the frame reader and
/// the message decoder, in chunks whose sizes the bytes themselves choose.
/// Returns how many messages decoded; stops at the first error, as the
/// subprocess backend does (it replaces the child then).
#[cfg(any(test, feature = "fuzzing"))]
pub fn read_child_output(data: &[u8]) -> usize {
    const LIMIT: usize = 1 << 16;
    let Some((&chunk, mut rest)) = data.split_first() else {
        return 0;
    };
    let chunk = usize::from(chunk).max(1);
    let mut reader = FrameReader::new(LIMIT);
    let mut decoded = 0;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(chunk.min(rest.len()));
        rest = later;
        reader.buffer().extend_from_slice(now);
        loop {
            let before = reader.buffer().len();
            match reader.next_message() {
                Ok(Some(_)) => {
                    // The frame's length may have been taken on an earlier call.
                    let taken = before - reader.buffer().len();
                    assert!(taken <= LIMIT + 4, "a frame over the limit got through");
                    decoded += 1;
                }
                Ok(None) => break,
                Err(err) => {
                    if let Some(frame) = err.frame() {
                        assert!(frame.len() <= LIMIT, "a frame over the limit got through");
                    }
                    return decoded;
                }
            }
        }
        assert!(
            reader.buffer().capacity() <= 2 * LIMIT + 64 * 1024 + data.len(),
            "the reader reserved room the limit does not allow"
        );
    }
    decoded
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;
    use serde_json::Value;

    use super::*;
    use crate::command::{path_arg, Request};

    fn frame_of(value: &impl serde::Serialize) -> Vec<u8> {
        let body = rmp_serde::to_vec(value).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    /// What the request writer before `ToChild` made of a request: the
    /// tuple of its fields through rmp-serde, framed by the length-delimited
    /// codec.
    fn framed_as_before(id: u64, request: &Request, limit: Option<f64>) -> Vec<u8> {
        let body = match request {
            Request::Run { code } | Request::Broadcast { code, .. } => {
                rmp_serde::to_vec(&(id, "run", code))
            }
            Request::RunFile { path } => rmp_serde::to_vec(&(id, "run_file", path_arg(path))),
            Request::Eval { expr } => rmp_serde::to_vec(&(id, "eval", expr)),
            Request::ReadVariable { name } => rmp_serde::to_vec(&(id, "read", name)),
            Request::CallFunction { name, args } => rmp_serde::to_vec(&(id, "call", name, args)),
            Request::CallAsyncFunction { name, args } => {
                rmp_serde::to_vec(&(id, "call_async", name, args, limit))
            }
            Request::SetVenv { dir } => rmp_serde::to_vec(&(id, "set_venv", path_arg(dir))),
            Request::Stop => rmp_serde::to_vec(&(id, "stop")),
            Request::RunCaptured { code } => rmp_serde::to_vec(&(id, "run_captured", code)),
            Request::Invoke(_) | Request::Cancel(_) => unreachable!("new in protocol 3"),
            Request::Stream(_) | Request::HostDone { .. } => {
                unreachable!("not among every_request's")
            }
        };
        let mut out = BytesMut::new();
        ChildCodec::new(1 << 20)
            .frames
            .encode(Bytes::from(body.unwrap()), &mut out)
            .unwrap();
        out.to_vec()
    }

    fn every_request() -> Vec<Request> {
        let args = vec![
            Value::from(1),
            Value::from(u64::MAX),
            Value::from(-2.5),
            serde_json::json!({"k": [null, true, "s"]}),
        ];
        #[cfg(unix)]
        let odd_path = {
            use std::os::unix::ffi::OsStrExt;
            PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff\xfe.py"))
        };
        #[cfg(not(unix))]
        let odd_path = PathBuf::from("odd.py");
        vec![
            Request::Run {
                code: "x = 1".into(),
            },
            Request::Broadcast {
                code: "y = 'é' * 40".into(),
                index: 3,
            },
            Request::RunFile {
                path: "/tmp/script.py".into(),
            },
            Request::RunFile { path: odd_path },
            Request::Eval {
                expr: "x + 1".into(),
            },
            Request::ReadVariable { name: "x".into() },
            Request::CallFunction {
                name: "add".into(),
                args: args.clone(),
            },
            Request::CallFunction {
                name: "f".into(),
                args: Vec::new(),
            },
            Request::CallAsyncFunction {
                name: "fetch".into(),
                args,
            },
            Request::SetVenv {
                dir: "/opt/venv".into(),
            },
            Request::RunCaptured {
                code: "print('x')".into(),
            },
            Request::Stop,
        ]
    }

    #[test]
    fn every_request_goes_out_in_the_same_bytes_as_before() {
        let mut codec = ChildCodec::new(1 << 20);
        for request in every_request() {
            for (id, limit) in [(1, None), (u64::MAX, Some(2.5)), (300, Some(0.0))] {
                let mut out = BytesMut::new();
                codec
                    .encode(ToChild::new(id, &request, limit), &mut out)
                    .unwrap();
                assert_eq!(
                    out.to_vec(),
                    framed_as_before(id, &request, limit),
                    "{request:?}, {id}, {limit:?}"
                );
            }
        }
    }

    #[test]
    fn requests_become_their_messages() {
        let args = vec![Value::from(1)];
        let call = Request::CallAsyncFunction {
            name: "f".into(),
            args: args.clone(),
        };
        assert_eq!(
            ToChild::from((&call, 5, Some(1.5))),
            ToChild::CallAsync {
                id: 5,
                name: "f",
                args: &args,
                limit: Some(1.5)
            }
        );
        // A pool's run is a plain run to the child; only a coroutine has a limit.
        let broadcast = Request::Broadcast {
            code: "x = 1".into(),
            index: 7,
        };
        assert_eq!(
            ToChild::new(6, &broadcast, Some(1.0)),
            ToChild::Run {
                id: 6,
                code: "x = 1"
            }
        );
        let call = Request::CallFunction {
            name: "g".into(),
            args: args.clone(),
        };
        assert_eq!(
            ToChild::new(7, &call, Some(1.0)),
            ToChild::Call {
                id: 7,
                name: "g",
                args: &args
            }
        );
        assert_eq!(ToChild::new(8, &Request::Stop, None).id(), 8);
    }

    #[test]
    fn an_invoke_carries_its_packed_arguments_as_they_are() {
        use std::collections::HashMap;

        use serde_bytes::ByteBuf;

        use crate::call::Packed;
        use crate::command::{Invoke, Readers, Returns};

        let mut args = Packed::default();
        args.push(&-3).unwrap();
        args.spread(&("s", ByteBuf::from(vec![0, 255]))).unwrap();
        let mut kwargs = Packed::default();
        kwargs.push_named("flag", &true).unwrap();
        for (returns, typed, capture, op) in [
            (Returns::Value, false, false, "invoke"),
            (Returns::Typed(Readers::of::<u8>()), true, false, "invoke"),
            (Returns::Value, false, true, "invoke_captured"),
        ] {
            let invoke = Request::Invoke(Invoke {
                name: "pkg.f".into(),
                args: args.clone(),
                kwargs: kwargs.clone(),
                returns,
                stream: None,
                capture,
            });
            for (id, limit) in [(1, None), (u64::MAX, Some(2.5))] {
                let mut out = BytesMut::new();
                ChildCodec::new(1 << 20)
                    .encode(ToChild::new(id, &invoke, limit), &mut out)
                    .unwrap();
                assert_eq!(
                    out.len() - 4,
                    u32::from_be_bytes(out[..4].try_into().unwrap()) as usize
                );
                type Frame = (
                    u64,
                    String,
                    String,
                    (i64, String, ByteBuf),
                    HashMap<String, bool>,
                    bool,
                    Option<f64>,
                );
                let frame: Frame = rmp_serde::from_slice(&out[4..]).unwrap();
                assert_eq!(
                    frame,
                    (
                        id,
                        op.into(),
                        "pkg.f".into(),
                        (-3, "s".into(), ByteBuf::from(vec![0, 255])),
                        HashMap::from([("flag".into(), true)]),
                        typed,
                        limit
                    )
                );
            }
        }
        let slot = std::sync::Arc::new(crate::command::ReplySlot::default());
        let cancel = Request::Cancel(crate::command::CancelTarget(slot));
        let mut out = BytesMut::new();
        ChildCodec::new(1 << 20)
            .encode(ToChild::new(9, &cancel, None), &mut out)
            .unwrap();
        assert_eq!(out.to_vec(), frame_of(&("cancel", 9u64)));
    }

    #[test]
    fn the_stream_fuzz_seeds_are_frames_the_reader_takes_whole() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/frames");
        for (name, frames) in [
            ("streaming", 1),
            ("stream_item", 1),
            ("stream_item_data", 1),
            ("stream_open_items_end", 5),
        ] {
            let data = std::fs::read(seeds.join(name)).unwrap();
            assert_eq!(read_child_output(&data), frames, "{name}");
        }
    }

    #[test]
    fn a_stream_is_an_invoke_with_its_first_credit_and_more_names_the_new_total() {
        use crate::call::{Feed, Packed};
        use crate::command::{Invoke, Returns};

        let mut args = Packed::default();
        args.push(&7).unwrap();
        let stream = Request::Invoke(Invoke {
            name: "gen".into(),
            args,
            kwargs: Packed::default(),
            returns: Returns::Value,
            stream: Some(Feed::new(256)),
            capture: false,
        });
        let mut codec = ChildCodec::new(1 << 20);
        let mut out = BytesMut::new();
        codec
            .encode(ToChild::new(3, &stream, Some(0.5)), &mut out)
            .unwrap();
        type Frame = (
            u64,
            String,
            String,
            (i64,),
            std::collections::HashMap<String, bool>,
            bool,
            Option<f64>,
            u64,
        );
        let frame: Frame = rmp_serde::from_slice(&out[4..]).unwrap();
        assert_eq!(
            frame,
            (
                3,
                "stream".into(),
                "gen".into(),
                (7,),
                Default::default(),
                false,
                Some(0.5),
                256
            )
        );
        let mut out = BytesMut::new();
        codec
            .encode(
                ToChild::More {
                    id: 3,
                    granted: 384,
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(out.to_vec(), frame_of(&("more", 3u64, 384u64)));
    }

    #[test]
    fn requests_follow_one_another_in_the_buffer() {
        let mut codec = ChildCodec::new(1 << 20);
        let mut out = BytesMut::new();
        let mut expected = Vec::new();
        for (id, request) in (1..).zip(every_request()) {
            codec
                .encode(ToChild::new(id, &request, None), &mut out)
                .unwrap();
            expected.extend(framed_as_before(id, &request, None));
        }
        assert_eq!(out.to_vec(), expected);
    }

    #[test]
    fn a_request_over_the_limit_is_refused_and_leaves_the_buffer_as_it_was() {
        let mut codec = ChildCodec::new(100);
        let mut out = BytesMut::from(&b"before"[..]);
        let code = "x".repeat(200);
        let err = codec
            .encode(ToChild::Run { id: 1, code: &code }, &mut out)
            .unwrap_err();
        assert!(err.frame().is_none());
        assert_eq!(
            PyRunnerError::from(err),
            PyRunnerError::Protocol(
                "a request of 208 bytes is over the frame limit of 100 bytes (max_frame_length)"
                    .into()
            )
        );
        assert_eq!(&out[..], b"before");
        // At the limit exactly it goes.
        let code = "x".repeat(92);
        codec
            .encode(ToChild::Run { id: 1, code: &code }, &mut out)
            .unwrap();
        assert_eq!(out.len(), 6 + 4 + 100);
    }

    #[test]
    fn requests_round_trip_through_the_codec() {
        let mut codec = ChildCodec::new(1 << 20);
        let mut out = BytesMut::new();
        let args = [Value::from(1), Value::from(u64::MAX)];
        codec
            .encode(
                ToChild::Call {
                    id: 9,
                    name: "add",
                    args: &args,
                },
                &mut out,
            )
            .unwrap();
        let frame = codec.next_frame(&mut out).unwrap().unwrap();
        assert!(out.is_empty());
        let decoded: (u64, String, String, Vec<Value>) = rmp_serde::from_slice(&frame).unwrap();
        assert_eq!(decoded, (9, "call".into(), "add".into(), args.to_vec()));
    }

    #[test]
    fn too_deep_arguments_never_make_a_request() {
        let mut value = Value::from(1);
        for _ in 0..1000 {
            value = Value::Array(vec![value]);
        }
        let outcome = Request::call("f", vec![value]);
        assert!(matches!(outcome, Err(PyRunnerError::Conversion(_))));
    }

    #[test]
    fn child_output_in_any_chunking_decodes_the_same() {
        let mut stream = Vec::new();
        for i in 0..5u64 {
            stream.extend(frame_of(&(i, "ok", vec![i; 3])));
        }
        for chunk in [1u8, 2, 3, 7, 255] {
            let mut data = vec![chunk];
            data.extend(&stream);
            assert_eq!(read_child_output(&data), 5, "chunk {chunk}");
        }
        // A length over the limit stops the stream at once.
        assert_eq!(read_child_output(&[4, 0xff, 0xff, 0xff, 0xff, 1, 2]), 0);
    }

    #[test]
    fn reads_messages_split_across_reads() {
        let mut reader = FrameReader::new(1 << 10);
        let bytes = frame_of(&(7u64, "ok", 42));
        reader.buffer().extend_from_slice(&bytes[..3]);
        assert!(reader.next_message().unwrap().is_none());
        reader.buffer().extend_from_slice(&bytes[3..5]);
        assert!(reader.next_message().unwrap().is_none());
        reader.buffer().extend_from_slice(&bytes[5..]);
        assert_eq!(
            reader.next_message().unwrap(),
            Some(FromChild::Reply {
                id: 7,
                outcome: Outcome::Done(Ok(crate::command::Answer::Value(Value::from(42))))
            })
        );
        assert!(reader.buffer().is_empty());
        assert!(reader.next_message().unwrap().is_none());
    }

    #[test]
    fn refuses_a_frame_over_the_limit_without_allocating_it() {
        let mut reader = FrameReader::new(1 << 10);
        reader.buffer().extend_from_slice(&u32::MAX.to_be_bytes());
        let err = reader.next_message().unwrap_err();
        assert!(err.frame().is_none());
        assert_eq!(
            err.to_string(),
            "protocol error: bad frame from the child: frame size too big"
        );
        assert_eq!(
            PyRunnerError::from(err),
            PyRunnerError::Protocol("bad frame from the child: frame size too big".into())
        );
        assert!(reader.buffer().capacity() < 1 << 20);
    }

    #[test]
    fn a_frame_that_does_not_decode_comes_back_with_the_error() {
        let mut reader = FrameReader::new(1 << 10);
        let bytes = frame_of(&(1u64, "maybe"));
        let next = frame_of(&("out",));
        reader.buffer().extend_from_slice(&bytes);
        reader.buffer().extend_from_slice(&next);
        let err = reader.next_message().unwrap_err();
        assert_eq!(err.frame(), Some(&bytes[4..]));
        assert_eq!(
            PyRunnerError::from(err),
            PyRunnerError::Protocol(
                "malformed frame from the child: unknown status \"maybe\"".into()
            )
        );
        // The bad frame is gone from the buffer; what follows is intact.
        assert_eq!(&reader.buffer()[..], &next[..]);
        assert_eq!(reader.next_message().unwrap(), Some(FromChild::OutputMark));
    }

    #[test]
    fn decodes_errors_and_conversion_failures() {
        let frame =
            rmp_serde::to_vec(&(3u64, "err", "KeyError", "'k'", Option::<String>::None)).unwrap();
        assert_eq!(
            FromChild::decode(&frame).unwrap(),
            FromChild::Reply {
                id: 3,
                outcome: Outcome::Done(Err(PyRunnerError::Python {
                    kind: "KeyError".into(),
                    message: "'k'".into(),
                    traceback: None
                }))
            }
        );
        let frame = rmp_serde::to_vec(&(4u64, "conv", "too big")).unwrap();
        assert_eq!(
            FromChild::decode(&frame).unwrap(),
            FromChild::Reply {
                id: 4,
                outcome: Outcome::Done(Err(PyRunnerError::Conversion("too big".into())))
            }
        );
        let frame = rmp_serde::to_vec(&(5u64, "timeout")).unwrap();
        assert_eq!(
            FromChild::decode(&frame).unwrap(),
            FromChild::Reply {
                id: 5,
                outcome: Outcome::TimedOut
            }
        );
    }

    #[test]
    fn an_output_mark_decodes_as_one() {
        let frame = rmp_serde::to_vec(&("out",)).unwrap();
        assert_eq!(frame, b"\x91\xa3out", "the bytes the worker writes");
        assert_eq!(FromChild::decode(&frame), Ok(FromChild::OutputMark));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for (garbage, text) in [
            (
                &b"\xc1"[..],
                "undecodable frame from the child: the reserved marker 0xc1",
            ),
            (
                b"",
                "undecodable frame from the child: the frame ends 1 bytes short of its value",
            ),
            (
                b"\x93\x01",
                "undecodable frame from the child: a container of 3 items in the 1 bytes left of the frame",
            ),
            (
                b"\x92\xa2ok\x01",
                "malformed frame from the child: reply without an id",
            ),
            (
                b"\x93\x01\xa3bad\x01",
                "malformed frame from the child: unknown status \"bad\"",
            ),
            (
                b"\xc4\x01x",
                "undecodable frame from the child: a frame holds binary data, not an array",
            ),
            (b"\x90", "malformed frame from the child: empty array"),
            (b"\x91\x01", "malformed frame from the child: reply without a status"),
            (
                b"\x91\xa5hello",
                "malformed frame from the child: hello without a version",
            ),
        ] {
            assert_eq!(
                FromChild::decode(garbage),
                Err(PyRunnerError::Protocol(text.into())),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn hello_with_another_protocol_version_is_refused() {
        let frame = rmp_serde::to_vec(&("hello", 99u64, "3.11.7", 1u32, "python")).unwrap();
        assert_eq!(
            FromChild::decode(&frame),
            Err(PyRunnerError::Protocol(format!(
                "the child speaks protocol 99, this crate speaks {PROTOCOL_VERSION}"
            )))
        );
        let frame = rmp_serde::to_vec(&("hello", 1u64, "3.11.7", 4321u32, "python")).unwrap();
        assert!(matches!(
            FromChild::decode(&frame),
            Err(PyRunnerError::Protocol(_))
        ));
        let frame =
            rmp_serde::to_vec(&("hello", PROTOCOL_VERSION, "3.11.7", 4321u32, "python")).unwrap();
        assert_eq!(
            FromChild::decode(&frame),
            Ok(FromChild::Hello(Hello {
                python_version: "3.11.7".into(),
                ring: false
            }))
        );
        let frame =
            rmp_serde::to_vec(&("hello", PROTOCOL_VERSION, "3.12.1", 4321u32, "python", true))
                .unwrap();
        assert_eq!(
            FromChild::decode(&frame),
            Ok(FromChild::Hello(Hello {
                python_version: "3.12.1".into(),
                ring: true
            }))
        );
    }

    /// This thread's CPU time in ns: on a shared machine, what a wall clock
    /// would add while other processes run is left out.
    fn cpu_ns() -> f64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec for the call to fill.
        let done = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        assert_eq!(done, 0);
        now.tv_sec as f64 * 1e9 + now.tv_nsec as f64
    }

    fn median(mut runs: Vec<f64>) -> f64 {
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    }

    /// Encodes a million requests (a `call` with two ints, and every fourth
    /// a short `run`) and decodes a million small replies read in 64 KiB
    /// chunks, five times each; prints the median CPU time of one, in ns. Run
    /// it optimised: `cargo test --release --lib wire::tests::speed --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, for an optimised build"]
    fn speed() {
        const N: usize = 1_000_000;
        let call = Request::CallFunction {
            name: "add".into(),
            args: vec![Value::from(1), Value::from(2)],
        };
        let run = Request::Run {
            code: "x = 1".into(),
        };
        let mut codec = ChildCodec::new(1 << 26);
        let mut out = BytesMut::with_capacity(64 << 10);
        let mut encode = Vec::new();
        for _ in 0..5 {
            let start = cpu_ns();
            for i in 0..N {
                let request = if i % 4 == 0 { &run } else { &call };
                codec
                    .encode(ToChild::new(i as u64, request, None), &mut out)
                    .unwrap();
                if out.len() > 32 << 10 {
                    out.clear();
                }
            }
            encode.push((cpu_ns() - start) / N as f64);
        }
        let mut stream = Vec::new();
        for id in 0..N as u64 {
            stream.extend(frame_of(&(id, "ok", 42)));
        }
        let mut decode = Vec::new();
        for _ in 0..5 {
            let mut reader = FrameReader::new(1 << 20);
            let mut odd = 0;
            let start = cpu_ns();
            for chunk in stream.chunks(64 << 10) {
                reader.buffer().extend_from_slice(chunk);
                while let Some(message) = reader.next_message().unwrap() {
                    match message {
                        FromChild::Reply { id, .. } => odd += id as usize & 1,
                        other => panic!("{other:?}"),
                    }
                }
            }
            decode.push((cpu_ns() - start) / N as f64);
            assert_eq!(odd, N / 2);
        }
        println!(
            "encode: {:.1} ns a request (runs {encode:.1?})",
            median(encode.clone())
        );
        println!(
            "decode: {:.1} ns a reply (runs {decode:.1?})",
            median(decode.clone())
        );
    }
}
