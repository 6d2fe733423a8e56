//! The RustPython backend: a pure-Rust interpreter in this process, on one
//! dedicated thread per runner, with no libpython anywhere.
//!
//! Each runner has its own interpreter, so runners never share `sys.path` or
//! modules. The helpers of `python/helpers.py` run here too, so code, errors
//! and tracebacks come back as the CPython backends give them. There is no
//! event loop: `call_async_function` is `Unsupported`. A command past its
//! limit is stopped by a user signal that the interpreter checks between
//! bytecodes (see [`Signal`]).

mod convert;
mod host;
mod nesting;
mod output;
mod streams;
mod typed;

use std::cell::{Cell, OnceCell};
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustpython_vm::builtins::{PyBaseExceptionRef, PyDictRef, PyStr, PyTuple, PyType, PyTypeRef};
use rustpython_vm::compiler::Mode;
use rustpython_vm::convert::ToPyObject;
use rustpython_vm::scope::Scope;
use rustpython_vm::signal::{user_signal_channel, UserSignalSender};
use rustpython_vm::{
    Interpreter, InterpreterBuilder, PyObjectRef, PyResult, Settings, VirtualMachine,
};
use serde_json::Value;

use crate::command::{
    path_arg, prepare_in_process, start_backend_thread, Answer, CommandQueue, Invoke, Job, PathArg,
    Reply, Request, Returns, Serve,
};
use crate::config::RunnerConfig;
use crate::error::PyRunnerError;
use crate::tuning::{INTERRUPT_AGAIN, INTERRUPT_AGAIN_AT_MOST, WORKER_SPIN};
use crate::watchdog::{Interrupt, Watchdog};
use convert::{exception_text, to_args, to_value, ToValueError};

/// How a typed call's result is read on this backend (see `Readers` in
/// `crate::command`).
pub(crate) type ReadTyped = fn(
    &VirtualMachine,
    &rustpython_vm::PyObject,
    &rustpython_vm::PyObject,
) -> Result<Box<dyn std::any::Any + Send>, ToValueError>;

/// The [`ReadTyped`] of `T`.
pub(crate) fn read_typed<T>(
    vm: &VirtualMachine,
    obj: &rustpython_vm::PyObject,
    table_form: &rustpython_vm::PyObject,
) -> Result<Box<dyn std::any::Any + Send>, ToValueError>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    typed::from_python::<T>(vm, obj, table_form).map(|value| Box::new(value) as _)
}

/// RustPython's frames are deep native recursion; the interpreter checks the
/// stack it runs on and raises `RecursionError` near its end. The pages are
/// only committed when touched. Not more: RustPython's calls grow slower
/// with the depth of the stack (10 000 levels took 0.09 s, 80 000 took
/// 3.7 s, release build), so a runaway recursion past a lifted limit took a
/// minute to fail on 256 MiB, and about three seconds on this.
const STACK_SIZE: usize = 32 << 20;

/// RustPython's parser and code generator recurse once per level of nesting
/// (brackets, operators, `x if c else …`) with no limit of their own. A
/// source that can nest up to this deep (see [`nesting::nesting_bound`]) is
/// compiled on the runner's thread, half of whose stack holds that many levels; a
/// deeper one on a thread of its own, with [`STACK_PER_LEVEL`] for each
/// level it can reach, so no source overflows a stack. (CPython, on the
/// other backends, refuses such nesting with `SyntaxError` or
/// `RecursionError`.) Measured: up to about 32 KiB a level in a debug build,
/// 1 KiB in a release build.
const INLINE_LEVELS: usize = STACK_SIZE / 2 / STACK_PER_LEVEL;
const STACK_PER_LEVEL: usize = if cfg!(debug_assertions) {
    64 << 10
} else {
    8 << 10
};

/// The filename the helpers are compiled under; their frames are left out
/// of user tracebacks by it.
const HELPERS_FILE: &str = "async_py/worker.py";

/// What a host function's `.stream()` call to its own runner answers.
const NESTED_STREAM: &str = "a stream's items are made between the runner's commands, and a \
     host function's command runs inside the command that called it: start the stream \
     before that command, or from another thread";

/// What a host function's `stop` of its own runner answers.
const NESTED_STOP: &str = "stop waits for the runner's commands to end, among them the one \
     that waits for this host function: stop the runner from outside its host functions";

/// What `call_async_function` answers on this backend.
const NO_COROUTINES: &str = "call_async_function needs an asyncio event loop, which \
     the RustPython backend does not run: use the pyo3 or the subprocess backend for coroutines";

/// RustPython 0.5 keeps one cycle collector for the whole process, and a
/// collection traverses every interpreter's objects while their threads go
/// on: with several runners at work, an automatic collection on one thread
/// met a frame another thread was building and aborted the process. So the
/// collector never runs on its own here (every runner's start disables
/// it), and a runner's thread runs it between commands, past the
/// collector's own threshold, only while no other RustPython runner lives.
/// `LIVE` counts the runners; `GATE` keeps a new interpreter from being made
/// while such a collection runs.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static GATE: Mutex<()> = Mutex::new(());

fn gate() -> std::sync::MutexGuard<'static, ()> {
    GATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a runner as live for as long as it is held.
struct Live;

impl Live {
    fn new() -> Live {
        let _gate = gate();
        rustpython_vm::gc_state::gc_state().disable();
        LIVE.fetch_add(1, Ordering::SeqCst);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Between commands: collects cycles if the collector's threshold is past
/// and this is the only RustPython runner.
fn collect_if_alone() {
    // With others alive nobody collects, so the count stays past the
    // threshold: look at `LIVE` first, without the gate (it only grows under
    // the gate, and is looked at again there).
    if LIVE.load(Ordering::Relaxed) != 1 {
        return;
    }
    let collector = rustpython_vm::gc_state::gc_state();
    if collector.get_count().0 < collector.get_threshold().0 as usize {
        return;
    }
    let _gate = gate();
    if LIVE.load(Ordering::SeqCst) == 1 {
        collector.collect_force(0);
    }
}

/// Starts the interpreter thread for a runner and waits until it is ready.
pub(crate) fn spawn(config: &RunnerConfig, queue: Arc<CommandQueue>) -> Result<(), PyRunnerError> {
    let venv = config.venv.clone();
    let startup = config.startup.clone();
    let output = config.output.clone();
    let host = config.host.clone();
    start_backend_thread("async_py-rustpython", STACK_SIZE, move |ready| {
        queue.set_consumer();
        let _live = Live::new();
        let (signals, signal_rx) = user_signal_channel();
        let interpreter = interpreter(signal_rx);
        interpreter.enter(|vm| {
            let started = Worker::start(
                vm,
                queue.clone(),
                signals,
                venv.as_deref(),
                startup.as_deref(),
                output,
                host,
            );
            match started {
                Ok(mut worker) => {
                    ready.report(Ok(()));
                    // A host function's command to this runner runs here
                    // and then, inside the call that waits for it.
                    let commands = worker.commands.clone();
                    let take = |job| host::take_nested(&commands, job);
                    crate::host::nest::within(&queue, &take, || worker.serve());
                }
                Err(err) => ready.report(Err(err)),
            }
        });
        // Not `finalize`: it runs a full collection of RustPython's
        // process-wide collector, which holds up every other RustPython
        // runner's allocations for as long as it takes (seconds in a debug
        // build, and longer as the process's heap grows).
    })
}

/// An interpreter with RustPython's standard library, native and Python parts.
fn interpreter(signal_rx: rustpython_vm::signal::UserSignalReceiver) -> Interpreter {
    let mut settings = Settings::default();
    // The host process owns its signals; the interpreter must not take SIGINT.
    settings.install_signal_handlers = false;
    // `print` output shows up at once, as with PYTHONUNBUFFERED.
    settings.buffered_stdio = false;
    // No `site`: the folders it would add belong to a CPython install that
    // this interpreter cannot use. `set_venv` adds a venv's packages.
    settings.import_site = false;
    let builder = InterpreterBuilder::new().settings(settings);
    let modules = rustpython_stdlib::stdlib_module_defs(&builder.ctx);
    builder
        .add_native_modules(&modules)
        .add_frozen_modules(rustpython_pylib::FROZEN_STDLIB)
        .init_hook(move |vm| {
            vm.set_user_signal_channel(signal_rx);
            let state = rustpython_vm::common::rc::PyRc::get_mut(&mut vm.state)
                .expect("the interpreter's state is not shared before it starts");
            state.config.paths.stdlib_dir = Some(rustpython_pylib::LIB_PATH.to_owned());
            // The standard library is compiled in; the guessed install
            // folders (under /usr/local) would only shadow it.
            state.config.paths.module_search_paths.clear();
        })
        .build()
}

/// The runner's thread: its queue and what lives from one command to
/// the next. What a plain command needs is in [`Commands`], which the
/// worker shares with its host functions' nested commands; they run while
/// a command of the worker's is on the stack, so they never touch the
/// worker itself.
struct Worker<'vm> {
    commands: Rc<Commands<'vm>>,
    queue: Arc<CommandQueue>,
    signals: UserSignalSender,
    watchdog: Option<Arc<Watchdog<Signal>>>,
    output: output::Output,
    streams: streams::Streams,
    host: host::Port,
}

/// What a plain command (`run`, `eval`, a call, ...) needs: run by the
/// worker, and by a host function's nested command inside it.
struct Commands<'vm> {
    vm: &'vm VirtualMachine,
    globals: PyDictRef,
    helpers: Helpers,
    /// The output router (see `output`), made on first need.
    router: OnceCell<PyObjectRef>,
    /// The limit of the command (or stream item) that runs: a nested
    /// command runs under it, and is told `Timeout` with it when the
    /// limit interrupts it.
    limit: Cell<Option<Duration>>,
}

impl<'vm> Deref for Worker<'vm> {
    type Target = Commands<'vm>;

    fn deref(&self) -> &Commands<'vm> {
        &self.commands
    }
}

/// Functions of the worker's in-process helpers (`python/helpers.py`), looked up once.
struct Helpers {
    run_code: PyObjectRef,
    eval_expr: PyObjectRef,
    run_file: PyObjectRef,
    set_venv: PyObjectRef,
    resolve: PyObjectRef,
    describe_error: PyObjectRef,
    table_form: PyObjectRef,
    abspath: PyObjectRef,
    timeout: PyTypeRef,
    output_router: PyObjectRef,
    host: host::HostHelpers,
}

impl Helpers {
    fn load(vm: &VirtualMachine) -> Result<(Self, PyDictRef), String> {
        let namespace = vm.ctx.new_dict();
        let fail = |err: PyBaseExceptionRef| exception_text(vm, &err);
        namespace
            .set_item("__name__", vm.ctx.new_str("async_py_worker").into(), vm)
            .map_err(fail)?;
        namespace
            .set_item("__file__", vm.ctx.new_str(HELPERS_FILE).into(), vm)
            .map_err(fail)?;
        let code = vm
            .compile(
                crate::worker_source::HELPERS_PY,
                Mode::Exec,
                HELPERS_FILE.to_owned(),
            )
            .map_err(|err| err.to_string())?;
        vm.run_code_obj(code, Scope::with_builtins(None, namespace.clone(), vm))
            .map_err(fail)?;
        let get = |name: &str| namespace.get_item(name, vm).map_err(fail);
        let timeout = get("RunnerTimeout")?
            .downcast::<PyType>()
            .map_err(|_| "RunnerTimeout is not a class".to_owned())?;
        let globals = get("new_globals")?
            .call((), vm)
            .map_err(fail)?
            .downcast::<rustpython_vm::builtins::PyDict>()
            .map_err(|_| "new_globals did not make a dict".to_owned())?;
        let helpers = Helpers {
            run_code: get("run_code")?,
            eval_expr: get("eval_expr")?,
            run_file: get("run_file")?,
            set_venv: get("set_venv")?,
            resolve: get("resolve")?,
            describe_error: get("describe_error")?,
            table_form: get("table_form")?,
            abspath: get("os")?
                .get_attr("path", vm)
                .and_then(|path| path.get_attr("abspath", vm))
                .map_err(fail)?,
            timeout,
            output_router: get("output_router")?,
            host: host::HostHelpers::load(&get)?,
        };
        Ok((helpers, globals))
    }
}

/// Wraps the native `json` parser so that documents nested past the
/// recursion limit are refused instead of overflowing the stack (see the
/// file's own comment).
fn guard_json(vm: &VirtualMachine) -> Result<(), String> {
    const GUARD: &str = include_str!("json_guard.py");
    let code = vm
        .compile(GUARD, Mode::Exec, "async_py/json_guard.py".to_owned())
        .map_err(|err| err.to_string())?;
    let namespace = vm.ctx.new_dict();
    vm.run_code_obj(code, Scope::with_builtins(None, namespace, vm))
        .map(drop)
        .map_err(|err| exception_text(vm, &err))
}

impl<'vm> Worker<'vm> {
    fn start(
        vm: &'vm VirtualMachine,
        queue: Arc<CommandQueue>,
        signals: UserSignalSender,
        venv: Option<&Path>,
        startup: Option<&str>,
        output: Option<crate::output::OutputSink>,
        host: Option<crate::host::HostSetup>,
    ) -> Result<Self, PyRunnerError> {
        // Before anything can import `json` and take the unguarded parser.
        guard_json(vm).map_err(|err| {
            PyRunnerError::Startup(format!("could not guard the json parser: {err}"))
        })?;
        let (helpers, globals) = Helpers::load(vm).map_err(|err| {
            PyRunnerError::Startup(format!("could not load the worker helpers: {err}"))
        })?;
        let host = host::Port::install(vm, &helpers, &queue, host).map_err(|err| {
            PyRunnerError::Startup(format!("could not install the async_py module: {err}"))
        })?;
        let mut worker = Worker {
            commands: Rc::new(Commands {
                vm,
                globals,
                helpers,
                router: OnceCell::new(),
                limit: Cell::new(None),
            }),
            queue,
            signals,
            watchdog: None,
            output: output::Output::default(),
            streams: streams::Streams::default(),
            host,
        };
        if let Some(sink) = output {
            worker.route_output(sink)?;
        }
        // Startup code may call a host function that sends commands to
        // this runner: they run inside that call, as they do later.
        let commands = worker.commands.clone();
        let take = |job| host::take_nested(&commands, job);
        let queue = worker.queue.clone();
        crate::host::nest::within(&queue, &take, || {
            prepare_in_process(
                venv,
                startup,
                |dir| worker.set_venv(dir).map(drop),
                |code| {
                    worker
                        .run_source(&worker.helpers.run_code, code, Mode::Exec)
                        .map(drop)
                },
            )
        })?;
        Ok(worker)
    }
}

impl Serve for Worker<'_> {
    fn queue(&self) -> &CommandQueue {
        &self.queue
    }

    fn idle(&mut self) {
        if self.streams.have_work() {
            // A stream with room makes items instead of sleeping.
            self.pump_streams();
            collect_if_alone();
            return;
        }
        self.queue.wait(WORKER_SPIN);
    }

    fn after_batch(&mut self) {
        if self.streams.have_work() {
            self.pump_streams();
        }
        collect_if_alone();
    }

    fn shut_down(&mut self) {
        drop(self.queue.close());
        self.stop_streams();
        // Functions in the globals refer back to them: clearing the dict
        // breaks those cycles, so the runner's objects are released now.
        self.globals.clear();
        self.host.shut_down();
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.shutdown();
        }
        self.unroute_output();
    }

    fn execute(&mut self, job: Job) {
        let Job {
            request,
            reply,
            timeout,
            ..
        } = job;
        let request = match request {
            // No coroutine runs here to be cancelled.
            Request::Cancel(_) => return,
            Request::Stream(feed) => return self.stream_signal(&feed),
            // Not sent here: the thread that would take it is inside the
            // command that runs the awaiting loop, so async host functions'
            // results reach that loop through `host::Inbox` instead.
            Request::HostDone { .. } => return,
            Request::Invoke(mut invoke) if invoke.stream.is_some() && !invoke.capture => {
                let feed = invoke.stream.take().expect("checked just before");
                return self.start_stream(invoke, feed, reply, timeout);
            }
            request => request,
        };
        let armed = self.arm(timeout, reply.slot());
        let watchdog = match armed {
            Ok(watchdog) => watchdog,
            Err(err) => return reply.send(Err(err)),
        };
        self.limit.set(timeout);
        // A panic inside the interpreter is a bug of RustPython's; it fails
        // this command and the runner goes on.
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_request(request)))
            .unwrap_or_else(|panic| Err(panicked(panic)));
        if let Some(watchdog) = watchdog {
            watchdog.disarm();
        }
        self.limit.set(None);
        // Past its limit, the command's async host functions are dropped
        // (the loop that awaited them was interrupted).
        if reply.slot().is_ready() {
            self.host.drop_pending();
        }
        self.end_output_lines();
        reply.send(outcome);
    }
}

impl Commands<'_> {
    fn run_request(&self, request: Request) -> Reply {
        let vm = self.vm;
        match request {
            Request::Run { code } | Request::Broadcast { code, .. } => self
                .run_source(&self.helpers.run_code, &code, Mode::Exec)
                .map(|_| Answer::Value(Value::Null)),
            Request::RunFile { path } => self.run_file(&path).map(|_| Answer::Value(Value::Null)),
            Request::Eval { expr } => {
                let result = self.run_source(&self.helpers.eval_expr, &expr, Mode::Eval)?;
                self.to_value(&result)
            }
            Request::ReadVariable { name } => {
                let value = self.resolve(&name)?;
                self.to_value(&value)
            }
            Request::CallFunction { name, args } => {
                let function = self.resolve(&name)?;
                let args = to_args(vm, &args)?;
                let result = self.python(function.call(args, vm))?;
                self.to_value(&result)
            }
            Request::CallAsyncFunction { .. } => {
                Err(PyRunnerError::Unsupported(NO_COROUTINES.into()))
            }
            Request::SetVenv { dir } => self.set_venv(&dir),
            Request::Invoke(invoke) if invoke.capture => self.captured(|| self.invoke(&invoke)),
            Request::RunCaptured { code } => self.run_captured(&code),
            Request::Invoke(invoke) => self.invoke(&invoke),
            Request::Stop | Request::Cancel(_) | Request::Stream(_) | Request::HostDone { .. } => {
                unreachable!("handled by serve and execute")
            }
        }
    }

    /// A host function's command to this runner (see `host::take_nested`),
    /// run now, under the limit of the command that called the host
    /// function. Streams and `stop` need the worker, which waits.
    fn run_nested(&self, job: Job) {
        let Job { request, reply, .. } = job;
        let outcome = match request {
            Request::Invoke(invoke) if invoke.stream.is_some() && !invoke.capture => {
                Err(PyRunnerError::Unsupported(NESTED_STREAM.into()))
            }
            Request::Stop => Err(PyRunnerError::Unsupported(NESTED_STOP.into())),
            // Sent by no caller that waits (see `Request`): nothing to run.
            Request::Cancel(_) | Request::Stream(_) | Request::HostDone { .. } => return,
            request => catch_unwind(AssertUnwindSafe(|| self.run_request(request)))
                .unwrap_or_else(|panic| Err(panicked(panic))),
        };
        let outcome = match outcome {
            // The limit of the command that waits interrupted this one.
            Err(PyRunnerError::Python { kind, .. }) if kind == "RunnerTimeout" => {
                Err(PyRunnerError::Timeout(self.limit.get().unwrap_or_default()))
            }
            outcome => outcome,
        };
        reply.send(outcome);
    }
}

impl Worker<'_> {
    /// Arms the watchdog for a command (or a stream's item) with a limit:
    /// at the deadline it answers `clock` with `Timeout` and signals the
    /// interpreter.
    fn arm(
        &mut self,
        timeout: Option<Duration>,
        clock: &Arc<crate::command::ReplySlot>,
    ) -> Result<Option<Arc<Watchdog<Signal>>>, PyRunnerError> {
        let mut watchdog = self.watchdog.take();
        let armed = crate::watchdog::arm(&mut watchdog, timeout, clock, || {
            Ok(Signal {
                sender: self.signals.clone(),
                exception: self.helpers.timeout.clone(),
                again: std::sync::Mutex::new((0, INTERRUPT_AGAIN)),
                loop_wake: self.host.loop_wake(),
            })
        });
        self.watchdog = watchdog;
        armed
    }
}

impl Commands<'_> {
    /// Calls the function an invoke names with its arguments.
    fn call_invoked(&self, invoke: &Invoke) -> Result<PyObjectRef, PyRunnerError> {
        use rustpython_vm::function::{FuncArgs, KwArgs};
        let vm = self.vm;
        let function = self.resolve(&invoke.name)?;
        let args = typed::args_to_python(vm, &invoke.args)?;
        let kwargs: KwArgs = typed::kwargs_to_python(vm, &invoke.kwargs)?
            .into_iter()
            .collect();
        self.python(function.call(FuncArgs::new(args, kwargs), vm))
    }

    /// A call of the call builder. There is no event loop here: a function
    /// that returns an awaitable is `Unsupported`.
    fn invoke(&self, invoke: &Invoke) -> Reply {
        use rustpython_vm::builtins::{PyAsyncGen, PyCoroutine, PyGenerator};
        let vm = self.vm;
        let result = self.call_invoked(invoke)?;
        let generator = if result.downcast_ref::<PyGenerator>().is_some() {
            Some("a generator")
        } else if result.downcast_ref::<PyAsyncGen>().is_some() {
            Some("an async generator")
        } else {
            None
        };
        if let Some(kind) = generator {
            return Err(PyRunnerError::Conversion(format!(
                "{} returned {kind}; read its items with .stream()",
                invoke.name
            )));
        }
        let awaitable = result.downcast_ref::<PyCoroutine>().is_some()
            || result
                .class()
                .get_attr(vm.ctx.intern_str("__await__"))
                .is_some();
        if awaitable {
            return Err(PyRunnerError::Unsupported(format!(
                "{} returned an awaitable, and the RustPython backend runs no event loop \
                 to await it: use the pyo3 or the subprocess backend for coroutines",
                invoke.name
            )));
        }
        self.read_result(&result, invoke.returns)
    }

    /// A result, read as the call asked.
    fn read_result(&self, obj: &PyObjectRef, returns: Returns) -> Reply {
        let Returns::Typed(readers) = returns else {
            return self.to_value(obj);
        };
        (readers.rustpython)(self.vm, obj, &self.helpers.table_form)
            .map(Answer::Typed)
            .map_err(|err| match err {
                ToValueError::Python(err) => self.exception_error(&err),
                ToValueError::Conversion(why) => PyRunnerError::Conversion(why),
            })
    }

    /// `run_code` or `eval_expr` of the helpers, on `source`.
    fn run_source(
        &self,
        helper: &PyObjectRef,
        source: &str,
        mode: Mode,
    ) -> Result<PyObjectRef, PyRunnerError> {
        let code = self.compiled(source, mode, "<string>")?;
        self.python(helper.call((code, self.globals.clone()), self.vm))
    }

    fn run_file(&self, file: &Path) -> Result<PyObjectRef, PyRunnerError> {
        let vm = self.vm;
        let path = path_object(vm, file);
        let mut args = vec![path.clone(), self.globals.clone().into()];
        // A file that cannot be read as text is left to the helper, which
        // raises what Python raises for it.
        if let Ok(source) = std::fs::read_to_string(file) {
            let levels = nesting::nesting_bound(&source);
            if levels > INLINE_LEVELS && !source.contains('\0') {
                let absolute = self.python(self.helpers.abspath.call((path,), vm))?;
                let filename = text_of(&absolute).unwrap_or_default();
                args.push(self.compile_deep(&source, levels, Mode::Exec, &filename)?);
            }
        }
        self.python(self.helpers.run_file.call(args, vm))
    }

    /// `source` as the helpers take it: the text itself when it cannot nest
    /// deeply (the helper compiles it), else a code object compiled on a
    /// thread with room for any nesting it can hold (see [`INLINE_LEVELS`]).
    fn compiled(
        &self,
        source: &str,
        mode: Mode,
        filename: &str,
    ) -> Result<PyObjectRef, PyRunnerError> {
        let vm = self.vm;
        let levels = nesting::nesting_bound(source);
        if levels <= INLINE_LEVELS || source.contains('\0') {
            return Ok(vm.ctx.new_str(source).into());
        }
        self.compile_deep(source, levels, mode, filename)
    }

    /// Compiles a source that can nest `levels` deep on a thread with room
    /// for that many levels.
    fn compile_deep(
        &self,
        source: &str,
        levels: usize,
        mode: Mode,
        filename: &str,
    ) -> Result<PyObjectRef, PyRunnerError> {
        let vm = self.vm;
        let opts = vm.compile_opts();
        let stack = levels.saturating_mul(STACK_PER_LEVEL).max(STACK_SIZE);
        let outcome = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("async_py-compile".into())
                .stack_size(stack)
                .spawn_scoped(scope, || {
                    rustpython_vm::compiler::compile(source, mode, filename, opts)
                })
                .map(|compiling| compiling.join())
        });
        match outcome {
            Ok(Ok(Ok(code))) => Ok(vm.ctx.new_code(code).into()),
            Ok(Ok(Err(err))) => Err(self.exception_error(&vm.new_syntax_error(&err, Some(source)))),
            Ok(Err(panic)) => Err(panicked(panic)),
            Err(err) => Err(PyRunnerError::python(
                "MemoryError",
                format!(
                    "no {stack}-byte stack to compile {} bytes of source on: {err}",
                    source.len()
                ),
            )),
        }
    }

    fn set_venv(&self, dir: &Path) -> Reply {
        let vm = self.vm;
        let dir = path_object(vm, dir);
        self.python(self.helpers.set_venv.call((dir,), vm))
            .map(|_| Answer::Value(Value::Null))
    }

    fn resolve(&self, name: &str) -> Result<PyObjectRef, PyRunnerError> {
        let vm = self.vm;
        let args = (vm.ctx.new_str(name), self.globals.clone());
        self.python(self.helpers.resolve.call(args, vm))
    }

    fn to_value(&self, obj: &PyObjectRef) -> Reply {
        to_value(self.vm, obj, &self.helpers.table_form)
            .map(Answer::Value)
            .map_err(|err| match err {
                ToValueError::Python(err) => self.exception_error(&err),
                ToValueError::Conversion(why) => PyRunnerError::Conversion(why),
            })
    }

    fn python(&self, result: PyResult) -> Result<PyObjectRef, PyRunnerError> {
        result.map_err(|err| self.exception_error(&err))
    }

    fn exception_error(&self, exception: &PyBaseExceptionRef) -> PyRunnerError {
        let vm = self.vm;
        let described = self
            .helpers
            .describe_error
            .call((exception.clone().to_pyobject(vm),), vm)
            .ok()
            .and_then(|d| d.downcast::<PyTuple>().ok())
            .and_then(|d| match d.as_slice() {
                [kind, message, traceback] => {
                    Some((text_of(kind)?, text_of(message)?, text_of(traceback)))
                }
                _ => None,
            });
        match described {
            Some((kind, message, traceback)) => PyRunnerError::Python {
                kind,
                message,
                traceback,
            },
            None => PyRunnerError::python("Exception", "an exception that could not be described"),
        }
    }
}

/// A path for the helpers (see [`PathArg`]).
fn path_object(vm: &VirtualMachine, path: &Path) -> PyObjectRef {
    match path_arg(path) {
        PathArg::Text(text) => vm.ctx.new_str(text).into(),
        PathArg::Bytes(bytes) => vm.ctx.new_bytes(bytes.into_owned()).into(),
    }
}

/// The text of a `str` (None for anything else).
fn text_of(obj: &PyObjectRef) -> Option<String> {
    obj.downcast_ref::<PyStr>()
        .and_then(|s| s.to_str())
        .map(str::to_owned)
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> PyRunnerError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    PyRunnerError::WorkerDied {
        reason: format!("the RustPython interpreter panicked: {what}"),
    }
}

/// Stops a command past its limit: a user signal, run by the interpreter
/// between bytecodes, raises `RunnerTimeout` if that command still runs.
///
/// RustPython keeps one "a signal is pending" flag for the whole process, and
/// another runner's interpreter may clear it first; so the signal is sent
/// again until the command ends, after 5 ms, then twice as long each time.
struct Signal {
    sender: UserSignalSender,
    exception: PyTypeRef,
    /// The command last interrupted, and the pause before its next signal.
    again: std::sync::Mutex<(u64, Duration)>,
    /// A loop that Python code runs and that awaits an async host function
    /// may be asleep in `select`, where no signal is seen: woken too.
    loop_wake: Option<Arc<host::Inbox>>,
}

impl Interrupt for Signal {
    fn interrupt(&self, running: &Arc<AtomicU64>, seq: u64) -> Option<Duration> {
        if running.load(Ordering::SeqCst) != seq {
            return None;
        }
        let running = running.clone();
        let exception = self.exception.clone();
        let sent = self.sender.send(Box::new(move |vm: &VirtualMachine| {
            if running.load(Ordering::SeqCst) == seq {
                Err(vm.new_exception_empty(exception))
            } else {
                Ok(())
            }
        }));
        if sent.is_err() {
            return None;
        }
        if let Some(loop_wake) = &self.loop_wake {
            loop_wake.wake();
        }
        let mut again = self.again.lock().unwrap_or_else(|p| p.into_inner());
        let pause = if again.0 == seq {
            (again.1 * 2).min(INTERRUPT_AGAIN_AT_MOST)
        } else {
            INTERRUPT_AGAIN
        };
        *again = (seq, pause);
        Some(pause)
    }
}
