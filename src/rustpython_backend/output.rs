//! Output on the RustPython backend: captured commands, and the runner's
//! `on_output` route (`python/output.py` holds the Python half).
//!
//! Each runner has an interpreter of its own, and so its own routed
//! `sys.stdout`; the route is its thread's, as on PyO3. What a captured
//! command writes to its fds is not captured here.

use std::cell::RefCell;

use rustpython_vm::builtins::{PyListRef, PyStr, PyTuple};
use rustpython_vm::{PyObjectRef, PyResult, VirtualMachine};
use serde_json::Value;

use super::{Commands, Worker};
use crate::command::{Answer, Reply};
use crate::error::PyRunnerError;
use crate::output::{OutputSink, Written};

thread_local! {
    /// The `on_output` of the runner whose thread this is. The route's
    /// `emit` is a plain function that finds it here: RustPython keeps
    /// native closures for the life of the process.
    static SINK: RefCell<Option<OutputSink>> = const { RefCell::new(None) };
}

/// The runner's route (`on_output`); the router itself is `Commands::router`.
#[derive(Default)]
pub(super) struct Output {
    route: Option<PyObjectRef>,
}

/// `emit(index, lines)` of the runner's route: hands lines to its sink.
fn emit(index: usize, lines: PyListRef, _vm: &VirtualMachine) -> PyResult<()> {
    let lines: Vec<String> = lines
        .borrow_vec()
        .iter()
        .map(|line| {
            line.downcast_ref::<PyStr>()
                .map(|text| text.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let stream = OutputSink::stream_of(index as u64);
    SINK.with(|sink| {
        if let Some(sink) = sink.borrow().as_ref() {
            for line in &lines {
                sink.send_line(stream, line);
            }
        }
    });
    Ok(())
}

impl Commands<'_> {
    /// The runner's share of the router, made on first use.
    fn output_router(&self) -> Result<&PyObjectRef, PyRunnerError> {
        if let Some(router) = self.router.get() {
            return Ok(router);
        }
        let cap = crate::tuning::CAPTURE_CAP;
        let router = self.python(self.helpers.output_router.call((cap,), self.vm))?;
        Ok(self.router.get_or_init(|| router))
    }
}

impl Worker<'_> {
    /// Routes this runner's thread to `sink` (`on_output`).
    pub(super) fn route_output(&mut self, sink: OutputSink) -> Result<(), PyRunnerError> {
        SINK.with(|slot| *slot.borrow_mut() = Some(sink));
        let vm = self.vm;
        let emit = vm.new_function("async_py_emit", emit);
        let router = self.output_router()?.clone();
        let route = self.python(vm.call_method(&router, "route_thread", (emit,)))?;
        self.output.route = Some(route);
        Ok(())
    }

    /// Ends this runner's route: its open lines are handed on.
    pub(super) fn unroute_output(&mut self) {
        if self.output.route.take().is_none() {
            return;
        }
        if let Some(router) = self.router.get() {
            let _ = self.vm.call_method(router, "unroute_thread", ());
        }
        SINK.with(|slot| slot.borrow_mut().take());
    }

    /// Hands on the lines left open by the command that just ended.
    pub(super) fn end_output_lines(&self) {
        if let Some(route) = &self.output.route {
            let _ = self.vm.call_method(route, "end_lines", ());
        }
    }
}

impl Commands<'_> {
    /// Runs `command` with its output captured: its success comes with
    /// what it wrote, its failure alone.
    pub(super) fn captured(&self, command: impl FnOnce() -> Reply) -> Reply {
        let vm = self.vm;
        let router = self.output_router()?.clone();
        let capture = self.python(vm.call_method(&router, "begin_reused_capture", ()))?;
        // Closed even if the interpreter panics in the command (the caller
        // catches that), or everything the runner wrote later would go on
        // into this capture.
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(command));
        let written = self.python(vm.call_method(&router, "end_capture", (capture,)));
        let answer = answer.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok(Answer::Captured(Box::new((
            answer?,
            written_of(&written?)?,
        ))))
    }

    /// `exec(code).capture_output()`.
    pub(super) fn run_captured(&self, code: &str) -> Reply {
        self.captured(|| {
            self.run_source(
                &self.helpers.run_code,
                code,
                rustpython_vm::compiler::Mode::Exec,
            )
            .map(|_| Answer::Value(Value::Null))
        })
    }
}

/// The (stdout, stderr) a capture's `finish` returns.
fn written_of(both: &PyObjectRef) -> Result<Written, PyRunnerError> {
    let unreadable = || PyRunnerError::Conversion("the captured output could not be read".into());
    let both = both.downcast_ref::<PyTuple>().ok_or_else(unreadable)?;
    let text = |index: usize| {
        both.as_slice()
            .get(index)
            .and_then(|text| text.downcast_ref::<PyStr>())
            .map(|text| text.to_string_lossy().into_owned())
            .ok_or_else(unreadable)
    };
    Ok(Written {
        stdout: text(0)?,
        stderr: text(1)?,
    })
}
