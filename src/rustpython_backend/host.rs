//! Host functions on the RustPython backend: `async_py.host.NAME(...)`.
//!
//! Each runner's interpreter gets the module `async_py` of
//! `python/host.py`, with one Python object per host function. A sync one
//! is a callable whose call runs the Rust function right there, on the
//! thread that called (the runner's own, unless Python code started a
//! thread), while Python waits. On the runner's thread a command the host
//! function sends to its runner is a nested command: the worker's nesting
//! scope (opened around its whole loop, see `spawn`) hands it to
//! [`take_nested`], which runs it at once.
//!
//! The runner runs no event loop of its own, but Python code may run one
//! (`asyncio.run(...)` inside a command); an async host function is a
//! coroutine function awaited there. Its future runs on the host runtime,
//! whose threads must not touch the interpreter: when it finishes, the
//! result is put aside and a byte is written to a socket that the awaiting
//! loop watches; the loop then calls [`HostDrain`], which settles the
//! Python futures on the loop's own thread. A command the future sends to
//! its runner (busy running that loop) goes the same way, and the drain
//! runs it as a nested command.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use rustpython_vm::builtins::{PyBaseExceptionRef, PyDict, PyTuple, PyType, PyTypeRef};
use rustpython_vm::class::PyClassImpl;
use rustpython_vm::function::FuncArgs;
use rustpython_vm::types::{Callable, Representable};
use rustpython_vm::{
    pyclass, AsObject, Py, PyObject, PyObjectRef, PyPayload, PyResult, VirtualMachine,
};
use serde_json::{Map, Value};

use super::convert::{to_python, to_value, ToValueError};
use super::{Commands, Helpers};
use crate::command::{CommandQueue, Job};
use crate::host::{AsyncFn, HostFn, HostResult, HostSetup, HostTask, SyncFn};

thread_local! {
    /// How many sync host functions (or drains running an async one's
    /// commands) this thread is inside now: commands to the runner sent
    /// meanwhile are nested.
    static CALLING: Cell<usize> = const { Cell::new(0) };
}

/// The worker's nesting scope: a command sent to the runner from its own
/// thread while a host function runs there is run now (see the module's
/// docs); any other is queued as usual.
pub(super) fn take_nested(commands: &Commands<'_>, job: Job) -> Option<Job> {
    if CALLING.with(Cell::get) == 0 {
        return Some(job);
    }
    commands.run_nested(job);
    None
}

/// Counts a sync host function as running on this thread while held.
struct Calling;

impl Calling {
    fn enter() -> Calling {
        CALLING.with(|calling| calling.set(calling.get() + 1));
        Calling
    }
}

impl Drop for Calling {
    fn drop(&mut self) {
        CALLING.with(|calling| calling.set(calling.get() - 1));
    }
}

/// Functions of `python/host.py`, looked up with the other helpers.
pub(super) struct HostHelpers {
    install_host: PyObjectRef,
    host_coroutine: PyObjectRef,
    settle_host: PyObjectRef,
    host_wake_on: PyObjectRef,
    host_error: PyObjectRef,
}

impl HostHelpers {
    pub fn load(get: &impl Fn(&str) -> Result<PyObjectRef, String>) -> Result<HostHelpers, String> {
        Ok(HostHelpers {
            install_host: get("install_host")?,
            host_coroutine: get("host_coroutine")?,
            settle_host: get("settle_host")?,
            host_wake_on: get("host_wake_on")?,
            host_error: get("HostError")?,
        })
    }
}

/// A runner's host functions, as its worker holds them.
pub(super) struct Port {
    shared: Option<Arc<Shared>>,
    /// `async_py.host`, emptied when the runner stops.
    namespace: PyObjectRef,
}

/// What one runner's host functions share. The Python objects here are
/// only used on threads of the interpreter; the host runtime's threads see
/// only the [`Inbox`].
struct Shared {
    setup: HostSetup,
    queue: Arc<CommandQueue>,
    table_form: PyObjectRef,
    host_error: PyTypeRef,
    settle_host: PyObjectRef,
    host_wake_on: PyObjectRef,
    /// Made only for a runner with async host functions.
    wake: Option<Wake>,
}

/// The async host functions' side of the loop that awaits them.
struct Wake {
    inbox: Arc<Inbox>,
    /// The end the loop reads (`host_wake_on`).
    reader: UnixStream,
    /// The calls started and not yet settled, by token.
    pending: Mutex<HashMap<u64, Pending>>,
    next_token: AtomicU64,
}

/// What the host runtime's threads hand the loop, and the socket that
/// wakes it.
pub(super) struct Inbox {
    /// Async host functions that finished, by token.
    results: Mutex<Vec<(u64, HostResult)>>,
    /// Commands async host functions sent to their runner (nested).
    nested: Mutex<VecDeque<Job>>,
    writer: UnixStream,
}

struct Pending {
    future: PyObjectRef,
    /// `None` until `start_async` returns.
    task: Option<HostTask>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Port {
    /// Installs `async_py` with the runner's host functions (none if
    /// `setup` is `None`).
    pub fn install(
        vm: &VirtualMachine,
        helpers: &Helpers,
        queue: &Arc<CommandQueue>,
        setup: Option<HostSetup>,
    ) -> Result<Port, String> {
        let fail = |err| super::convert::exception_text(vm, &err);
        let functions = vm.ctx.new_dict();
        let shared = match setup {
            Some(setup) => {
                let shared = Arc::new(Shared::new(helpers, queue.clone(), setup)?);
                for (name, function) in shared.setup.table.iter() {
                    let object = shared.python_function(vm, &helpers.host, name, function)?;
                    functions.set_item(&**name, object, vm).map_err(fail)?;
                }
                Some(shared)
            }
            None => None,
        };
        let namespace = helpers
            .host
            .install_host
            .call((functions, false), vm)
            .map_err(fail)?;
        Ok(Port { shared, namespace })
    }

    /// Drops the future of every async host function still awaited (their
    /// command ran past its limit, or the runner stops). Their Python
    /// futures stay pending.
    pub fn drop_pending(&self) {
        if let Some(wake) = self.shared.as_ref().and_then(|shared| shared.wake.as_ref()) {
            wake.drop_pending();
        }
    }

    /// What wakes the loop that awaits this runner's async host functions
    /// (`None` if it has none): a limit that passes wakes it too, so that
    /// its signal is seen.
    pub fn loop_wake(&self) -> Option<Arc<Inbox>> {
        let shared = self.shared.as_ref()?;
        shared.wake.as_ref().map(|wake| wake.inbox.clone())
    }

    /// The runner is stopping: async host functions are dropped, and
    /// `async_py.host` loses its functions, so that the Rust functions (and
    /// what they hold) are released with the Python objects.
    pub fn shut_down(&self) {
        self.drop_pending();
        if let Some(dict) = self.namespace.dict() {
            dict.clear();
        }
    }
}

impl Shared {
    fn new(
        helpers: &Helpers,
        queue: Arc<CommandQueue>,
        setup: HostSetup,
    ) -> Result<Shared, String> {
        let host_error = helpers
            .host
            .host_error
            .clone()
            .downcast::<PyType>()
            .map_err(|_| "HostError is not a class".to_owned())?;
        let any_async = setup.table.iter().any(|(_, function)| function.is_async());
        let wake = if any_async {
            Some(Wake::new().map_err(|err| {
                format!("could not make the socket async host functions wake the loop by: {err}")
            })?)
        } else {
            None
        };
        Ok(Shared {
            setup,
            queue,
            table_form: helpers.table_form.clone(),
            host_error,
            settle_host: helpers.host.settle_host.clone(),
            host_wake_on: helpers.host.host_wake_on.clone(),
            wake,
        })
    }

    /// The Python object of one host function: a [`HostFunction`], or the
    /// coroutine function `host_coroutine` makes around a [`HostStart`].
    fn python_function(
        self: &Arc<Self>,
        vm: &VirtualMachine,
        host: &HostHelpers,
        name: &Arc<str>,
        function: &HostFn,
    ) -> Result<PyObjectRef, String> {
        let shared = self.clone();
        match function {
            HostFn::Sync(function) => {
                HostFunction::make_static_type();
                let function = HostFunction {
                    name: name.clone(),
                    function: function.clone(),
                    shared,
                };
                Ok(function.into_ref(&vm.ctx).into())
            }
            HostFn::Async(function) => {
                HostStart::make_static_type();
                HostCancel::make_static_type();
                let start = HostStart {
                    name: name.clone(),
                    function: function.clone(),
                    shared: shared.clone(),
                };
                let cancel = HostCancel { shared };
                let args = (
                    vm.ctx.new_str(&**name),
                    start.into_ref(&vm.ctx),
                    cancel.into_ref(&vm.ctx),
                );
                host.host_coroutine
                    .call(args, vm)
                    .map_err(|err| super::convert::exception_text(vm, &err))
            }
        }
    }

    /// `HostError(message)`.
    fn error(&self, vm: &VirtualMachine, message: String) -> PyBaseExceptionRef {
        let message = vm.ctx.new_str(message).into();
        match vm.invoke_exception(self.host_error.clone(), vec![message]) {
            Ok(err) | Err(err) => err,
        }
    }

    /// Python arguments as the value table reads them; one that does not
    /// fit raises `HostError` naming it.
    fn arguments<'a>(
        &self,
        vm: &VirtualMachine,
        name: &str,
        args: &[PyObjectRef],
        kwargs: impl Iterator<Item = (&'a str, &'a PyObject)>,
    ) -> PyResult<(Vec<Value>, Map<String, Value>)> {
        let read = |what: &dyn std::fmt::Display, obj: &PyObject| {
            to_value(vm, obj, &self.table_form).map_err(|err| match err {
                ToValueError::Python(err) => err,
                ToValueError::Conversion(why) => {
                    self.error(vm, format!("{name}() argument {what}: {why}"))
                }
            })
        };
        let positional = args
            .iter()
            .enumerate()
            .map(|(index, arg)| read(&index, arg))
            .collect::<PyResult<Vec<_>>>()?;
        let mut keywords = Map::new();
        for (key, arg) in kwargs {
            let value = read(&format_args!("{key:?}"), arg)?;
            keywords.insert(key.to_owned(), value);
        }
        Ok((positional, keywords))
    }

    /// A host function's result for Python: its value, or `HostError`.
    fn result(&self, vm: &VirtualMachine, result: HostResult) -> PyResult {
        match result {
            Ok(value) => to_python(vm, &value).map_err(|err| self.error(vm, err.to_string())),
            Err(message) => Err(self.error(vm, message)),
        }
    }
}

impl Wake {
    fn new() -> std::io::Result<Wake> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(Wake {
            inbox: Arc::new(Inbox {
                results: Mutex::default(),
                nested: Mutex::default(),
                writer,
            }),
            reader,
            pending: Mutex::default(),
            next_token: AtomicU64::new(1),
        })
    }

    fn drop_pending(&self) {
        let pending: Vec<Pending> = lock(&self.pending).drain().map(|(_, call)| call).collect();
        for call in &pending {
            if let Some(task) = &call.task {
                task.abort();
            }
        }
        // Released past the lock: releasing a future may run Python code.
        drop(pending);
        // Their callers are told `Stopped`.
        let nested = std::mem::take(&mut *lock(&self.inbox.nested));
        drop(nested);
        lock(&self.inbox.results).clear();
    }
}

impl Inbox {
    /// Wakes the loop (from any thread).
    pub fn wake(&self) {
        // A full socket already holds a wake-up the loop has not read.
        let _ = (&self.writer).write(&[1]);
    }

    /// On a host runtime thread: an async host function's result.
    fn put(&self, token: u64, result: HostResult) {
        lock(&self.results).push((token, result));
        self.wake();
    }

    /// On a host runtime thread: a command an async host function sent to
    /// its runner, which is busy running the loop that awaits it.
    fn nest(&self, job: Job) {
        lock(&self.nested).push_back(job);
        self.wake();
    }
}

/// An async host function's future, polled with a nesting scope open on
/// the host runtime's thread: the commands it sends to its runner (whose
/// thread runs the loop that awaits it, inside a command) go to the
/// [`Inbox`], and the loop's `drain` runs them.
struct NestedOnLoop {
    future: Pin<Box<dyn Future<Output = HostResult> + Send>>,
    queue: Arc<CommandQueue>,
    inbox: Arc<Inbox>,
}

impl Future for NestedOnLoop {
    type Output = HostResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HostResult> {
        let this = self.get_mut();
        let inbox = &this.inbox;
        let take = |job| {
            inbox.nest(job);
            None
        };
        let future = &mut this.future;
        crate::host::nest::within(&this.queue, &take, || future.as_mut().poll(cx))
    }
}

/// A sync host function, as Python sees it: calling it runs the Rust
/// function on this thread.
#[pyclass(module = "async_py", name = "host_function")]
#[derive(PyPayload)]
struct HostFunction {
    name: Arc<str>,
    function: Arc<SyncFn>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HostFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host function {}", self.name)
    }
}

#[pyclass(with(Callable, Representable))]
impl HostFunction {
    #[pygetset]
    fn __name__(&self) -> String {
        self.name.to_string()
    }
}

impl Callable for HostFunction {
    type Args = FuncArgs;

    fn call(zelf: &Py<Self>, args: FuncArgs, vm: &VirtualMachine) -> PyResult {
        let shared = &zelf.shared;
        let kwargs = args.kwargs.iter().map(|(k, v)| (k.as_str(), &**v));
        let (args, kwargs) = shared.arguments(vm, &zelf.name, &args.args, kwargs)?;
        let result = {
            let _calling = Calling::enter();
            shared
                .setup
                .call_sync(&zelf.name, &*zelf.function, args, kwargs)
        };
        shared.result(vm, result)
    }
}

impl Representable for HostFunction {
    fn repr_str(zelf: &Py<Self>, _vm: &VirtualMachine) -> PyResult<String> {
        Ok(format!("<async_py host function {}>", zelf.name))
    }
}

/// `start(args, kwargs, future)` of an async host function (see
/// `host_coroutine` in `python/host.py`): starts the Rust future and gives
/// back its token.
#[pyclass(module = "async_py", name = "host_start")]
#[derive(PyPayload)]
struct HostStart {
    name: Arc<str>,
    function: Arc<AsyncFn>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HostStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "start of async host function {}", self.name)
    }
}

#[pyclass(with(Callable))]
impl HostStart {}

impl Callable for HostStart {
    type Args = (PyObjectRef, PyObjectRef, PyObjectRef);

    fn call(zelf: &Py<Self>, (args, kwargs, future): Self::Args, vm: &VirtualMachine) -> PyResult {
        let shared = &zelf.shared;
        let Some(wake) = &shared.wake else {
            return Err(vm.new_runtime_error("this runner has no async host functions"));
        };
        let args = args
            .downcast_ref::<PyTuple>()
            .ok_or_else(|| vm.new_type_error("the arguments are not a tuple"))?;
        let kwargs = kwargs
            .downcast_ref::<PyDict>()
            .ok_or_else(|| vm.new_type_error("the keyword arguments are not a dict"))?;
        let items = kwargs
            .items_vec()
            .into_iter()
            .map(|(key, value)| Ok((key.str(vm)?.to_string_lossy().into_owned(), value)))
            .collect::<PyResult<Vec<(String, PyObjectRef)>>>()?;
        let (args, kwargs) = shared.arguments(
            vm,
            &zelf.name,
            args.as_slice(),
            items.iter().map(|(k, v)| (k.as_str(), &**v)),
        )?;
        // The loop that awaits wakes up when the result is put aside.
        let event_loop = vm.call_method(&future, "get_loop", ())?;
        let drain = HostDrain {
            shared: shared.clone(),
        };
        HostDrain::make_static_type();
        shared.host_wake_on.call(
            (event_loop, wake.reader.as_raw_fd(), drain.into_ref(&vm.ctx)),
            vm,
        )?;
        let token = wake.next_token.fetch_add(1, Ordering::Relaxed);
        lock(&wake.pending).insert(token, Pending { future, task: None });
        let (function, queue, inbox) = (
            zelf.function.clone(),
            shared.queue.clone(),
            wake.inbox.clone(),
        );
        let nested_on_loop: Arc<AsyncFn> = Arc::new(
            move |call| -> Pin<Box<dyn Future<Output = HostResult> + Send>> {
                Box::pin(NestedOnLoop {
                    future: function(call),
                    queue: queue.clone(),
                    inbox: inbox.clone(),
                })
            },
        );
        let inbox = wake.inbox.clone();
        let task =
            shared
                .setup
                .start_async(&zelf.name, nested_on_loop, args, kwargs, move |result| {
                    inbox.put(token, result)
                });
        if let Some(call) = lock(&wake.pending).get_mut(&token) {
            call.task = Some(task);
        }
        Ok(vm.ctx.new_int(token).into())
    }
}

/// `cancel(token)` of async host functions: drops the Rust future of a
/// call whose await was cancelled.
#[pyclass(module = "async_py", name = "host_cancel")]
#[derive(PyPayload)]
struct HostCancel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HostCancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancel of async host functions")
    }
}

#[pyclass(with(Callable))]
impl HostCancel {}

impl Callable for HostCancel {
    type Args = (u64,);

    fn call(zelf: &Py<Self>, (token,): Self::Args, vm: &VirtualMachine) -> PyResult {
        if let Some(wake) = &zelf.shared.wake {
            let call = lock(&wake.pending).remove(&token);
            if let Some(task) = call.as_ref().and_then(|call| call.task.as_ref()) {
                task.abort();
            }
            drop(call);
        }
        Ok(vm.ctx.none())
    }
}

/// Called by the loop when the wake socket has bytes: settles the Python
/// futures of the async host functions that finished.
#[pyclass(module = "async_py", name = "host_drain")]
#[derive(PyPayload)]
struct HostDrain {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HostDrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("drain of async host functions")
    }
}

#[pyclass(with(Callable))]
impl HostDrain {}

impl Callable for HostDrain {
    type Args = ();

    fn call(zelf: &Py<Self>, (): Self::Args, vm: &VirtualMachine) -> PyResult {
        let shared = &zelf.shared;
        let Some(wake) = &shared.wake else {
            return Ok(vm.ctx.none());
        };
        let mut bytes = [0u8; 256];
        loop {
            match (&wake.reader).read(&mut bytes) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // Commands first: the host functions that sent them wait.
        loop {
            let job = lock(&wake.inbox.nested).pop_front();
            let Some(job) = job else { break };
            let _calling = Calling::enter();
            // Unanswered here only off the runner's thread (a loop Python
            // code runs on a thread of its own): queued as usual.
            if let Some(job) = crate::host::nest::route(&shared.queue, job) {
                let _ = shared.queue.push(job);
            }
        }
        let finished = std::mem::take(&mut *lock(&wake.inbox.results));
        for (token, result) in finished {
            // A call cancelled meanwhile has no future left to settle.
            let Some(call) = lock(&wake.pending).remove(&token) else {
                continue;
            };
            let (ok, value) = match shared.result(vm, result) {
                Ok(value) => (true, value),
                Err(err) => (false, err.as_object().str(vm)?.into()),
            };
            shared.settle_host.call((call.future, ok, value), vm)?;
        }
        Ok(vm.ctx.none())
    }
}
