//! The names src/subprocess calls today, on the typed codec, so that this
//! branch builds before its call sites change. Delete this file, and the
//! `legacy` lines of `mod.rs` (with the two `expect(dead_code)` there),
//! once they call the typed API.

use bytes::BytesMut;
use tokio_util::codec::Encoder;

use super::{ChildCodec, FrameReader, FromChild, ToChild};
use crate::command::Request;
use crate::error::PyRunnerError;

/// [`FromChild`] under its old name.
pub(crate) type Message = FromChild;

/// [`FromChild::decode`] under its old name.
pub(crate) fn decode_message(frame: &[u8]) -> Result<Message, PyRunnerError> {
    FromChild::decode(frame)
}

impl FrameReader {
    /// The next whole frame, if the buffer holds one; see
    /// [`FrameReader::next_message`].
    pub fn next_frame(&mut self) -> Result<Option<BytesMut>, PyRunnerError> {
        Ok(self.codec.next_frame(&mut self.buffer)?)
    }
}

/// A [`ChildCodec`] that encodes a [`Request`] under an id.
pub(crate) struct FrameWriter(ChildCodec);

impl FrameWriter {
    pub fn new(limit: usize) -> Self {
        FrameWriter(ChildCodec::new(limit))
    }

    pub fn request(
        &mut self,
        out: &mut BytesMut,
        id: u64,
        request: &Request,
        limit: Option<f64>,
    ) -> Result<(), PyRunnerError> {
        Ok(self.0.encode(ToChild::new(id, request, limit), out)?)
    }
}
