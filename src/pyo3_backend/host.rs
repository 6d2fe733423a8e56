//! Host functions on the in-process CPython backend (see `crate::host`).
//!
//! Every runner installs its `async_py.host` namespace at its start
//! (`install_host` in `python/host.py`). Runners share one interpreter, so
//! the namespace is set in a context variable on the runner's own thread:
//! its commands, the tasks its loop runs (a task copies the context it was
//! made in) and `asyncio.to_thread` see it; a thread started with
//! `threading.Thread` does not (it starts with an empty context) unless it
//! is handed `async_py.host` itself.
//!
//! - A sync host function is a native function (`PyCFunction`). It runs on
//!   the thread that called it, detached from the interpreter, so that
//!   other runners and Python threads go on while it runs, and so that it
//!   may wait for anything that needs the interpreter (another runner's
//!   command, a Python thread): attached, such a wait would never end.
//!   Detaching costs about 0.05 µs of a call's 0.35 µs (release build,
//!   `async_py.host.f(i)` in a Python loop). Its price is paid under
//!   contention: while another runner runs CPU-bound Python, each call
//!   waits for the interpreter when the function returns, about 50 µs a
//!   call against 0.45 µs attached (two cores); attached, a 300 ms host
//!   function held every other runner for those 300 ms.
//! - On the runner's own thread the call opens a nesting scope
//!   (`crate::host::nest`): a command the host function sends to its runner
//!   runs at once, there, through a [`Namespace`] bound again from owned
//!   handles (the worker's own state is suspended further up the stack), and
//!   under the limit of the command that called the host function: the
//!   watchdog armed for that command goes on counting. A nested command's
//!   own limit is not enforced apart from it. A nested command that would
//!   need the worker's state answers `Unsupported`: a coroutine or an
//!   awaitable result (the loop is the worker's, and it is not turning), a
//!   stream, and `stop` (it would wait for the command that waits for it).
//!   Called on another thread (`asyncio.to_thread`), a host function's
//!   commands queue as usual: the runner serves them while its coroutine
//!   awaits the thread, but a command that blocks the runner's thread on
//!   that thread (`Thread.join()`) waits for them forever.
//! - An async host function is a coroutine function (`host_coroutine`):
//!   its `start` begins the Rust future on the host runtime and its result
//!   comes back to the future Python awaits. Awaited on the runner's own
//!   loop (the usual case), the result is put in the state's `finished`
//!   list and a byte written to the loop's wake-up socket: whenever that
//!   loop next runs (a turn of the worker's, or user code's own
//!   `run_until_complete` inside a command, or the loop's last turns at
//!   `stop`), its reader (`CoroutineDriver._on_wake`) calls the drain, which
//!   settles the futures on the loop's thread. Python is never touched from
//!   the runtime's threads. Awaited on another loop (`asyncio.run` in a sync
//!   command, or in a thread), the result is handed to that loop with
//!   `call_soon_threadsafe` from a blocking thread of the runtime, since the
//!   runner's thread may be the one waiting. A cancelled await (the
//!   command's limit, its caller gone) aborts the task, which drops the
//!   future; at `stop` every task left is aborted, and a future on another
//!   loop is settled with `HostError` so that nothing awaits it forever.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, ThreadId};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyString, PyTuple, PyType};
use serde_json::{Map, Value};

use super::convert::{to_python, to_value, ToValueError};
use super::namespace::{HeldNamespace, Namespace};
use super::{result_kind, ResultKind};
use crate::command::{CommandQueue, Job, Reply, Request};
use crate::error::PyRunnerError;
use crate::host::{nest, AsyncFn, HostFn, HostResult, HostSetup, HostTask, SyncFn};

/// A runner's host functions, as its worker keeps them.
pub(super) struct Host {
    /// `None` for a runner without host functions (its namespace is empty).
    state: Option<Arc<HostState>>,
}

/// What the native functions of one runner share.
struct HostState {
    setup: HostSetup,
    queue: Arc<CommandQueue>,
    /// The runner's thread: only there is a host function's command nested.
    thread: ThreadId,
    namespace: HeldNamespace,
    table_form: Py<PyAny>,
    host_error: Py<PyAny>,
    settle_host: Py<PyAny>,
    runner_timeout: Py<PyType>,
    /// Set while the command that runs is past its limit (see `watchdog`).
    interrupted: Arc<AtomicBool>,
    /// The worker's loop, once it has one (see `Host::attach_loop`).
    worker_loop: OnceLock<Py<PyAny>>,
    /// Results of async calls awaited on the worker's loop, for the drain.
    finished: Mutex<Vec<(u64, HostResult)>>,
    /// Async calls under way, by token.
    calls: Mutex<HashMap<u64, AsyncCall>>,
    next_token: AtomicU64,
}

/// An async host call: the future Python awaits, and the task that will
/// settle it.
struct AsyncCall {
    future: Py<PyAny>,
    task: Option<HostTask>,
}

impl Host {
    /// Gives the runner's Python its namespace (empty without `setup`).
    /// Call it on the runner's thread, before any code of the runner runs.
    pub fn install(
        ns: &Namespace<'_>,
        queue: &Arc<CommandQueue>,
        setup: Option<HostSetup>,
        interrupted: &Arc<AtomicBool>,
    ) -> PyResult<Host> {
        let py = ns.py;
        let helpers = &ns.helpers.module;
        let functions = PyDict::new(py);
        let state = match setup {
            Some(setup) if !setup.table.is_empty() => {
                let state = Arc::new(HostState {
                    setup,
                    queue: queue.clone(),
                    thread: thread::current().id(),
                    namespace: ns.hold(),
                    table_form: ns.helpers.table_form.clone().unbind(),
                    host_error: helpers.getattr("host_error")?.unbind(),
                    settle_host: helpers.getattr("settle_host")?.unbind(),
                    runner_timeout: helpers.getattr("RunnerTimeout")?.cast_into()?.unbind(),
                    interrupted: interrupted.clone(),
                    worker_loop: OnceLock::new(),
                    finished: Mutex::default(),
                    calls: Mutex::default(),
                    next_token: AtomicU64::new(0),
                });
                state.functions(py, helpers, &functions)?;
                Some(state)
            }
            _ => None,
        };
        helpers.getattr("install_host")?.call1((functions, true))?;
        Ok(Host { state })
    }

    /// The worker made its loop (`driver`, a `CoroutineDriver`): async
    /// calls awaited there hand their results to its drain.
    pub fn attach_loop(&self, driver: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let py = driver.py();
        let _ = state
            .worker_loop
            .set(driver.getattr(intern!(py, "loop"))?.unbind());
        let drained = state.clone();
        let drain = move |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| {
            drained.drain(args.py());
            PyResult::Ok(())
        };
        let drain = PyCFunction::new_closure(py, Some(c"async_py_host_drain"), None, drain)?;
        driver.setattr(intern!(py, "host_drain"), drain)
    }

    /// Aborts every async call under way (the runner stops): their
    /// futures are dropped.
    pub fn abort_all(&self) {
        let Some(state) = &self.state else {
            return;
        };
        let calls: Vec<AsyncCall> = state.lock_calls().drain().map(|(_, call)| call).collect();
        for call in &calls {
            if let Some(task) = &call.task {
                task.abort();
            }
        }
        // A future of another loop (a thread's, another runner's) would be
        // awaited forever: it gets the error instead, on its loop.
        Python::attach(|py| {
            for call in &calls {
                let future = call.future.bind(py);
                let on_worker_loop = match (
                    future.call_method0(intern!(py, "get_loop")),
                    state.worker_loop.get(),
                ) {
                    (Ok(event_loop), Some(worker_loop)) => event_loop.is(worker_loop.bind(py)),
                    _ => false,
                };
                if on_worker_loop {
                    continue;
                }
                let (ok, value) = state.outcome(py, Err("the runner stopped".into()));
                let handed = future
                    .call_method0(intern!(py, "get_loop"))
                    .and_then(|event_loop| {
                        event_loop.call_method1(
                            intern!(py, "call_soon_threadsafe"),
                            (state.settle_host.bind(py), future, ok, value),
                        )
                    });
                // A loop closed meanwhile has nobody awaiting on it.
                drop(handed);
            }
        });
    }
}

impl HostState {
    /// One Python function per host function, into `functions`.
    fn functions(
        self: &Arc<Self>,
        py: Python<'_>,
        helpers: &Bound<'_, PyModule>,
        functions: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let mut cancel = None;
        for (name, f) in self.setup.table.iter() {
            let function = match f {
                HostFn::Sync(f) => self.sync_function(py, name, f.clone())?.into_any(),
                HostFn::Async(f) => {
                    let cancel = match &cancel {
                        Some(cancel) => cancel,
                        None => cancel.insert(self.cancel_function(py)?),
                    };
                    let start = self.start_function(py, name, f.clone())?;
                    helpers
                        .getattr(intern!(py, "host_coroutine"))?
                        .call1((&**name, start, cancel))?
                }
            };
            functions.set_item(&**name, function)?;
        }
        Ok(())
    }

    fn sync_function<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        name: &Arc<str>,
        f: Arc<SyncFn>,
    ) -> PyResult<Bound<'py, PyCFunction>> {
        let state = self.clone();
        let name = name.clone();
        PyCFunction::new_closure(
            py,
            Some(static_name(&name)),
            None,
            move |args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>| {
                state.call_sync(&name, &*f, args, kwargs)
            },
        )
    }

    /// A sync host call, from Python.
    fn call_sync(
        &self,
        name: &Arc<str>,
        f: &SyncFn,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = args.py();
        let (args, kwargs) = self.read_args(py, name, args, kwargs)?;
        let call = || py.detach(|| self.setup.call_sync(name, f, args, kwargs));
        let on_runner = thread::current().id() == self.thread;
        let result = if on_runner {
            let take = |job: Job| Python::attach(|py| self.serve_nested(py, job));
            nest::within(&self.queue, &take, call)
        } else {
            call()
        };
        // Past the command's limit (the watchdog answered `Timeout`), the
        // command ends here, even if a nested command took the exception
        // the watchdog raised.
        if on_runner && self.interrupted.load(Ordering::SeqCst) {
            return Err(PyErr::from_type(
                self.runner_timeout.bind(py).clone(),
                "the command ran past its limit in a host function",
            ));
        }
        match result {
            Ok(value) => match to_python(py, &value) {
                Ok(obj) => Ok(obj.unbind()),
                Err(err) => Err(self.error(py, format!("{name}() returned {err}"))),
            },
            Err(message) => Err(self.error(py, message)),
        }
    }

    /// The cancel function the coroutines of a runner's async host
    /// functions share: `cancel(token)` aborts the call's task.
    fn cancel_function<'py>(self: &Arc<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = self.clone();
        let cancel = move |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| {
            let (token,): (u64,) = args.extract()?;
            let call = state.take_call(token);
            if let Some(task) = call.as_ref().and_then(|call| call.task.as_ref()) {
                task.abort();
            }
            PyResult::Ok(())
        };
        Ok(PyCFunction::new_closure(py, Some(c"async_py_host_cancel"), None, cancel)?.into_any())
    }

    /// The start function of async host function `name`:
    /// `start(args, kwargs, future)` begins the call and returns its token.
    fn start_function<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
        name: &Arc<str>,
        f: Arc<AsyncFn>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let state = self.clone();
        let function_name = static_name(name);
        let name = name.clone();
        let start = move |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| {
            let (call_args, call_kwargs, future): (
                Bound<'_, PyTuple>,
                Option<Bound<'_, PyDict>>,
                Bound<'_, PyAny>,
            ) = args.extract()?;
            state.start_async(&name, &f, &call_args, call_kwargs.as_ref(), future)
        };
        Ok(PyCFunction::new_closure(py, Some(function_name), None, start)?.into_any())
    }

    fn start_async(
        self: &Arc<Self>,
        name: &Arc<str>,
        f: &Arc<AsyncFn>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        future: Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let py = args.py();
        let (args, kwargs) = self.read_args(py, name, args, kwargs)?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        // Awaited on the worker's loop, the result goes to that loop's
        // drain; on any other, to `call_soon_threadsafe`.
        let on_worker_loop = match self.worker_loop.get() {
            Some(worker_loop) => future
                .call_method0(intern!(py, "get_loop"))?
                .is(worker_loop.bind(py)),
            None => false,
        };
        let call = AsyncCall {
            future: future.unbind(),
            task: None,
        };
        self.lock_calls().insert(token, call);
        let state = self.clone();
        let done = move |result: HostResult| {
            if on_worker_loop {
                state.lock_finished().push((token, result));
                state.queue.wake_loop();
            } else {
                state.settle_elsewhere(token, result);
            }
        };
        let task = py.detach(|| self.setup.start_async(name, f.clone(), args, kwargs, done));
        if let Some(call) = self.lock_calls().get_mut(&token) {
            call.task = Some(task);
        }
        Ok(token)
    }

    /// Hands a result to a loop other than the one the worker turns,
    /// from a thread that may wait for the interpreter.
    fn settle_elsewhere(self: Arc<Self>, token: u64, result: HostResult) {
        let settle = move || {
            Python::attach(|py| {
                let Some(call) = self.take_call(token) else {
                    return;
                };
                let future = call.future.bind(py);
                let (ok, value) = self.outcome(py, result);
                let handed = future
                    .call_method0(intern!(py, "get_loop"))
                    .and_then(|event_loop| {
                        event_loop.call_method1(
                            intern!(py, "call_soon_threadsafe"),
                            (self.settle_host.bind(py), future, ok, value),
                        )
                    });
                // A loop closed meanwhile has nobody awaiting on it.
                drop(handed);
            });
        };
        match tokio::runtime::Handle::try_current() {
            // The runtime's own threads must not wait for the interpreter.
            Ok(runtime) => drop(runtime.spawn_blocking(settle)),
            // Called at once, by `start_async`, on the thread that started.
            Err(_) => settle(),
        }
    }

    /// Settles the futures of the results handed to the worker's loop;
    /// called by that loop's wake-up reader, on its thread.
    fn drain(&self, py: Python<'_>) {
        let finished = std::mem::take(&mut *self.lock_finished());
        for (token, result) in finished {
            let Some(call) = self.take_call(token) else {
                // Cancelled meanwhile: nobody awaits it.
                continue;
            };
            let future = call.future.bind(py);
            let (ok, value) = self.outcome(py, result);
            if let Err(err) = self.settle_host.bind(py).call1((future, ok, value)) {
                err.write_unraisable(py, Some(future));
            }
        }
    }

    fn lock_finished(&self) -> MutexGuard<'_, Vec<(u64, HostResult)>> {
        self.finished
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_call(&self, token: u64) -> Option<AsyncCall> {
        self.lock_calls().remove(&token)
    }

    fn lock_calls(&self) -> MutexGuard<'_, HashMap<u64, AsyncCall>> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What `settle_host` is given for a result: `(True, value)` or
    /// `(False, message)`.
    fn outcome<'py>(&self, py: Python<'py>, result: HostResult) -> (bool, Bound<'py, PyAny>) {
        let converted = result.and_then(|value| {
            to_python(py, &value).map_err(|err| format!("the host function returned {err}"))
        });
        match converted {
            Ok(value) => (true, value),
            Err(message) => (false, PyString::new(py, &message).into_any()),
        }
    }

    /// A call's arguments, by the value table. One that does not fit
    /// raises `HostError` naming it.
    fn read_args(
        &self,
        py: Python<'_>,
        name: &str,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(Vec<Value>, Map<String, Value>)> {
        let table_form = self.table_form.bind(py);
        let read = |obj: &Bound<'_, PyAny>, at: &dyn std::fmt::Display| {
            // `str()` of an object runs its code, which may change what is
            // being read; a panic of the reader fails this call only.
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                to_value(obj, table_form)
            }));
            match read {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(ToValueError::Python(err))) => Err(err),
                Ok(Err(ToValueError::Conversion(why))) => {
                    Err(self.error(py, format!("{name}() argument {at}: {why}")))
                }
                Err(_) => Err(self.error(
                    py,
                    format!("{name}() argument {at}: the value changed while it was being read"),
                )),
            }
        };
        let mut values = Vec::with_capacity(args.len());
        for (index, arg) in args.iter().enumerate() {
            values.push(read(&arg, &index)?);
        }
        let mut map = Map::new();
        if let Some(kwargs) = kwargs {
            for (key, arg) in kwargs.iter() {
                let key: String = key.extract()?;
                let value = read(&arg, &format_args!("{key:?}"))?;
                map.insert(key, value);
            }
        }
        Ok((values, map))
    }

    /// `async_py.HostError(message)`, to raise.
    fn error(&self, py: Python<'_>, message: String) -> PyErr {
        match self.host_error.bind(py).call1((message,)) {
            Ok(exception) => PyErr::from_value(exception),
            Err(err) => err,
        }
    }

    /// A command the host function running on this thread sent to its
    /// own runner: answered here and now.
    fn serve_nested(&self, py: Python<'_>, job: Job) -> Option<Job> {
        if matches!(
            job.request,
            Request::Cancel(_) | Request::Stream(_) | Request::HostDone { .. }
        ) {
            // Signals to the worker, not commands: they wait for it.
            return Some(job);
        }
        let Job { request, reply, .. } = job;
        if reply.is_abandoned() {
            return None;
        }
        if self.interrupted.load(Ordering::SeqCst) {
            // The command that called the host function is past its limit:
            // what the host function sends now is refused, so that one
            // that retries in a loop ends too.
            reply.send(Err(PyRunnerError::python(
                "RunnerTimeout",
                "the command that called the host function ran past its limit",
            )));
            return None;
        }
        let answer = match self.namespace.bind(py) {
            Ok(ns) => nested_reply(&ns, request),
            Err(err) => Err(PyRunnerError::python(
                "RuntimeError",
                format!("the runner's namespace could not be used: {err}"),
            )),
        };
        reply.send(answer);
        None
    }
}

/// The answer of a nested command.
fn nested_reply(ns: &Namespace<'_>, request: Request) -> Reply {
    let unsupported = |what: &str| {
        Err(PyRunnerError::Unsupported(format!(
            "{what} from inside a sync host function: the runner's thread \
             is busy with the command that called the host function (use an \
             async host function, whose commands queue as usual)"
        )))
    };
    match request {
        Request::Invoke(invoke) => {
            if invoke.stream.is_some() {
                return unsupported("a stream");
            }
            let call = || {
                let (result, _spent) = ns.call_invoked(&invoke)?;
                match result_kind(&result) {
                    ResultKind::Value => ns.read_result(&result, invoke.returns),
                    ResultKind::Generator(kind) => Err(PyRunnerError::Conversion(format!(
                        "{} returned {kind}; read its items with .stream()",
                        invoke.name
                    ))),
                    ResultKind::Awaitable => {
                        // Never awaited: closed (or cancelled), so that
                        // Python does not warn of it.
                        let end = if result.hasattr(intern!(ns.py, "cancel")).unwrap_or(false) {
                            intern!(ns.py, "cancel")
                        } else {
                            intern!(ns.py, "close")
                        };
                        let _ = result.call_method0(end);
                        unsupported("awaiting a call")
                    }
                }
            };
            if invoke.capture {
                ns.captured(&ns.output_router()?, call)
            } else {
                call()
            }
        }
        Request::CallAsyncFunction { .. } => unsupported("call_async_function"),
        Request::Stop => unsupported("stop"),
        request => ns.run_request(request),
    }
}

/// A host function's name as a native function's: one `CStr` per distinct
/// name for the life of the process (pyo3 wants `'static`), so that
/// `repr()` and tracebacks show it.
fn static_name(name: &str) -> &'static CStr {
    static NAMES: OnceLock<Mutex<HashMap<String, &'static CStr>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    // A host function's name is an identifier: it holds no NUL.
    let Ok(owned) = CString::new(name) else {
        return c"async_py_host_function";
    };
    let leaked: &'static CStr = Box::leak(owned.into_boxed_c_str());
    names.insert(name.to_owned(), leaked);
    leaked
}
