//! Output on the PyO3 backend: captured commands, and the runner's
//! `on_output` route (`python/output.py` holds the Python half).
//!
//! Every PyO3 runner shares one interpreter and one `sys.stdout`: the
//! router, made once, sends a write to the capture of the writer's context,
//! else to the route of the writer's thread (each runner routes its own
//! thread), else where it went before. What a captured command writes to
//! its fds (`os.write(1, ..)`, C `printf`) is not captured here.

use std::cell::OnceCell;
use std::ops::Deref;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyList, PyTuple};

use super::namespace::Namespace;
use super::Worker;
use crate::command::{Answer, Reply, Responder};
use crate::error::PyRunnerError;
use crate::output::{OutputSink, Written};

/// A runner's share of the router: made on first use (a runner that
/// neither captures nor routes leaves `sys.stdout` as it is).
#[derive(Default)]
pub(super) struct Output<'py> {
    router: OnceCell<Bound<'py, PyAny>>,
    /// The line route of this runner's thread, with `on_output`.
    route: Option<Bound<'py, PyAny>>,
}

/// A command's responder, with what its answer carries: the capture it
/// opened, and the runner's route, whose open lines end before the answer
/// goes (a command's output reaches `on_output` before its reply).
pub(super) struct ReplyTo {
    reply: Responder,
    capture: Option<Py<PyAny>>,
    route: Option<Py<PyAny>>,
}

impl From<Responder> for ReplyTo {
    fn from(reply: Responder) -> Self {
        ReplyTo {
            reply,
            capture: None,
            route: None,
        }
    }
}

impl Deref for ReplyTo {
    type Target = Responder;

    fn deref(&self) -> &Responder {
        &self.reply
    }
}

impl ReplyTo {
    /// The responder alone, for an answer that carries no output (a
    /// stream's opening: `.stream()` captures nothing).
    pub fn into_responder(self) -> Responder {
        self.reply
    }

    /// Answers the caller: a captured command's success with what it
    /// wrote, its failure alone (what it wrote is dropped).
    pub fn send(self, reply: Reply) {
        let ReplyTo {
            reply: responder,
            capture,
            route,
        } = self;
        if capture.is_none() && route.is_none() {
            return responder.send(reply);
        }
        Python::attach(|py| {
            if let Some(route) = route {
                end_lines(route.bind(py));
            }
            let reply = match capture {
                None => reply,
                Some(capture) => {
                    let written = finish(capture.bind(py));
                    match (reply, written) {
                        (Ok(answer), Ok(written)) => {
                            Ok(Answer::Captured(Box::new((answer, written))))
                        }
                        (Ok(_), Err(err)) => Err(err),
                        (Err(err), _) => Err(err),
                    }
                }
            };
            responder.send(reply);
        });
    }
}

/// Leaves a capture's context when dropped: at the end of the command
/// that opened it, after an awaitable result was scheduled (its task
/// copied the context, capture and all).
pub(super) struct CaptureScope<'py> {
    router: Bound<'py, PyAny>,
    capture: Bound<'py, PyAny>,
}

impl Drop for CaptureScope<'_> {
    fn drop(&mut self) {
        let left = self
            .router
            .call_method1(intern!(self.router.py(), "leave_capture"), (&self.capture,));
        if let Err(err) = left {
            err.write_unraisable(self.router.py(), Some(&self.capture));
        }
    }
}

impl<'py> Worker<'py> {
    pub(super) fn output_router(&self) -> Result<&Bound<'py, PyAny>, PyRunnerError> {
        if let Some(router) = self.output.router.get() {
            return Ok(router);
        }
        let router = self.ns.output_router()?;
        Ok(self.output.router.get_or_init(|| router))
    }

    /// Routes this runner's thread to `sink` (`on_output`).
    pub(super) fn route_output(&mut self, sink: OutputSink) -> Result<(), PyRunnerError> {
        let emit = PyCFunction::new_closure(
            self.py,
            Some(c"async_py_emit"),
            None,
            move |args: &Bound<'_, PyTuple>, _kwargs| -> PyResult<()> {
                let (index, lines): (u64, Bound<'_, PyList>) = args.extract()?;
                let stream = OutputSink::stream_of(index);
                let lines: Vec<String> = lines
                    .iter()
                    .map(|line| match line.cast::<pyo3::types::PyString>() {
                        Ok(text) => text.to_string_lossy().into_owned(),
                        Err(_) => String::new(),
                    })
                    .collect();
                // The callback is the user's: other Python threads run meanwhile.
                args.py().detach(|| {
                    for line in &lines {
                        sink.send_line(stream, line);
                    }
                });
                Ok(())
            },
        )
        .map_err(|err| self.python_error(err))?;
        let route = self
            .output_router()?
            .call_method1(intern!(self.py, "route_thread"), (emit,))
            .map_err(|err| self.python_error(err))?;
        self.output.route = Some(route);
        Ok(())
    }

    /// Ends this runner's route: its open lines are handed on.
    pub(super) fn unroute_output(&mut self) {
        if self.output.route.take().is_none() {
            return;
        }
        if let Some(router) = self.output.router.get() {
            if let Err(err) = router.call_method0(intern!(self.py, "unroute_thread")) {
                err.write_unraisable(self.py, Some(router));
            }
        }
    }

    /// Hands on the lines left open by the command that just ended.
    pub(super) fn end_output_lines(&self) {
        if let Some(route) = &self.output.route {
            end_lines(route);
        }
    }

    /// The responder of a command, capturing its output if `capture`; the
    /// scope must live until the command has run (and scheduled what it
    /// returned).
    pub(super) fn reply_to(
        &self,
        reply: Responder,
        capture: bool,
    ) -> Result<(ReplyTo, Option<CaptureScope<'py>>), (Responder, PyRunnerError)> {
        let route = self
            .output
            .route
            .as_ref()
            .map(|route| route.clone().unbind());
        if !capture {
            let reply = ReplyTo {
                reply,
                capture: None,
                route,
            };
            return Ok((reply, None));
        }
        let opened = self.output_router().and_then(|router| {
            router
                .call_method0(intern!(self.py, "begin_capture"))
                .map(|capture| (router.clone(), capture))
                .map_err(|err| self.python_error(err))
        });
        match opened {
            Ok((router, capture)) => Ok((
                ReplyTo {
                    reply,
                    capture: Some(capture.clone().unbind()),
                    route,
                },
                Some(CaptureScope { router, capture }),
            )),
            Err(err) => Err((reply, err)),
        }
    }
}

impl<'py> Namespace<'py> {
    /// `exec(code).capture_output()`.
    pub(super) fn run_captured(&self, router: &Bound<'py, PyAny>, code: &str) -> Reply {
        self.captured(router, || {
            self.run_helper(&self.helpers.run_code, code)
                .map(|_| Answer::Value(serde_json::Value::Null))
        })
    }

    /// Runs `body` (a command that runs to its end here) with its output
    /// captured: its success comes with what it wrote.
    pub(super) fn captured(
        &self,
        router: &Bound<'py, PyAny>,
        body: impl FnOnce() -> Reply,
    ) -> Reply {
        let capture = router
            .call_method0(intern!(self.py, "begin_capture"))
            .map_err(|err| self.python_error(err))?;
        let scope = CaptureScope {
            router: router.clone(),
            capture: capture.clone(),
        };
        let ran = body();
        drop(scope);
        let written = finish(&capture)?;
        Ok(Answer::Captured(Box::new((ran?, written))))
    }
}

/// Closes a capture and takes what it holds.
fn finish(capture: &Bound<'_, PyAny>) -> Result<Written, PyRunnerError> {
    capture
        .call_method0(intern!(capture.py(), "finish"))
        .and_then(|both| both.extract::<(String, String)>())
        .map(|(stdout, stderr)| Written { stdout, stderr })
        .map_err(|err| {
            PyRunnerError::Conversion(format!("the captured output could not be read: {err}"))
        })
}

fn end_lines(route: &Bound<'_, PyAny>) {
    if let Err(err) = route.call_method0(intern!(route.py(), "end_lines")) {
        err.write_unraisable(route.py(), Some(route));
    }
}
