//! The in-process backend: CPython through pyo3, on one dedicated thread per runner.
//!
//! The thread stays attached to the interpreter while it works through a
//! batch of commands and detaches (releases the GIL) while it waits, so other
//! runners and Python threads run meanwhile. Coroutines run on one asyncio
//! loop per runner, owned by this thread; the thread turns that loop between
//! batches and blocks in it when only coroutines are pending, woken by a byte
//! on a socket when a command arrives.

mod convert;
mod host;
mod init;
mod namespace;
mod output;
mod streams;
mod typed;
mod watchdog;

use std::collections::HashMap;
use std::ops::Deref;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};
use serde_json::Value;

use crate::command::{
    prepare_in_process, start_backend_thread, CancelTarget, CommandQueue, Invoke, Job, Reply,
    Request, Responder, Returns, Serve,
};
use crate::config::RunnerConfig;
use crate::error::PyRunnerError;
use crate::tuning::{LOOP_TURN_GAP, WORKER_SPIN};
use crate::watchdog::Watchdog;
use convert::{to_args, ToValueError};
use namespace::{Helpers, Namespace};
use watchdog::AsyncExc;

/// Deep Python recursion and deep values need room; the pages are only
/// committed when touched.
const STACK_SIZE: usize = 256 << 20;

/// Starts the interpreter thread for a runner and waits until it is ready.
pub(crate) fn spawn(config: &RunnerConfig, queue: Arc<CommandQueue>) -> Result<(), PyRunnerError> {
    let venv = config.venv.clone();
    let startup = config.startup.clone();
    let output = config.output.clone();
    let host = config.host.clone();
    start_backend_thread("async_py-pyo3", STACK_SIZE, move |ready| {
        if let Err(err) = init::start_interpreter() {
            return ready.report(Err(err));
        }
        // Should the thread ever end by a panic, commands get `Stopped`
        // instead of waiting for it.
        let _closing = CloseOnExit(queue.clone());
        Python::attach(|py| {
            queue.set_consumer();
            let started =
                Worker::start(py, queue, venv.as_deref(), startup.as_deref(), output, host);
            match started {
                Ok(mut worker) => {
                    ready.report(Ok(()));
                    worker.serve();
                }
                Err(err) => ready.report(Err(err)),
            }
        });
    })
}

/// Closes the queue when the interpreter thread ends, however it ends.
struct CloseOnExit(Arc<CommandQueue>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        drop(self.0.close());
    }
}

/// How a typed call's result is read: into its type, by the value table
/// with bytes kept (see `Readers` in `crate::command`).
pub(crate) type ReadTyped = for<'py> fn(
    &Bound<'py, PyAny>,
    &Bound<'py, PyAny>,
) -> Result<Box<dyn std::any::Any + Send>, ToValueError>;

/// The [`ReadTyped`] of `T`.
pub(crate) fn read_typed<'py, T>(
    obj: &Bound<'py, PyAny>,
    table_form: &Bound<'py, PyAny>,
) -> Result<Box<dyn std::any::Any + Send>, ToValueError>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    typed::from_python::<T>(obj, table_form).map(|value| Box::new(value) as _)
}

/// A coroutine call waiting for its task to finish.
struct Awaiting {
    reply: output::ReplyTo,
    timeout: Option<Duration>,
    returns: Returns,
}

struct Worker<'py> {
    /// What plain commands need (the worker reads it through `Deref`).
    ns: Namespace<'py>,
    queue: Arc<CommandQueue>,
    host: host::Host,
    /// Set by the watchdog when it interrupts a command (see `watchdog`).
    interrupted: Arc<AtomicBool>,
    driver: Option<Bound<'py, PyAny>>,
    /// Keeps the read end of the loop's wake-up socket open.
    wake_read: Option<UnixStream>,
    awaiting: HashMap<u64, Awaiting>,
    /// When the event loop last ran (see [`LOOP_TURN_GAP`]).
    last_turn: Instant,
    next_token: u64,
    watchdog: Option<Arc<Watchdog<AsyncExc>>>,
    output: output::Output<'py>,
    streams: streams::Streams<'py>,
}

impl<'py> Worker<'py> {
    fn start(
        py: Python<'py>,
        queue: Arc<CommandQueue>,
        venv: Option<&std::path::Path>,
        startup: Option<&str>,
        output: Option<crate::output::OutputSink>,
        host: Option<crate::host::HostSetup>,
    ) -> Result<Self, PyRunnerError> {
        let load_error = |err: PyErr| {
            PyRunnerError::Startup(format!("could not load the worker helpers: {err}"))
        };
        let helpers = Helpers::load(py).map_err(load_error)?;
        let globals = helpers
            .module
            .getattr("new_globals")
            .and_then(|f| f.call0())
            .and_then(|g| Ok(g.cast_into::<PyDict>()?))
            .map_err(load_error)?;
        let builtins = PyModule::import(py, "builtins").map_err(load_error)?;
        let ns = Namespace {
            py,
            globals,
            builtins,
            helpers,
        };
        let interrupted = Arc::new(AtomicBool::new(false));
        let host = host::Host::install(&ns, &queue, host, &interrupted).map_err(|err| {
            PyRunnerError::Startup(format!("could not install the host functions: {err}"))
        })?;
        let mut worker = Worker {
            ns,
            queue,
            host,
            interrupted,
            driver: None,
            wake_read: None,
            awaiting: HashMap::new(),
            last_turn: Instant::now(),
            next_token: 0,
            watchdog: None,
            output: output::Output::default(),
            streams: streams::Streams::default(),
        };
        if let Some(sink) = output {
            worker.route_output(sink)?;
        }
        prepare_in_process(
            venv,
            startup,
            |dir| worker.set_venv(dir),
            |code| worker.run_helper(&worker.helpers.run_code, code).map(drop),
        )?;
        Ok(worker)
    }
}

/// The worker's plain part: `self.py`, `self.globals`, `self.resolve(..)`.
impl<'py> Deref for Worker<'py> {
    type Target = Namespace<'py>;

    fn deref(&self) -> &Namespace<'py> {
        &self.ns
    }
}

impl Serve for Worker<'_> {
    fn queue(&self) -> &CommandQueue {
        &self.queue
    }

    fn idle(&mut self) {
        if self.streams.have_work() {
            // A stream with room makes items instead of sleeping; coroutines
            // still get their turns of the loop.
            self.pump_streams();
            self.after_batch();
            return;
        }
        if self.driver.is_none() {
            let queue = &self.queue;
            self.py.detach(|| queue.wait(WORKER_SPIN));
            return;
        }
        if self.awaiting.is_empty() {
            // The next command often follows at once: catch it before
            // going to sleep in the loop's selector.
            let queue = &self.queue;
            if self.py.detach(|| queue.spin_for_jobs(WORKER_SPIN)) {
                return;
            }
        }
        // Once there is a loop, the runner waits in it: tasks that calls
        // left behind (servers, tickers, `call_later`) run between commands,
        // as in a child. A coroutine finishing or the queue's wake-up byte
        // ends the wait.
        let queue = self.queue.clone();
        queue.wait_in_loop(|| self.turn_loop(true));
    }

    fn after_batch(&mut self) {
        if self.streams.have_work() {
            self.pump_streams();
        }
        let due = !self.awaiting.is_empty()
            || (self.driver.is_some() && self.last_turn.elapsed() >= LOOP_TURN_GAP);
        if due {
            self.turn_loop(false);
        }
    }

    fn shut_down(&mut self) {
        drop(self.queue.close());
        self.stop_streams();
        if let Some(driver) = self.driver.take() {
            if let Err(err) = driver.call_method0("cancel_all") {
                err.write_unraisable(self.py, Some(&driver));
            }
        }
        // What the cancelled coroutines still awaited from async host
        // functions is dropped.
        self.host.abort_all();
        for (_, waiting) in self.awaiting.drain() {
            waiting.reply.send(Err(PyRunnerError::Stopped));
        }
        // Functions defined in the globals refer back to them: clearing the
        // dict breaks those cycles, so the runner's objects are released
        // (and their `__del__` runs) now rather than at some later collection;
        // what those print is still routed.
        self.globals.clear();
        self.unroute_output();
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.shutdown();
        }
    }

    fn execute(&mut self, job: Job) {
        let Job {
            request,
            reply,
            timeout,
            ..
        } = job;
        match request {
            Request::CallAsyncFunction { name, args } => {
                return self.start_coroutine(&name, &args, reply, timeout)
            }
            Request::Invoke(invoke) => return self.invoke(invoke, reply, timeout),
            Request::Cancel(target) => return self.cancel(&target),
            Request::Stream(feed) => return self.stream_signal(&feed),
            // Not sent on this backend: async host results go to the loop's drain.
            Request::HostDone { .. } => return,
            _ => {}
        }
        let mut started = self.watchdog.take();
        let armed =
            crate::watchdog::arm(&mut started, timeout, reply.slot(), || self.interrupter());
        self.watchdog = started;
        let watchdog = match armed {
            Ok(watchdog) => watchdog,
            Err(err) => return reply.send(Err(err)),
        };
        let outcome = self.run_request(request);
        if let Some(watchdog) = watchdog {
            watchdog::disarm(&watchdog, self.py);
        }
        self.end_output_lines();
        reply.send(outcome);
    }
}

impl<'py> Worker<'py> {
    /// A plain command; a captured run goes through the router this
    /// worker keeps.
    fn run_request(&self, request: Request) -> Reply {
        match request {
            Request::RunCaptured { code } => self.run_captured(self.output_router()?, &code),
            request => self.ns.run_request(request),
        }
    }

    /// How the watchdog stops a command past its limit: `RunnerTimeout`
    /// raised in this thread.
    fn interrupter(&self) -> Result<watchdog::AsyncExc, PyRunnerError> {
        let exception = self
            .helpers
            .module
            .getattr("RunnerTimeout")
            .map_err(|err| self.python_error(err))?;
        Ok(watchdog::interrupt_this_thread(
            exception.unbind(),
            self.interrupted.clone(),
        ))
    }

    /// A call of the call builder: its function runs here, under the
    /// command's limit; an awaitable it returns is awaited on the loop
    /// with what is left of the limit.
    fn invoke(&mut self, invoke: Invoke, reply: Responder, timeout: Option<Duration>) {
        // Its output captured, if asked, until it has run (or scheduled
        // the awaitable it returned, whose task keeps the capture).
        let (reply, _capturing) = match self.reply_to(reply, invoke.capture) {
            Ok(both) => both,
            Err((reply, err)) => return reply.send(Err(err)),
        };
        // Read only for a limit: a clock read is a good part of a fast call.
        let started = timeout.map(|_| Instant::now());
        let mut watchdog = self.watchdog.take();
        let armed =
            crate::watchdog::arm(&mut watchdog, timeout, reply.slot(), || self.interrupter());
        self.watchdog = watchdog;
        let armed = match armed {
            Ok(armed) => armed,
            Err(err) => return reply.send(Err(err)),
        };
        let called = self.call_invoked(&invoke);
        // A stream's iterator is made under the call's limit too.
        let source = match (&called, &invoke.stream) {
            (Ok((result, _)), Some(_)) => Some(self.stream_source(&invoke.name, result)),
            _ => None,
        };
        if let Some(armed) = armed {
            watchdog::disarm(&armed, self.py);
        }
        let (result, _spent) = match called {
            Ok(called) => called,
            Err(err) => return reply.send(Err(err)),
        };
        if let (Some(feed), Some(source)) = (invoke.stream, source) {
            let reply = reply.into_responder();
            return self.open_stream(source, feed, invoke.returns, reply, timeout);
        }
        match result_kind(&result) {
            ResultKind::Value => return reply.send(self.read_result(&result, invoke.returns)),
            ResultKind::Generator(kind) => {
                return reply.send(Err(PyRunnerError::Conversion(format!(
                    "{} returned {kind}; read its items with .stream()",
                    invoke.name
                ))))
            }
            ResultKind::Awaitable => {}
        }
        let left = timeout
            .zip(started)
            .map(|(limit, started)| limit.saturating_sub(started.elapsed()));
        if left == Some(Duration::ZERO) {
            // Cancelled (a future) or closed (a coroutine) unawaited, so
            // that it runs no further and Python does not warn of it.
            let end = if result.hasattr(intern!(self.py, "cancel")).unwrap_or(false) {
                intern!(self.py, "cancel")
            } else {
                intern!(self.py, "close")
            };
            let _ = result.call_method0(end);
            return reply.send(Err(PyRunnerError::Timeout(timeout.unwrap_or_default())));
        }
        let scheduled = self.driver().and_then(|driver| {
            let token = self.next_token;
            self.next_token += 1;
            driver
                .call_method1(
                    intern!(self.py, "schedule"),
                    (token, &result, left.map(|left| left.as_secs_f64())),
                )
                .map_err(|err| self.python_error(err))?;
            Ok(token)
        });
        match scheduled {
            Ok(token) => {
                self.awaiting.insert(
                    token,
                    Awaiting {
                        reply,
                        timeout,
                        returns: invoke.returns,
                    },
                );
            }
            Err(err) => reply.send(Err(err)),
        }
    }

    /// Cancels the coroutine of the command whose caller gave up, if one runs.
    fn cancel(&mut self, target: &CancelTarget) {
        let Some(token) = self
            .awaiting
            .iter()
            .find(|(_, waiting)| target.is_for(&waiting.reply))
            .map(|(token, _)| *token)
        else {
            return;
        };
        let Some(driver) = self.driver.clone() else {
            return;
        };
        if let Err(err) = driver.call_method1(intern!(self.py, "cancel"), (token,)) {
            err.write_unraisable(self.py, Some(&driver));
        }
    }

    fn driver(&mut self) -> Result<Bound<'py, PyAny>, PyRunnerError> {
        if let Some(driver) = &self.driver {
            return Ok(driver.clone());
        }
        let io_error = |err: std::io::Error| {
            PyRunnerError::Startup(format!(
                "could not make the event loop's wake-up socket: {err}"
            ))
        };
        let (wake_read, wake_write) = UnixStream::pair().map_err(io_error)?;
        wake_read.set_nonblocking(true).map_err(io_error)?;
        wake_write.set_nonblocking(true).map_err(io_error)?;
        let driver = self
            .helpers
            .module
            .getattr("CoroutineDriver")
            .and_then(|class| class.call1((wake_read.as_raw_fd(),)))
            .map_err(|err| self.python_error(err))?;
        self.host
            .attach_loop(&driver)
            .map_err(|err| self.python_error(err))?;
        self.queue.set_loop_wake(wake_write);
        self.wake_read = Some(wake_read);
        self.driver = Some(driver.clone());
        Ok(driver)
    }

    fn start_coroutine(
        &mut self,
        name: &str,
        args: &[Value],
        reply: Responder,
        timeout: Option<Duration>,
    ) {
        let started = (|| {
            let driver = self.driver()?;
            let function = self.resolve(name).map_err(|err| self.python_error(err))?;
            let args = to_args(self.py, args)?;
            let token = self.next_token;
            self.next_token += 1;
            let limit = timeout.map(|d| d.as_secs_f64());
            let (scheduled, value): (bool, Bound<'py, PyAny>) = driver
                .call_method1(intern!(self.py, "start"), (token, function, args, limit))
                .and_then(|r| r.extract())
                .map_err(|err| self.python_error(err))?;
            Ok::<_, PyRunnerError>((token, scheduled, value))
        })();
        match started {
            Err(err) => reply.send(Err(err)),
            Ok((_, false, value)) => reply.send(self.to_value(&value)),
            Ok((token, true, _)) => {
                let returns = Returns::Value;
                let reply = match self.reply_to(reply, false) {
                    Ok((reply, _)) => reply,
                    Err((reply, _)) => reply.into(),
                };
                self.awaiting.insert(
                    token,
                    Awaiting {
                        reply,
                        timeout,
                        returns,
                    },
                );
            }
        }
    }

    /// Runs the event loop once (or until woken) and answers finished calls.
    fn turn_loop(&mut self, block: bool) {
        let Some(driver) = self.driver.clone() else {
            return;
        };
        let finished = driver.call_method1(intern!(self.py, "turn"), (block,));
        self.last_turn = Instant::now();
        let finished = match finished {
            Ok(finished) => finished,
            Err(err)
                if err.is_instance_of::<PySystemExit>(self.py)
                    || err.is_instance_of::<PyKeyboardInterrupt>(self.py) =>
            {
                // A coroutine raised it: asyncio lets these two out of the
                // loop after the task has taken it, and that call's reply
                // comes with the next turn. The other calls go on.
                return;
            }
            Err(err) => {
                // A failure of the loop itself: every pending call fails with it.
                let err = self.python_error(err);
                for (_, waiting) in self.awaiting.drain() {
                    waiting.reply.send(Err(err.clone()));
                }
                return;
            }
        };
        // `turn` returns a list of (token, ok, value).
        let Ok(finished) = finished.extract::<Vec<(u64, bool, Bound<'py, PyAny>)>>() else {
            return;
        };
        for (token, ok, value) in finished {
            if self.streams.is_pull(token) {
                self.pulled(token, ok, &value);
                continue;
            }
            let Some(waiting) = self.awaiting.remove(&token) else {
                continue;
            };
            let reply = if ok {
                self.read_result(&value, waiting.returns)
            } else {
                match (value.extract::<String>().ok().as_deref(), waiting.timeout) {
                    (Some("timeout"), Some(limit)) => Err(PyRunnerError::Timeout(limit)),
                    (Some(_), _) => Err(PyRunnerError::python(
                        "CancelledError",
                        "the coroutine was cancelled",
                    )),
                    (None, _) => Err(self.exception_error(&value)),
                }
            };
            waiting.reply.send(reply);
        }
    }
}

/// What a called function returned, as an invoke treats it.
enum ResultKind {
    Value,
    /// Awaited on the loop: its type has `__await__` (coroutines, futures,
    /// tasks), or it is a generator-based coroutine (`@types.coroutine`),
    /// as `inspect.isawaitable` says.
    Awaitable,
    /// "a generator" or "an async generator": refused, its items are for
    /// `.stream()`.
    Generator(&'static str),
}

/// Generator-based coroutines carry this flag on their code object.
const CO_ITERABLE_COROUTINE: i64 = 0x100;

fn result_kind(obj: &Bound<'_, PyAny>) -> ResultKind {
    let ptr = obj.as_ptr();
    // SAFETY: `ptr` is a live object (`obj` holds a reference) and the
    // thread is attached; the checks only read its type and its type's
    // async slots (`tp_as_async` is null or lives as long as the type).
    let (generator, async_generator, awaitable) = unsafe {
        let kind = pyo3::ffi::Py_TYPE(ptr);
        let slots = (*kind).tp_as_async;
        (
            pyo3::ffi::PyGen_Check(ptr) != 0,
            pyo3::ffi::PyAsyncGen_CheckExact(ptr) != 0,
            !slots.is_null() && (*slots).am_await.is_some(),
        )
    };
    if generator {
        let flags = obj
            .getattr("gi_code")
            .and_then(|code| code.getattr("co_flags"))
            .and_then(|flags| flags.extract::<i64>())
            .unwrap_or(0);
        if flags & CO_ITERABLE_COROUTINE != 0 {
            return ResultKind::Awaitable;
        }
        return ResultKind::Generator("a generator");
    }
    if async_generator {
        return ResultKind::Generator("an async generator");
    }
    if awaitable {
        return ResultKind::Awaitable;
    }
    ResultKind::Value
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.shutdown();
        }
    }
}
