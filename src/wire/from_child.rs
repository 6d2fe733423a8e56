//! What comes from the child: its hello, replies, and output marks, read
//! from a frame's bytes by the fast decoder of `decode.rs`.

use serde_json::Value;

use super::{decode, PROTOCOL_VERSION};
use crate::command::Reply;
use crate::error::PyRunnerError;

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

impl FromChild {
    /// The message one frame (without its length) holds. A hello must
    /// speak [`PROTOCOL_VERSION`].
    pub fn decode(frame: &[u8]) -> Result<FromChild, PyRunnerError> {
        // Whoever reads a reply decodes it, on whatever stack it has:
        // nesting is capped just past the value table's own limit, never
        // left to the stack. The frame's array and a reply's own envelope
        // hold the value.
        let items = decode::decode_items(frame, crate::value::MAX_DEPTH + 2).map_err(|err| {
            PyRunnerError::Protocol(format!("undecodable frame from the child: {err}"))
        })?;
        let mut items = items.into_iter();
        let head = items.next().ok_or_else(|| malformed("empty array"))?;
        if head.as_str() == Some("out") {
            return Ok(FromChild::OutputMark);
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
            // The pid that follows is not used: signals go to the process
            // this side started, whatever the child claims.
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
        Ok(FromChild::Reply { id, outcome })
    }
}
