//! The wire protocol of `python/PROTOCOL.md`, Rust side: length-prefixed
//! MessagePack frames between this process and a child running `worker.py`.
//!
//! Frames are cut and checked by tokio-util's `LengthDelimitedCodec` (4-byte
//! big-endian length), used here on plain buffers: the subprocess backend
//! does its own non-blocking I/O on its own thread. A frame over the limit
//! is refused before any room is reserved for it.

use bytes::{BufMut, BytesMut};
use serde_json::Value;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::command::{path_arg, PathArg, Reply, Request};

mod decode;
use crate::error::PyRunnerError;

/// The protocol version this crate speaks; the child's hello must match
/// (`PROTOCOL_VERSION` of `python/protocol.py`, checked by
/// `tests/python/test_protocol.py`).
pub(crate) const PROTOCOL_VERSION: u64 = 2;

fn codec(limit: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(limit)
        .new_codec()
}

/// Cuts the child's output into frames.
pub(crate) struct FrameReader {
    codec: LengthDelimitedCodec,
    buffer: BytesMut,
}

impl FrameReader {
    pub fn new(limit: usize) -> Self {
        FrameReader {
            codec: codec(limit),
            buffer: BytesMut::with_capacity(64 << 10),
        }
    }

    /// Where freshly read bytes go.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// The next whole frame, if the buffer holds one.
    pub fn next_frame(&mut self) -> Result<Option<BytesMut>, PyRunnerError> {
        self.codec
            .decode(&mut self.buffer)
            .map_err(|err| PyRunnerError::Protocol(format!("bad frame from the child: {err}")))
    }
}

/// Frames requests into an output buffer.
pub(crate) struct FrameWriter {
    codec: LengthDelimitedCodec,
    /// Where a request is encoded; handed to the codec without a copy.
    scratch: BytesMut,
    /// The codec's `max_frame_length`, to name in the error of a request over it.
    limit: usize,
}

impl FrameWriter {
    pub fn new(limit: usize) -> Self {
        FrameWriter {
            codec: codec(limit),
            limit,
            scratch: BytesMut::with_capacity(256),
        }
    }

    /// Appends one request frame to `out`. `limit` is the coroutine time
    /// limit in seconds, for `call_async`.
    pub fn request(
        &mut self,
        out: &mut BytesMut,
        id: u64,
        request: &Request,
        limit: Option<f64>,
    ) -> Result<(), PyRunnerError> {
        self.scratch.clear();
        let buf = &mut (&mut self.scratch).writer();
        let encoded = match request {
            Request::Run { code } | Request::Broadcast { code, .. } => {
                rmp_serde::encode::write(buf, &(id, "run", code))
            }
            Request::RunFile { path } => {
                rmp_serde::encode::write(buf, &(id, "run_file", path_arg(path)))
            }
            Request::Eval { expr } => rmp_serde::encode::write(buf, &(id, "eval", expr)),
            Request::ReadVariable { name } => rmp_serde::encode::write(buf, &(id, "read", name)),
            // Arguments were checked for depth when the request was made.
            Request::CallFunction { name, args } => {
                rmp_serde::encode::write(buf, &(id, "call", name, args))
            }
            Request::CallAsyncFunction { name, args } => {
                rmp_serde::encode::write(buf, &(id, "call_async", name, args, limit))
            }
            Request::SetVenv { dir } => {
                rmp_serde::encode::write(buf, &(id, "set_venv", path_arg(dir)))
            }
            Request::Stop => rmp_serde::encode::write(buf, &(id, "stop")),
        };
        encoded.map_err(|err| {
            PyRunnerError::Conversion(format!("could not encode the request: {err}"))
        })?;
        let frame = self.scratch.split().freeze();
        let size = frame.len();
        if size > self.limit {
            return Err(PyRunnerError::Protocol(format!(
                "a request of {size} bytes is over the frame limit of {} bytes (max_frame_length)",
                self.limit
            )));
        }
        self.codec
            .encode(frame, out)
            .map_err(|err| PyRunnerError::Protocol(format!("could not frame the request: {err}")))
    }
}

/// On the wire a path is a str, or, when it is not UTF-8, an array of its
/// bytes as ints: a str there must be UTF-8, and bin is kept out of the
/// protocol.
impl serde::Serialize for PathArg<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PathArg::Text(text) => serializer.serialize_str(text),
            PathArg::Bytes(bytes) => serializer.collect_seq(bytes.iter()),
        }
    }
}

/// The child's first frame.
#[derive(Debug, Clone)]
pub(crate) struct Hello {
    pub python_version: String,
    /// The child took the reply ring it was offered.
    pub ring: bool,
}

/// What a reply frame says about its request.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(Reply),
    /// A coroutine ran past its limit and was cancelled in the child.
    TimedOut,
}

/// One decoded frame from the child.
#[derive(Debug)]
pub(crate) enum Message {
    Hello(Hello),
    Reply {
        id: u64,
        outcome: Outcome,
    },
    /// What the child wrote through `sys.stdout` and `sys.stderr` before
    /// this frame is in its stderr pipe: forward that before the replies
    /// that follow.
    OutputMark,
}

fn malformed(what: &str) -> PyRunnerError {
    PyRunnerError::Protocol(format!("malformed frame from the child: {what}"))
}

fn take_string(value: Option<Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

pub(crate) fn decode_message(frame: &[u8]) -> Result<Message, PyRunnerError> {
    // Whoever reads a reply decodes it, on whatever stack it has: nesting is
    // capped just past the value table's own limit, never left to the stack.
    // The frame's array and a reply's own envelope hold the value.
    let items = decode::decode_items(frame, crate::value::MAX_DEPTH + 2).map_err(|err| {
        PyRunnerError::Protocol(format!("undecodable frame from the child: {err}"))
    })?;
    let mut items = items.into_iter();
    let head = items.next().ok_or_else(|| malformed("empty array"))?;
    if head.as_str() == Some("out") {
        return Ok(Message::OutputMark);
    }
    if head.as_str() == Some("hello") {
        let version = items
            .next()
            .and_then(|v| v.as_u64())
            .ok_or_else(|| malformed("hello without a version"))?;
        if version != PROTOCOL_VERSION {
            return Err(PyRunnerError::Protocol(format!(
                "the child speaks protocol {version}, this crate speaks {PROTOCOL_VERSION}"
            )));
        }
        // The pid that follows is not used: signals go to the process this
        // side started, whatever the child claims.
        let python_version = take_string(items.next()).unwrap_or_default();
        let ring = items.nth(2).and_then(|v| v.as_bool()).unwrap_or(false);
        return Ok(Message::Hello(Hello {
            python_version,
            ring,
        }));
    }
    let id = head
        .as_u64()
        .ok_or_else(|| malformed("reply without an id"))?;
    let status = take_string(items.next()).ok_or_else(|| malformed("reply without a status"))?;
    let outcome = match status.as_str() {
        "ok" => Outcome::Done(Ok(items.next().unwrap_or(Value::Null))),
        "err" => {
            let kind = take_string(items.next()).unwrap_or_else(|| "Exception".into());
            let message = take_string(items.next()).unwrap_or_default();
            let traceback = take_string(items.next());
            Outcome::Done(Err(PyRunnerError::Python {
                kind,
                message,
                traceback,
            }))
        }
        "conv" => Outcome::Done(Err(PyRunnerError::Conversion(
            take_string(items.next()).unwrap_or_default(),
        ))),
        "timeout" => Outcome::TimedOut,
        other => return Err(malformed(&format!("unknown status {other:?}"))),
    };
    Ok(Message::Reply { id, outcome })
}

/// Feeds bytes, as a child might write them, through the frame reader and
/// the reply decoder, in chunks whose sizes the bytes themselves choose.
/// Returns how many frames decoded; stops at the first error, as the
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
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= LIMIT, "a frame over the limit got through");
                    if decode_message(&frame).is_err() {
                        return decoded;
                    }
                    decoded += 1;
                }
                Ok(None) => break,
                Err(_) => return decoded,
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
    use super::*;

    fn frame_of(value: &impl serde::Serialize) -> Vec<u8> {
        let body = rmp_serde::to_vec(value).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
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
    fn reads_frames_split_across_reads() {
        let mut reader = FrameReader::new(1 << 10);
        let bytes = frame_of(&(7u64, "ok", 42));
        reader.buffer().extend_from_slice(&bytes[..3]);
        assert!(reader.next_frame().unwrap().is_none());
        reader.buffer().extend_from_slice(&bytes[3..]);
        let frame = reader.next_frame().unwrap().unwrap();
        match decode_message(&frame).unwrap() {
            Message::Reply {
                id: 7,
                outcome: Outcome::Done(Ok(value)),
            } => assert_eq!(value, Value::from(42)),
            other => panic!("{other:?}"),
        }
        assert!(reader.buffer().is_empty());
    }

    #[test]
    fn refuses_a_frame_over_the_limit_without_allocating_it() {
        let mut reader = FrameReader::new(1 << 10);
        reader.buffer().extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            reader.next_frame(),
            Err(PyRunnerError::Protocol(_))
        ));
        assert!(reader.buffer().capacity() < 1 << 20);
    }

    #[test]
    fn decodes_errors_and_conversion_failures() {
        let frame =
            rmp_serde::to_vec(&(3u64, "err", "KeyError", "'k'", Option::<String>::None)).unwrap();
        match decode_message(&frame).unwrap() {
            Message::Reply {
                outcome:
                    Outcome::Done(Err(PyRunnerError::Python {
                        kind,
                        message,
                        traceback,
                    })),
                ..
            } => assert_eq!(
                (kind.as_str(), message.as_str(), traceback),
                ("KeyError", "'k'", None)
            ),
            other => panic!("{other:?}"),
        }
        let frame = rmp_serde::to_vec(&(4u64, "conv", "too big")).unwrap();
        assert!(matches!(
            decode_message(&frame).unwrap(),
            Message::Reply {
                outcome: Outcome::Done(Err(PyRunnerError::Conversion(_))),
                ..
            }
        ));
    }

    #[test]
    fn an_output_mark_decodes_as_one() {
        let frame = rmp_serde::to_vec(&("out",)).unwrap();
        assert_eq!(frame, b"\x91\xa3out", "the bytes the worker writes");
        assert!(matches!(decode_message(&frame), Ok(Message::OutputMark)));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for garbage in [
            &b"\xc1"[..],
            b"",
            b"\x93\x01",
            b"\x92\xa2ok\x01",
            b"\x93\x01\xa3bad\x01",
            b"\xc4\x01x",
        ] {
            assert!(
                matches!(decode_message(garbage), Err(PyRunnerError::Protocol(_))),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn hello_with_another_protocol_version_is_refused() {
        let frame = rmp_serde::to_vec(&("hello", 99u64, "3.11.7", 1u32, "python")).unwrap();
        assert!(matches!(
            decode_message(&frame),
            Err(PyRunnerError::Protocol(_))
        ));
        let frame = rmp_serde::to_vec(&("hello", 1u64, "3.11.7", 4321u32, "python")).unwrap();
        assert!(matches!(
            decode_message(&frame),
            Err(PyRunnerError::Protocol(_))
        ));
        let frame =
            rmp_serde::to_vec(&("hello", PROTOCOL_VERSION, "3.11.7", 4321u32, "python")).unwrap();
        match decode_message(&frame).unwrap() {
            Message::Hello(hello) => {
                assert_eq!(hello.python_version, "3.11.7")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_round_trip_through_the_codec() {
        let mut writer = FrameWriter::new(1 << 20);
        let mut out = BytesMut::new();
        let request = Request::CallFunction {
            name: "add".into(),
            args: vec![Value::from(1), Value::from(u64::MAX)],
        };
        writer.request(&mut out, 9, &request, None).unwrap();
        let mut reader = FrameReader::new(1 << 20);
        reader.buffer().extend_from_slice(&out);
        let frame = reader.next_frame().unwrap().unwrap();
        let decoded: (u64, String, String, Vec<Value>) = rmp_serde::from_slice(&frame).unwrap();
        assert_eq!(
            decoded,
            (
                9,
                "call".into(),
                "add".into(),
                vec![Value::from(1), Value::from(u64::MAX)]
            )
        );
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
}
