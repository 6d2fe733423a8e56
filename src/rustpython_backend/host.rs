//! Host functions on the RustPython backend: `async_py.host.NAME(...)`.
//!
//! Each runner's interpreter gets the module `async_py` of
//! `python/host.py`, with one Python object per host function. A sync one
//! is a callable whose call runs the Rust function right there, on the
//! thread that called (the runner's own, unless Python code started a
//! thread), while Python waits. On the runner's thread a command the host
//! function sends to its runner is a nested command: the worker's nesting
//! scope (opened around its whole loop, see `spawn`) hands it to
//! [`take_nested`], which runs it at once, under the limit of the command
//! that called the host function (a nested command's own limit is not
//! applied apart from it); once that limit has passed, nested commands are
//! refused with `Timeout`, so that a host function that retries ends.
//!
//! The runner runs no event loop of its own, but Python code may run one
//! (`asyncio.run(...)` inside a command, or on a thread of its own); an
//! async host function is a coroutine function awaited there. Its future
//! runs on the host runtime, whose threads must not touch the interpreter:
//! when it finishes, the result is put aside and a byte is written to a
//! socket that the awaiting loop watches; the loop then calls [`HostDrain`],
//! which settles the Python futures of that loop there, and hands those of
//! another open loop to it with `call_soon_threadsafe`. Loops on the
//! runner's thread and loops on other threads watch sockets of their own,
//! so that a loop on another thread never takes the wake-up of the
//! runner's.
//!
//! A command the future of a call awaited on the runner's thread sends to
//! its runner (busy running that loop) goes the same way: the future, the
//! part of the function that makes it included, is polled in a nesting
//! scope that puts the command in the [`Inbox`], and the drain of the
//! runner's loop runs it as a nested command. Commands from tasks or
//! threads the host function starts itself are not nested: they queue
//! behind the command that awaits the host function. Neither is a command
//! of a call awaited by a loop on another thread; those queue as usual,
//! and the runner serves them between its commands. A nested command of a
//! call that ended (cancelled, past its limit, or the runner stopped) is
//! answered `Stopped` at once.
//!
//! Past a command's limit (and at stop), every async host call still
//! awaited is dropped, and its Python future fails with `HostError`, so
//! that a loop kept from one command to the next does not await it
//! forever.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::ThreadId;

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
use crate::error::PyRunnerError;
use crate::host::{AsyncFn, HostCall, HostFn, HostResult, HostSetup, HostTask, SyncFn};

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
    /// The runner's thread: only a call awaited there nests its commands.
    runner_thread: ThreadId,
    table_form: PyObjectRef,
    host_error: PyTypeRef,
    settle_host: PyObjectRef,
    host_wake_on: PyObjectRef,
    /// Made only for a runner with async host functions.
    wake: Option<Wake>,
}

/// The async host functions' side of the loops that await them.
struct Wake {
    inbox: Arc<Inbox>,
    /// The end that loops on the runner's thread read (`host_wake_on`).
    runner_reader: UnixStream,
    /// The end that loops on other threads read.
    others_reader: UnixStream,
    /// The calls started and not yet settled, by token.
    pending: Mutex<HashMap<u64, Pending>>,
    next_token: AtomicU64,
}

/// What the host runtime's threads hand the loops, and the sockets that
/// wake them.
pub(super) struct Inbox {
    /// Async host functions that finished, by token.
    results: Mutex<Vec<(u64, HostResult)>>,
    /// Commands async host functions sent to their runner (nested).
    nested: Mutex<Nested>,
    /// Wakes the loops on the runner's thread.
    runner_writer: UnixStream,
    /// Wakes the loops on other threads.
    others_writer: UnixStream,
}

/// The nested commands waiting for the runner's loop to run them.
#[derive(Default)]
struct Nested {
    /// Each with the liveness of the call that sent it.
    jobs: VecDeque<(Arc<AtomicBool>, Job)>,
    /// Set when the runner stops: nothing is taken in any more.
    closed: bool,
}

struct Pending {
    future: PyObjectRef,
    /// The loop that awaits `future`.
    event_loop: PyObjectRef,
    /// Cleared when the call ends (settled, cancelled, or dropped): its
    /// nested commands are then answered `Stopped`.
    live: Arc<AtomicBool>,
    /// `None` until `start_async` returns.
    task: Option<HostTask>,
}

impl Pending {
    /// The call is over: its task is aborted and its commands refused.
    fn end(&self) {
        self.live.store(false, Ordering::SeqCst);
        if let Some(task) = &self.task {
            task.abort();
        }
    }
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
    /// command ran past its limit, or the runner stops), and fails its
    /// Python future with `HostError(why)`. On the runner's thread, while
    /// it runs no loop.
    pub fn drop_pending(&self, vm: &VirtualMachine, why: &str) {
        if let Some(shared) = &self.shared {
            shared.drop_pending(vm, why);
        }
    }

    /// What wakes a loop on the runner's thread that awaits this runner's
    /// async host functions (`None` if it has none): a limit that passes
    /// wakes it too, so that its signal is seen.
    pub fn loop_wake(&self) -> Option<Arc<Inbox>> {
        let shared = self.shared.as_ref()?;
        shared.wake.as_ref().map(|wake| wake.inbox.clone())
    }

    /// The runner is stopping: async host functions are dropped, their
    /// commands from now on answered `Stopped`, and `async_py.host` loses
    /// its functions, so that the Rust functions (and what they hold) are
    /// released with the Python objects.
    pub fn shut_down(&self, vm: &VirtualMachine) {
        if let Some(wake) = self.shared.as_ref().and_then(|shared| shared.wake.as_ref()) {
            lock(&wake.inbox.nested).closed = true;
        }
        self.drop_pending(vm, "the runner stopped");
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
            runner_thread: std::thread::current().id(),
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

impl Shared {
    /// See [`Port::drop_pending`].
    fn drop_pending(&self, vm: &VirtualMachine, why: &str) {
        let Some(wake) = &self.wake else { return };
        let pending: Vec<Pending> = lock(&wake.pending).drain().map(|(_, call)| call).collect();
        for call in &pending {
            call.end();
        }
        // Their callers are told `Stopped` (the calls are no longer live, so
        // nothing more is taken in for them).
        let nested = std::mem::take(&mut lock(&wake.inbox.nested).jobs);
        drop(nested);
        lock(&wake.inbox.results).clear();
        // Past the locks: failing a future runs Python code.
        for call in pending {
            let message: PyObjectRef = vm.ctx.new_str(why).into();
            let settled = self.settle_elsewhere(vm, &call, false, message);
            if let Err(err) = settled {
                vm.run_unraisable(err, Some("failing an async host call".into()), call.future);
            }
        }
    }

    /// Settles `call`'s future from a thread that does not run its loop:
    /// handed to that loop with `call_soon_threadsafe` (settled when the
    /// loop next runs, if it does not now), not at all once it is closed.
    fn settle_elsewhere(
        &self,
        vm: &VirtualMachine,
        call: &Pending,
        ok: bool,
        value: PyObjectRef,
    ) -> PyResult<()> {
        let event_loop = &call.event_loop;
        if vm
            .call_method(event_loop, "is_closed", ())?
            .try_to_bool(vm)?
        {
            return Ok(());
        }
        let args = (self.settle_host.clone(), call.future.clone(), ok, value);
        vm.call_method(event_loop, "call_soon_threadsafe", args)
            .map(drop)
    }
}

/// A socket pair whose reading end a loop watches.
fn wake_pair() -> std::io::Result<(UnixStream, UnixStream)> {
    let (reader, writer) = UnixStream::pair()?;
    reader.set_nonblocking(true)?;
    writer.set_nonblocking(true)?;
    Ok((reader, writer))
}

impl Wake {
    fn new() -> std::io::Result<Wake> {
        let (runner_reader, runner_writer) = wake_pair()?;
        let (others_reader, others_writer) = wake_pair()?;
        Ok(Wake {
            inbox: Arc::new(Inbox {
                results: Mutex::default(),
                nested: Mutex::default(),
                runner_writer,
                others_writer,
            }),
            runner_reader,
            others_reader,
            pending: Mutex::default(),
            next_token: AtomicU64::new(1),
        })
    }

    fn reader(&self, on_runner_thread: bool) -> &UnixStream {
        if on_runner_thread {
            &self.runner_reader
        } else {
            &self.others_reader
        }
    }
}

impl Inbox {
    /// Wakes the loops on the runner's thread (from any thread).
    pub fn wake(&self) {
        Inbox::write_wake(&self.runner_writer);
    }

    fn write_wake(mut writer: &UnixStream) {
        // A full socket already holds a wake-up the loop has not read.
        let _ = writer.write(&[1]);
    }

    /// On a host runtime thread: an async host function's result, for a
    /// loop on the runner's thread or on another.
    fn put(&self, token: u64, result: HostResult, on_runner_thread: bool) {
        lock(&self.results).push((token, result));
        if on_runner_thread {
            self.wake();
        } else {
            Inbox::write_wake(&self.others_writer);
        }
    }

    /// On a host runtime thread: a command an async host function sent to
    /// its runner, which is busy running the loop that awaits it. A call
    /// that ended, or a runner that stopped, takes no more: the command is
    /// answered `Stopped`.
    fn nest(&self, live: &Arc<AtomicBool>, job: Job) {
        let mut nested = lock(&self.nested);
        // Looked at under the lock that `drop_pending` and `HostCancel`
        // empty the queue under, after they clear `live`.
        if nested.closed || !live.load(Ordering::SeqCst) {
            drop(nested);
            job.reply.send(Err(PyRunnerError::Stopped));
            return;
        }
        nested.jobs.push_back((live.clone(), job));
        drop(nested);
        self.wake();
    }

    /// The next nested command of a call still live; those of calls that
    /// ended are answered `Stopped` on the way.
    fn next_nested(&self) -> Option<Job> {
        loop {
            let (live, job) = lock(&self.nested).jobs.pop_front()?;
            if live.load(Ordering::SeqCst) && !job.reply.is_abandoned() {
                return Some(job);
            }
            job.reply.send(Err(PyRunnerError::Stopped));
        }
    }

    /// Answers `Stopped` to the nested commands of one call that ended.
    fn refuse_nested_of(&self, live: &Arc<AtomicBool>) {
        let mut nested = lock(&self.nested);
        let (dead, kept) = std::mem::take(&mut nested.jobs)
            .into_iter()
            .partition(|(of, _)| Arc::ptr_eq(of, live));
        nested.jobs = kept;
        drop(nested);
        let dead: VecDeque<_> = dead;
        for (_, job) in dead {
            job.reply.send(Err(PyRunnerError::Stopped));
        }
    }
}

/// An async host function's future, polled with a nesting scope open on
/// the host runtime's thread: the commands it sends to its runner (whose
/// thread runs the loop that awaits it, inside a command) go to the
/// [`Inbox`], and the loop's `drain` runs them. The future is made on the
/// first poll, in that scope too: the part of the function that makes it
/// may send commands and wait for them.
struct NestedOnLoop {
    making: Option<(Arc<AsyncFn>, HostCall)>,
    future: Option<Pin<Box<dyn Future<Output = HostResult> + Send>>>,
    queue: Arc<CommandQueue>,
    inbox: Arc<Inbox>,
    live: Arc<AtomicBool>,
}

impl Future for NestedOnLoop {
    type Output = HostResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HostResult> {
        let this = self.get_mut();
        let (inbox, live) = (&this.inbox, &this.live);
        let take = |job| {
            inbox.nest(live, job);
            None
        };
        let (making, future) = (&mut this.making, &mut this.future);
        crate::host::nest::within(&this.queue, &take, || {
            if future.is_none() {
                // Gone only if making the future panicked, after which the
                // task is not polled again.
                let Some((function, call)) = making.take() else {
                    return Poll::Ready(Err("the host function's future was not made".into()));
                };
                *future = Some(function(call));
            }
            match future {
                Some(future) => future.as_mut().poll(cx),
                None => Poll::Pending,
            }
        })
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
        let on_runner_thread = std::thread::current().id() == shared.runner_thread;
        let drain = HostDrain {
            shared: shared.clone(),
            on_runner_thread,
        };
        HostDrain::make_static_type();
        let fd = wake.reader(on_runner_thread).as_raw_fd();
        shared
            .host_wake_on
            .call((event_loop.clone(), fd, drain.into_ref(&vm.ctx)), vm)?;
        let token = wake.next_token.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(AtomicBool::new(true));
        let call = Pending {
            future,
            event_loop,
            live: live.clone(),
            task: None,
        };
        lock(&wake.pending).insert(token, call);
        let function = if on_runner_thread {
            // The runner's thread runs this loop, inside a command: what
            // the function sends to the runner is nested (see the module's
            // docs).
            let (function, queue, inbox) = (
                zelf.function.clone(),
                shared.queue.clone(),
                wake.inbox.clone(),
            );
            let nested_on_loop: Arc<AsyncFn> = Arc::new(
                move |call| -> Pin<Box<dyn Future<Output = HostResult> + Send>> {
                    Box::pin(NestedOnLoop {
                        making: Some((function.clone(), call)),
                        future: None,
                        queue: queue.clone(),
                        inbox: inbox.clone(),
                        live: live.clone(),
                    })
                },
            );
            nested_on_loop
        } else {
            zelf.function.clone()
        };
        let inbox = wake.inbox.clone();
        let task = shared
            .setup
            .start_async(&zelf.name, function, args, kwargs, move |result| {
                inbox.put(token, result, on_runner_thread)
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
            if let Some(call) = &call {
                call.end();
                wake.inbox.refuse_nested_of(&call.live);
            }
            drop(call);
        }
        Ok(vm.ctx.none())
    }
}

/// Called by a loop when its wake socket has bytes (`drain(loop)`):
/// settles the Python futures of the async host functions that finished,
/// and on the runner's thread runs the commands they sent.
#[pyclass(module = "async_py", name = "host_drain")]
#[derive(PyPayload)]
struct HostDrain {
    shared: Arc<Shared>,
    /// It drains the socket of the loops on the runner's thread.
    on_runner_thread: bool,
}

impl std::fmt::Debug for HostDrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("drain of async host functions")
    }
}

#[pyclass(with(Callable))]
impl HostDrain {}

impl Callable for HostDrain {
    type Args = (PyObjectRef,);

    fn call(zelf: &Py<Self>, (running,): Self::Args, vm: &VirtualMachine) -> PyResult {
        let shared = &zelf.shared;
        let Some(wake) = &shared.wake else {
            return Ok(vm.ctx.none());
        };
        let mut bytes = [0u8; 256];
        loop {
            match wake.reader(zelf.on_runner_thread).read(&mut bytes) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // Commands first: the host functions that sent them wait. Only the
        // runner's thread runs them (there, the worker's scope takes them).
        if zelf.on_runner_thread {
            while let Some(job) = wake.inbox.next_nested() {
                let _calling = Calling::enter();
                if let Some(job) = crate::host::nest::route(&shared.queue, job) {
                    let _ = shared.queue.push(job);
                }
            }
        }
        let finished = std::mem::take(&mut *lock(&wake.inbox.results));
        for (token, result) in finished {
            // A call cancelled meanwhile has no future left to settle.
            let Some(call) = lock(&wake.pending).remove(&token) else {
                continue;
            };
            call.end();
            // One future that cannot be settled leaves the others to be.
            if let Err(err) = settle(shared, vm, &call, &running, result) {
                vm.run_unraisable(err, Some("settling an async host call".into()), call.future);
            }
        }
        Ok(vm.ctx.none())
    }
}

/// Settles one finished call's future: here if `running` (the loop that
/// drains) awaits it, else through its own loop.
fn settle(
    shared: &Shared,
    vm: &VirtualMachine,
    call: &Pending,
    running: &PyObject,
    result: HostResult,
) -> PyResult<()> {
    let (ok, value) = match shared.result(vm, result) {
        Ok(value) => (true, value),
        Err(err) => (false, err.as_object().str(vm)?.into()),
    };
    if call.event_loop.is(running) {
        shared
            .settle_host
            .call((call.future.clone(), ok, value), vm)
            .map(drop)
    } else {
        shared.settle_elsewhere(vm, call, ok, value)
    }
}
