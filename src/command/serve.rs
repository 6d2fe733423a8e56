//! A backend's own thread: starting it, and the command loop of the
//! in-process backends.

#[cfg(any(feature = "pyo3", feature = "rustpython"))]
use std::collections::VecDeque;
use std::thread;

#[cfg(any(feature = "pyo3", feature = "rustpython"))]
use serde_json::Value;

#[cfg(any(feature = "pyo3", feature = "rustpython"))]
use super::{Answer, CommandQueue, Job, Request};
use crate::error::PyRunnerError;

/// An in-process backend's thread: it runs its queue's commands one at a
/// time, in order, until `stop` or until every handle is gone.
#[cfg(any(feature = "pyo3", feature = "rustpython"))]
pub(crate) trait Serve {
    fn queue(&self) -> &CommandQueue;
    /// Runs one command (never `Stop`).
    fn execute(&mut self, job: Job);
    /// Waits for work while the queue is empty.
    fn idle(&mut self);
    /// Runs after each batch of commands taken off the queue.
    fn after_batch(&mut self) {}
    /// Ends the runner; called once, before `stop` is answered.
    fn shut_down(&mut self);

    /// The command loop.
    fn serve(&mut self) {
        let mut batch = VecDeque::new();
        loop {
            self.queue().take_all(&mut batch);
            if batch.is_empty() {
                if self.queue().is_closed() {
                    break;
                }
                self.idle();
                continue;
            }
            while let Some(job) = batch.pop_front() {
                if job.reply.is_abandoned() {
                    continue;
                }
                if matches!(job.request, Request::Stop) {
                    drop(batch);
                    self.shut_down();
                    job.reply.send(Ok(Answer::Value(Value::Null)));
                    return;
                }
                self.execute(job);
            }
            self.after_batch();
        }
        self.shut_down();
    }
}

/// What an in-process backend does before its first command: put the venv's
/// packages on `sys.path`, then run the startup code. Either failing is a
/// `Startup` error naming what failed.
#[cfg(any(feature = "pyo3", feature = "rustpython"))]
pub(crate) fn prepare_in_process<T>(
    venv: Option<&std::path::Path>,
    startup: Option<&str>,
    set_venv: impl FnOnce(&std::path::Path) -> Result<T, PyRunnerError>,
    run: impl FnOnce(&str) -> Result<T, PyRunnerError>,
) -> Result<(), PyRunnerError> {
    if let Some(venv) = venv {
        set_venv(venv)
            .map_err(|err| PyRunnerError::Startup(format!("venv {}: {err}", venv.display())))?;
    }
    if let Some(code) = startup {
        run(code).map_err(|err| PyRunnerError::Startup(format!("startup code failed: {err}")))?;
    }
    Ok(())
}

/// Tells [`start_backend_thread`] whether the backend started.
pub(crate) struct Ready(std::sync::mpsc::SyncSender<Result<(), PyRunnerError>>);

impl Ready {
    pub fn report(&self, started: Result<(), PyRunnerError>) {
        let _ = self.0.send(started);
    }
}

/// Runs a backend's thread and waits until it reports whether it started;
/// the thread goes on serving after that.
pub(crate) fn start_backend_thread(
    name: &str,
    stack_size: usize,
    body: impl FnOnce(Ready) + Send + 'static,
) -> Result<(), PyRunnerError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    thread::Builder::new()
        .name(name.into())
        .stack_size(stack_size)
        .spawn(move || body(Ready(ready_tx)))
        .map_err(|err| {
            PyRunnerError::Startup(format!("could not start the {name} thread: {err}"))
        })?;
    ready_rx.recv().unwrap_or_else(|_| {
        Err(PyRunnerError::Startup(format!(
            "the {name} thread ended while starting"
        )))
    })
}
