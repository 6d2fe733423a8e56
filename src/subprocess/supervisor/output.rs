//! Output frames: lines for the runner's `on_output` callback, and what a
//! captured command wrote, joined to its reply.

use super::*;
use crate::command::Reply;
use crate::output::{OutputSink, OutputStream, Written};

/// Hands lines the child sent as an `output` frame to `on_output`, in
/// order with the replies around them.
pub(super) fn hand_on_lines(sink: Option<&OutputSink>, stream: OutputStream, lines: Vec<String>) {
    let Some(sink) = sink else {
        // Sent only when asked for; should a child send them anyway, the
        // terminal shows them as it shows the rest.
        for line in lines {
            eprintln!("[python] {line}");
        }
        return;
    };
    for line in &lines {
        sink.send_line(stream, line);
    }
}

impl Core {
    /// Keeps what captured request `id` wrote until its reply comes.
    pub(super) fn keep_written(&mut self, id: u64, written: Written) {
        self.written.insert(id, written);
    }

    /// A reply as its caller takes it: a captured command's success comes
    /// with what it wrote (no `captured` frame: nothing), its failure
    /// alone (what it wrote is dropped).
    pub(super) fn with_written(&mut self, id: u64, request: &Request, reply: Reply) -> Reply {
        let captured = match request {
            Request::RunCaptured { .. } => true,
            Request::Invoke(invoke) => invoke.capture,
            _ => false,
        };
        if !captured {
            return reply;
        }
        let written = self.written.remove(&id).unwrap_or_default();
        Ok(Answer::Captured(Box::new((reply?, written))))
    }
}
