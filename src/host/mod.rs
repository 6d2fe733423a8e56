//! Host functions: Rust functions that Python calls, as
//! `import async_py; async_py.host.NAME(*args, **kwargs)`.
//!
//! The builder collects them in a [`HostTable`]; every backend is given the
//! table and a [`RunnerLink`] (through `RunnerConfig::host`) and exposes each
//! name to Python its own way. What is shared lives here: calling a sync
//! function with its panic caught ([`HostSetup::call_sync`]), starting an
//! async one on the crate's own runtime ([`HostSetup::start_async`]), the
//! handle a host function is given ([`HostCall`]), and the rule that lets a
//! host function send commands to the runner that called it while that
//! runner waits for it (`nest`).

pub(crate) mod nest;
mod runtime;

use std::collections::HashMap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::PyRunnerError;
use crate::runner::{PyRunner, WeakRunner};

/// What a host function is given: the arguments Python passed, read by the
/// value table, and the runner that called.
///
/// ```
/// # fn main() -> Result<(), async_py::PyRunnerError> {
/// use async_py::{HostCall, PyRunner, Value};
/// let runner = PyRunner::builder()
///     .host_function("scale", |call: HostCall| {
///         let x: f64 = call.arg(0)?;
///         let by: f64 = call.kwarg("by")?.unwrap_or(2.0);
///         Ok(Value::from(x * by))
///     })
///     .build()?;
/// runner.run_sync("import async_py")?;
/// assert_eq!(runner.eval_sync("async_py.host.scale(1.5, by=4)")?, 6.0);
/// # Ok(()) }
/// ```
pub struct HostCall {
    /// The positional arguments.
    pub args: Vec<Value>,
    /// The keyword arguments.
    pub kwargs: Map<String, Value>,
    name: Arc<str>,
    link: RunnerLink,
    runner: OnceLock<PyRunner>,
}

impl HostCall {
    pub(crate) fn new(
        name: Arc<str>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        link: RunnerLink,
    ) -> HostCall {
        HostCall {
            args,
            kwargs,
            name,
            link,
            runner: OnceLock::new(),
        }
    }

    /// The name Python called this function by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The runner whose Python called (in a pool, that worker's runner).
    /// Commands sent to it from inside the host function run before the
    /// host function returns (see the README, "Python calls Rust"). If every
    /// handle of the runner was dropped meanwhile, its commands return
    /// [`PyRunnerError::Stopped`].
    pub fn runner(&self) -> &PyRunner {
        self.runner.get_or_init(|| self.link.runner())
    }

    /// Positional argument `index`, read into `T` by the value table.
    /// A missing or mistyped argument is an error message naming it, ready
    /// to be returned with `?` (Python sees it as `HostError`).
    pub fn arg<T: DeserializeOwned>(&self, index: usize) -> Result<T, String> {
        let value = self.args.get(index).ok_or_else(|| {
            format!(
                "{}() takes an argument at position {index}, and {} were given",
                self.name,
                self.args.len()
            )
        })?;
        T::deserialize(value).map_err(|err| format!("{}() argument {index}: {err}", self.name))
    }

    /// Keyword argument `name` read into `T`, or `None` if it was not given.
    pub fn kwarg<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, String> {
        self.kwargs
            .get(name)
            .map(|value| {
                T::deserialize(value)
                    .map_err(|err| format!("{}() argument {name:?}: {err}", self.name))
            })
            .transpose()
    }
}

impl std::fmt::Debug for HostCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCall")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("kwargs", &self.kwargs)
            .finish_non_exhaustive()
    }
}

/// What a host function gives back: a value, or a message Python raises
/// as `async_py.HostError`.
pub(crate) type HostResult = Result<Value, String>;

pub(crate) type SyncFn = dyn Fn(HostCall) -> HostResult + Send + Sync;
pub(crate) type AsyncFn =
    dyn Fn(HostCall) -> Pin<Box<dyn Future<Output = HostResult> + Send>> + Send + Sync;

/// One registered function.
#[derive(Clone)]
pub(crate) enum HostFn {
    /// Runs on the thread that takes the call (see each backend).
    Sync(Arc<SyncFn>),
    /// Runs on the crate's host runtime.
    Async(Arc<AsyncFn>),
}

impl HostFn {
    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    pub fn is_async(&self) -> bool {
        matches!(self, HostFn::Async(_))
    }
}

/// The host functions of a builder, by name.
#[derive(Clone, Default)]
pub(crate) struct HostTable {
    functions: HashMap<Arc<str>, HostFn>,
    /// Names in the order they were registered (what a child is told).
    order: Vec<Arc<str>>,
    /// The first bad registration, for `build()` to return.
    refused: Option<String>,
}

impl HostTable {
    pub fn add_sync(
        &mut self,
        name: String,
        f: impl Fn(HostCall) -> HostResult + Send + Sync + 'static,
    ) {
        self.add(name, HostFn::Sync(Arc::new(f)));
    }

    pub fn add_async<F, Fut>(&mut self, name: String, f: F)
    where
        F: Fn(HostCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HostResult> + Send + 'static,
    {
        self.add(name, HostFn::Async(Arc::new(move |call| Box::pin(f(call)))));
    }

    fn add(&mut self, name: String, f: HostFn) {
        if self.refused.is_some() {
            return;
        }
        if let Err(why) = check_name(&name) {
            self.refused = Some(why);
            return;
        }
        let name: Arc<str> = name.into();
        if self.functions.insert(name.clone(), f).is_some() {
            self.refused = Some(format!(
                "host function {name:?} is registered twice; give each function its own name"
            ));
            return;
        }
        self.order.push(name);
    }

    /// The builder's check: a bad name fails `build()`.
    pub fn check(&self) -> Result<(), PyRunnerError> {
        match &self.refused {
            Some(why) => Err(PyRunnerError::Startup(why.clone())),
            None => Ok(()),
        }
    }

    #[cfg_attr(not(any(feature = "pyo3", feature = "subprocess")), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    #[cfg_attr(not(feature = "subprocess"), allow(dead_code))]
    pub fn get(&self, name: &str) -> Option<(&Arc<str>, &HostFn)> {
        self.functions.get_key_value(name)
    }

    /// Every function with its name, in the order registered.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &HostFn)> {
        self.order.iter().map(|name| (name, &self.functions[name]))
    }
}

/// A host function's name must be one Python can write after
/// `async_py.host.`: an identifier that is not a keyword and does not
/// start with an underscore (those are the namespace's own).
fn check_name(name: &str) -> Result<(), String> {
    const KEYWORDS: &[&str] = &[
        "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class",
        "continue", "def", "del", "elif", "else", "except", "finally", "for", "from", "global",
        "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return",
        "try", "while", "with", "yield",
    ];
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || (!c.is_ascii() && c.is_alphabetic()));
    let rest_ok = chars.all(|c| c == '_' || c.is_alphanumeric());
    if !first_ok || !rest_ok || KEYWORDS.contains(&name) {
        return Err(format!(
            "host function name {name:?} is not one Python can call as async_py.host.{name}: \
             use an identifier that starts with a letter and is not a keyword"
        ));
    }
    Ok(())
}

/// The functions and the runner they belong to, as a backend is given them.
#[derive(Clone)]
pub(crate) struct HostSetup {
    pub table: Arc<HostTable>,
    pub link: RunnerLink,
}

impl std::fmt::Debug for HostSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.table.order.iter()).finish()
    }
}

impl HostSetup {
    /// A builder's registration: added to `setup`'s table, made if need be.
    pub fn register(setup: &mut Option<HostSetup>, add: impl FnOnce(&mut HostTable)) {
        let setup = setup.get_or_insert_with(|| HostSetup {
            table: Arc::default(),
            link: RunnerLink::default(),
        });
        add(Arc::make_mut(&mut setup.table));
    }

    /// The same functions for another runner (a pool's next worker): a
    /// link of its own.
    pub fn for_another_runner(&self) -> HostSetup {
        HostSetup {
            table: self.table.clone(),
            link: RunnerLink::default(),
        }
    }

    /// Calls sync function `f` here, its panic caught and turned into the
    /// message Python raises.
    pub fn call_sync(
        &self,
        name: &Arc<str>,
        f: &SyncFn,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> HostResult {
        let call = HostCall::new(name.clone(), args, kwargs, self.link.clone());
        match catch_unwind(AssertUnwindSafe(|| f(call))) {
            Ok(result) => result,
            Err(panic) => Err(panicked(name, &*panic)),
        }
    }

    /// Starts async function `f` on the host runtime; `done` gets its
    /// result (a panic caught as in [`call_sync`](Self::call_sync)) on a
    /// runtime thread. The future is made there too: making it runs user
    /// code, which may send commands to its runner and wait for them, and
    /// the thread that starts the call may be the one that would serve
    /// them (or hold what serving them needs). Aborting the returned
    /// task drops the future, and `done` is then never called.
    pub fn start_async(
        &self,
        name: &Arc<str>,
        f: Arc<AsyncFn>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        done: impl FnOnce(HostResult) + Send + 'static,
    ) -> HostTask {
        let call = HostCall::new(name.clone(), args, kwargs, self.link.clone());
        let name = name.clone();
        let runtime = match runtime::get() {
            Ok(runtime) => runtime,
            Err(why) => {
                done(Err(why));
                return HostTask(None);
            }
        };
        let task = runtime.spawn(async move {
            let result = match catch_unwind(AssertUnwindSafe(|| f(call))) {
                Ok(future) => CatchUnwind(future).await,
                Err(panic) => Err(panic),
            };
            done(result.unwrap_or_else(|panic| Err(panicked(&name, &*panic))));
        });
        HostTask(Some(task.abort_handle()))
    }
}

/// An async host function started by [`HostSetup::start_async`].
pub(crate) struct HostTask(Option<tokio::task::AbortHandle>);

impl HostTask {
    /// Drops the future (at its next await point, if it runs now).
    pub fn abort(&self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// A future whose panic is caught, as `catch_unwind` does for a call.
struct CatchUnwind<F>(Pin<Box<F>>)
where
    F: Future + ?Sized;

impl<F: Future + ?Sized> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// The message Python raises for a host function that panicked.
fn panicked(name: &str, panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a value that is not a message");
    format!("host function {name} panicked: {what}")
}

/// Which runner a backend's host functions belong to: set once the
/// runner's handle exists (its backend starts first), held weakly so that
/// the backend does not keep its own runner alive.
#[derive(Clone, Default)]
pub(crate) struct RunnerLink(Arc<OnceLock<WeakRunner>>);

impl RunnerLink {
    pub fn set(&self, runner: &PyRunner) {
        let _ = self.0.set(runner.downgrade());
    }

    /// The runner, or one whose commands return `Stopped` if it is gone.
    pub fn runner(&self) -> PyRunner {
        match self.0.get() {
            Some(runner) => runner.upgrade(),
            // Set before the backend starts: no host function runs before.
            None => PyRunner::gone(crate::config::Backend::PyO3),
        }
    }
}
