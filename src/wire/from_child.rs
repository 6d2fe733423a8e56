//! What comes from the child: its hello, replies, and output marks, read
//! from a frame's bytes by the fast decoder of `decode.rs`.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::decode::{self, Item};
use super::PROTOCOL_VERSION;
use crate::command::{Answer, Reply};
use crate::error::PyRunnerError;
use crate::output::{OutputSink, OutputStream, Written};

/// The child's first frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hello {
    pub python_version: String,
    /// The child took the reply ring it was offered.
    pub ring: bool,
}

/// What a reply frame says about its request.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    Done(Reply),
    /// A coroutine ran past its limit and was cancelled in the child.
    TimedOut,
}

/// One message from the child: one frame.
#[derive(Debug, PartialEq)]
pub(crate) enum FromChild {
    Hello(Hello),
    Reply {
        id: u64,
        outcome: Outcome,
    },
    /// What the child wrote through `sys.stdout` and `sys.stderr` before
    /// this frame is in its stderr pipe: forward that before the replies
    /// that follow.
    OutputMark,
    /// `["beat"]`: a launched child's link is alive (it had nothing else to
    /// say for a heartbeat's interval).
    Beat,
    /// The function of invoke `id` returned an awaitable, now on the
    /// child's event loop: the request has left the child's line, and its
    /// reply comes when the coroutine ends.
    Awaiting {
        id: u64,
    },
    /// Lines written through `sys.stdout` or `sys.stderr` outside a
    /// captured command, sent as frames because the parent has `on_output`.
    Output {
        stream: OutputStream,
        lines: Vec<String>,
    },
    /// What captured request `id` wrote; its reply follows.
    Captured {
        id: u64,
        written: Written,
    },
    /// The function of stream `id` returned something iterable: the
    /// request has left the child's line, its items follow, and its reply
    /// comes when the stream ends. `on_loop`: its items are made on the
    /// child's event loop (an async iterator), not in slices between
    /// requests; a note that does not say is taken to be one.
    Streaming {
        id: u64,
        on_loop: bool,
    },
    /// One item of stream `id`: a `Value` (`item`) or, for a typed stream,
    /// a slice of the frame (`item_data`).
    Item {
        id: u64,
        item: Answer,
    },
    /// Python called host function `name`; `hid`, the child's, names the
    /// call in the reply (`host_reply`).
    Host {
        hid: u64,
        name: String,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
    /// The coroutine that awaited async host call `hid` was cancelled: its
    /// future is dropped, and no reply is sent.
    HostCancel {
        hid: u64,
    },
}

fn malformed(what: &str) -> PyRunnerError {
    PyRunnerError::Protocol(format!("malformed frame from the child: {what}"))
}

/// What is wrong with a frame: its bytes, or the message they make.
enum Bad {
    Bytes(String),
    Message(PyRunnerError),
}

impl From<String> for Bad {
    fn from(why: String) -> Self {
        Bad::Bytes(why)
    }
}

impl From<PyRunnerError> for Bad {
    fn from(err: PyRunnerError) -> Self {
        Bad::Message(err)
    }
}

fn undecodable(why: String) -> PyRunnerError {
    PyRunnerError::Protocol(format!("undecodable frame from the child: {why}"))
}

impl FromChild {
    /// The message one frame (without its length) holds. A hello must
    /// speak [`PROTOCOL_VERSION`].
    #[cfg(test)]
    pub fn decode(frame: &[u8]) -> Result<FromChild, PyRunnerError> {
        Self::decode_in(frame, None)
    }

    /// [`decode`](Self::decode) of a frame held in `Bytes`: a `data`
    /// reply's value is handed on as a slice of it, not a copy.
    pub fn decode_shared(frame: &Bytes) -> Result<FromChild, PyRunnerError> {
        Self::decode_in(frame, Some(frame))
    }

    fn decode_in(frame: &[u8], shared: Option<&Bytes>) -> Result<FromChild, PyRunnerError> {
        // Whoever reads a reply decodes it, on whatever stack it has:
        // nesting is capped just past the value table's own limit, never
        // left to the stack. The frame's array and a reply's own envelope
        // hold the value.
        let mut items =
            decode::Items::open(frame, crate::value::MAX_DEPTH + 2).map_err(undecodable)?;
        let message = match Self::read(&mut items, shared) {
            Ok(message) => Ok(message),
            Err(Bad::Bytes(why)) => return Err(undecodable(why)),
            Err(Bad::Message(err)) => Err(err),
        };
        // Bytes that are not MessagePack, anywhere in the frame, are what
        // is wrong with it before what they say.
        items.finish().map_err(undecodable)?;
        message
    }

    fn read(items: &mut decode::Items<'_>, shared: Option<&Bytes>) -> Result<FromChild, Bad> {
        let head = items.next()?.ok_or_else(|| malformed("empty array"))?;
        if head.as_str() == Some("out") {
            return Ok(FromChild::OutputMark);
        }
        if head.as_str() == Some("beat") {
            return Ok(FromChild::Beat);
        }
        if head.as_str() == Some("awaiting") {
            let id = items
                .next()?
                .and_then(|v| v.as_u64())
                .ok_or_else(|| malformed("awaiting without an id"))?;
            return Ok(FromChild::Awaiting { id });
        }
        if head.as_str() == Some("output") {
            return Self::read_output(items);
        }
        if head.as_str() == Some("captured") {
            let id = items
                .next()?
                .and_then(|v| v.as_u64())
                .ok_or_else(|| malformed("captured without an id"))?;
            let mut text = || -> Result<String, Bad> {
                Ok(items
                    .next()?
                    .and_then(Item::into_string)
                    .ok_or_else(|| malformed("captured output that is not text"))?)
            };
            let written = Written {
                stdout: text()?,
                stderr: text()?,
            };
            return Ok(FromChild::Captured { id, written });
        }
        if head.as_str() == Some("streaming") {
            let id = items
                .next()?
                .and_then(|v| v.as_u64())
                .ok_or_else(|| malformed("streaming without an id"))?;
            let on_loop = items.next()?.and_then(|v| v.as_bool()).unwrap_or(true);
            return Ok(FromChild::Streaming { id, on_loop });
        }
        if head.as_str() == Some("host") {
            return Self::read_host(items);
        }
        if head.as_str() == Some("host_cancel") {
            let hid = items
                .next()?
                .and_then(|v| v.as_u64())
                .ok_or_else(|| malformed("host_cancel without a call id"))?;
            return Ok(FromChild::HostCancel { hid });
        }
        if head.as_str() == Some("hello") {
            let version = items
                .next()?
                .and_then(|v| v.as_u64())
                .ok_or_else(|| malformed("hello without a version"))?;
            if version != PROTOCOL_VERSION {
                return Err(Bad::Message(PyRunnerError::Protocol(format!(
                    "the child speaks protocol {version}, this crate speaks {PROTOCOL_VERSION}"
                ))));
            }
            let python_version = items
                .next()?
                .and_then(Item::into_string)
                .unwrap_or_default();
            // The pid and the executable that follow are not used: signals
            // go to the process this side started, whatever the child claims.
            items.next()?;
            items.next()?;
            let ring = items.next()?.and_then(|v| v.as_bool()).unwrap_or(false);
            return Ok(FromChild::Hello(Hello {
                python_version,
                ring,
            }));
        }
        let id = head
            .as_u64()
            .ok_or_else(|| malformed("reply without an id"))?;
        let outcome = match items.next()?.as_ref().and_then(Item::as_str) {
            None => return Err(malformed("reply without a status").into()),
            Some("item") => {
                let value = items
                    .next()?
                    .ok_or_else(|| malformed("item without a value"))?;
                return Ok(FromChild::Item {
                    id,
                    item: Answer::Value(value.into_value()),
                });
            }
            Some("item_data") => {
                let value = items
                    .next_raw()?
                    .ok_or_else(|| malformed("item_data without a value"))?;
                return Ok(FromChild::Item {
                    id,
                    item: Answer::Packed(match shared {
                        Some(frame) => frame.slice_ref(value),
                        None => Bytes::copy_from_slice(value),
                    }),
                });
            }
            Some("ok") => Outcome::Done(Ok(Answer::Value(
                items.next()?.map_or(Value::Null, Item::into_value),
            ))),
            // Checked, and handed to the caller as it is: the caller reads
            // it into the type it asked for.
            Some("data") => {
                let value = items
                    .next_raw()?
                    .ok_or_else(|| malformed("data without a value"))?;
                Outcome::Done(Ok(Answer::Packed(match shared {
                    Some(frame) => frame.slice_ref(value),
                    None => Bytes::copy_from_slice(value),
                })))
            }
            Some("err") => {
                let kind = items.next()?.and_then(Item::into_string);
                let message = items.next()?.and_then(Item::into_string);
                let traceback = items.next()?.and_then(Item::into_string);
                Outcome::Done(Err(PyRunnerError::Python {
                    kind: kind.unwrap_or_else(|| "Exception".into()),
                    message: message.unwrap_or_default(),
                    traceback,
                }))
            }
            Some("conv") => Outcome::Done(Err(PyRunnerError::Conversion(
                items
                    .next()?
                    .and_then(Item::into_string)
                    .unwrap_or_default(),
            ))),
            Some("timeout") => Outcome::TimedOut,
            Some(other) => return Err(malformed(&format!("unknown status {other:?}")).into()),
        };
        Ok(FromChild::Reply { id, outcome })
    }
}

impl FromChild {
    /// `["host", hid, name, [arg, ...], {name: arg, ...}]`.
    fn read_host(items: &mut decode::Items<'_>) -> Result<FromChild, Bad> {
        let hid = items
            .next()?
            .and_then(|v| v.as_u64())
            .ok_or_else(|| malformed("host without a call id"))?;
        let name = items
            .next()?
            .and_then(Item::into_string)
            .ok_or_else(|| malformed("host without a function name"))?;
        let Some(Item::Other(Value::Array(args))) = items.next()? else {
            return Err(malformed("host without its arguments").into());
        };
        let Some(Item::Other(Value::Object(kwargs))) = items.next()? else {
            return Err(malformed("host without its keyword arguments").into());
        };
        Ok(FromChild::Host {
            hid,
            name,
            args,
            kwargs,
        })
    }

    /// `["output", stream, [line, ...]]`.
    fn read_output(items: &mut decode::Items<'_>) -> Result<FromChild, Bad> {
        let stream = items
            .next()?
            .and_then(|v| v.as_u64())
            .ok_or_else(|| malformed("output without its stream"))?;
        let Some(Item::Other(Value::Array(lines))) = items.next()? else {
            return Err(malformed("output without its lines").into());
        };
        let lines = lines
            .into_iter()
            .map(|line| match line {
                Value::String(line) => Ok(line),
                _ => Err(malformed("an output line that is not text")),
            })
            .collect::<Result<_, _>>()?;
        Ok(FromChild::Output {
            stream: OutputSink::stream_of(stream),
            lines,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// How frames were read before `decode_frame`: every item into a
    /// `Value`, then the message taken from those.
    fn as_before(frame: &[u8]) -> Result<FromChild, PyRunnerError> {
        fn take_string(value: Option<Value>) -> Option<String> {
            match value {
                Some(Value::String(s)) => Some(s),
                _ => None,
            }
        }
        let items = decode::decode_items(frame, crate::value::MAX_DEPTH + 2).map_err(|err| {
            PyRunnerError::Protocol(format!("undecodable frame from the child: {err}"))
        })?;
        let mut items = items.into_iter();
        let head = items.next().ok_or_else(|| malformed("empty array"))?;
        if head.as_str() == Some("out") {
            return Ok(FromChild::OutputMark);
        }
        if head.as_str() == Some("beat") {
            return Ok(FromChild::Beat);
        }
        if head.as_str() == Some("awaiting") {
            let id = items
                .next()
                .and_then(|v| v.as_u64())
                .ok_or_else(|| malformed("awaiting without an id"))?;
            return Ok(FromChild::Awaiting { id });
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
            let python_version = take_string(items.next()).unwrap_or_default();
            let ring = items.nth(2).and_then(|v| v.as_bool()).unwrap_or(false);
            return Ok(FromChild::Hello(Hello {
                python_version,
                ring,
            }));
        }
        let id = head
            .as_u64()
            .ok_or_else(|| malformed("reply without an id"))?;
        let status =
            take_string(items.next()).ok_or_else(|| malformed("reply without a status"))?;
        let outcome = match status.as_str() {
            "ok" => Outcome::Done(Ok(Answer::Value(items.next().unwrap_or(Value::Null)))),
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
        Ok(FromChild::Reply { id, outcome })
    }

    #[test]
    fn every_message_reads_as_it_did_however_its_bytes_are_cut_or_changed() {
        let messages = [
            json!(["hello", PROTOCOL_VERSION, "3.12.1", 4321, "python", true]),
            json!(["hello", PROTOCOL_VERSION, "3.9.0", 1, "python"]),
            json!(["hello", 99, "3.9.0"]),
            json!(["out"]),
            json!([7, "ok", {"k": [1, -2, 3.5, "s", null, true], "j": {}}]),
            json!([8, "ok", "text"]),
            json!([9, "ok"]),
            json!([300, "err", "KeyError", "'k'", "Traceback ...\n"]),
            json!([301, "err", 5, null]),
            json!([70000, "conv", "too big"]),
            json!([u64::MAX, "timeout"]),
            json!([1, "ok", 1, 2, 3, 4, 5, 6, 7]),
            json!(["x".repeat(40), "ok"]),
            json!([-1, "ok", 1]),
        ];
        for message in messages {
            let frame = rmp_serde::to_vec(&message).unwrap();
            for end in 0..=frame.len() {
                let cut = &frame[..end];
                assert_eq!(FromChild::decode(cut), as_before(cut), "{cut:02x?}");
            }
            for at in 0..frame.len() {
                for byte in 0..=0xffu8 {
                    let mut changed = frame.clone();
                    changed[at] = byte;
                    assert_eq!(
                        FromChild::decode(&changed),
                        as_before(&changed),
                        "{changed:02x?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_data_reply_hands_its_value_on_whole_and_an_awaiting_note_names_its_request() {
        let value =
            rmp_serde::to_vec(&(serde_bytes::ByteBuf::from(vec![0, 255]), "s", 1.5)).unwrap();
        let mut frame = rmp_serde::to_vec(&(7u64, "data")).unwrap();
        frame[0] = 0x93;
        frame.extend_from_slice(&value);
        assert_eq!(
            FromChild::decode(&frame),
            Ok(FromChild::Reply {
                id: 7,
                outcome: Outcome::Done(Ok(Answer::Packed(value.clone().into())))
            })
        );
        // Cut anywhere, or with anything after it, it is refused.
        for end in 0..frame.len() {
            assert!(FromChild::decode(&frame[..end]).is_err(), "{end}");
        }
        let mut longer = frame.clone();
        longer.push(0xc0);
        assert!(FromChild::decode(&longer).is_err());
        let mut bare = rmp_serde::to_vec(&(7u64, "data")).unwrap();
        bare[0] = 0x92;
        assert_eq!(
            FromChild::decode(&bare),
            Err(PyRunnerError::Protocol(
                "malformed frame from the child: data without a value".into()
            ))
        );
        let note = rmp_serde::to_vec(&("awaiting", 12u64)).unwrap();
        assert_eq!(FromChild::decode(&note), Ok(FromChild::Awaiting { id: 12 }));
        let note = rmp_serde::to_vec(&("awaiting", "x")).unwrap();
        assert!(FromChild::decode(&note).is_err());
    }

    #[test]
    fn output_lines_and_captured_text_read_as_sent_and_bad_ones_are_refused() {
        let frame = rmp_serde::to_vec(&("output", 1u8, ["one", "", "t\u{e9}"])).unwrap();
        assert_eq!(
            FromChild::decode(&frame),
            Ok(FromChild::Output {
                stream: OutputStream::Stderr,
                lines: vec!["one".into(), "".into(), "t\u{e9}".into()],
            })
        );
        let frame = rmp_serde::to_vec(&("captured", 7u64, "out\n", "")).unwrap();
        assert_eq!(
            FromChild::decode(&frame),
            Ok(FromChild::Captured {
                id: 7,
                written: Written {
                    stdout: "out\n".into(),
                    stderr: String::new(),
                },
            })
        );
        for bad in [
            rmp_serde::to_vec(&("output", 0u8, [1, 2])).unwrap(),
            rmp_serde::to_vec(&("output", 0u8, "not a list")).unwrap(),
            rmp_serde::to_vec(&("output",)).unwrap(),
            rmp_serde::to_vec(&("captured", 7u64, "out")).unwrap(),
            rmp_serde::to_vec(&("captured", "x", "", "")).unwrap(),
        ] {
            assert!(
                matches!(FromChild::decode(&bad), Err(PyRunnerError::Protocol(_))),
                "{bad:02x?}"
            );
        }
        let frame = rmp_serde::to_vec(&("output", 0u8, ["a"])).unwrap();
        for end in 0..frame.len() {
            assert!(FromChild::decode(&frame[..end]).is_err(), "{end}");
        }
    }

    #[test]
    fn a_stream_s_note_and_items_name_their_request() {
        let note = rmp_serde::to_vec(&("streaming", 12u64, false)).unwrap();
        assert_eq!(
            FromChild::decode(&note),
            Ok(FromChild::Streaming {
                id: 12,
                on_loop: false
            })
        );
        let note = rmp_serde::to_vec(&("streaming", 12u64)).unwrap();
        assert_eq!(
            FromChild::decode(&note),
            Ok(FromChild::Streaming {
                id: 12,
                on_loop: true
            })
        );
        assert!(FromChild::decode(&rmp_serde::to_vec(&("streaming",)).unwrap()).is_err());
        let item = rmp_serde::to_vec(&(5u64, "item", [1, 2])).unwrap();
        assert_eq!(
            FromChild::decode(&item),
            Ok(FromChild::Item {
                id: 5,
                item: Answer::Value(json!([1, 2]))
            })
        );
        let value = rmp_serde::to_vec(&serde_bytes::ByteBuf::from(vec![0, 255])).unwrap();
        let mut frame = rmp_serde::to_vec(&(6u64, "item_data")).unwrap();
        frame[0] = 0x93;
        frame.extend_from_slice(&value);
        assert_eq!(
            FromChild::decode(&frame),
            Ok(FromChild::Item {
                id: 6,
                item: Answer::Packed(value.into())
            })
        );
        // An item without its value, or cut short, is refused.
        assert!(FromChild::decode(&rmp_serde::to_vec(&(5u64, "item")).unwrap()).is_err());
        for end in 0..frame.len() {
            assert!(FromChild::decode(&frame[..end]).is_err(), "{end}");
        }
    }
}
