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
    /// Keeps what captured request `id` wrote until its reply comes. A
    /// `captured` frame for anything else (a request not in flight, or one
    /// that does not capture) is the child's error: kept, nothing would
    /// ever take it.
    pub(super) fn keep_written(&mut self, id: u64, written: Written) -> Result<(), PyRunnerError> {
        let captures = self
            .flights
            .get(id)
            .is_some_and(|flight| captures(&flight.item.request));
        if !captures || self.written.contains_key(&id) {
            return Err(PyRunnerError::Protocol(format!(
                "malformed frame from the child: output of request {id}, which is not a captured request in flight"
            )));
        }
        self.written.insert(id, written);
        Ok(())
    }

    /// A reply as its caller takes it: a captured command's success comes
    /// with what it wrote (no `captured` frame: nothing), its failure
    /// alone (what it wrote is dropped).
    pub(super) fn with_written(&mut self, id: u64, request: &Request, reply: Reply) -> Reply {
        if !captures(request) {
            return reply;
        }
        let written = self.written.remove(&id).unwrap_or_default();
        Ok(Answer::Captured(Box::new((reply?, written))))
    }
}

/// Whether a request's output is captured.
fn captures(request: &Request) -> bool {
    match request {
        Request::RunCaptured { .. } => true,
        Request::Invoke(invoke) => invoke.capture,
        _ => false,
    }
}
