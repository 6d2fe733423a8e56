//! [`PyPool`]: many child interpreters behind one handle, for Python that
//! runs in parallel.
//!
//! Each worker is a subprocess runner of its own (its own child, supervisor
//! thread and fault handling). The pool adds what makes them one: calls go
//! to the least loaded worker, `run` reaches every worker and is replayed on
//! children started later, calls a lost child never started move to other
//! workers, and workers can be recycled after a number of calls.

mod builder;
mod dispatch;
mod join;
mod memory;
mod recycle;
mod replay;
mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread;

use serde_json::Value;
use tokio::sync::{watch, Semaphore};

pub use builder::PyPoolBuilder;
pub(crate) use dispatch::Admission;
use join::{join_in_order, BoxedCall};
use replay::ReplayLog;
use worker::{Slot, Worker};

use crate::builder::PyRunnerBuilder;
use crate::call::Call;
use crate::command::{block_on, value_of, Request};
use crate::error::PyRunnerError;
use crate::runner::PyRunner;
use crate::subprocess::Zygote;

/// One worker as [`PyPool::stats`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// The process id of the worker's current child.
    pub pid: u32,
    /// Calls this worker has answered (across the children it has had).
    pub calls: u64,
    /// Children started after its first: after a death, a timeout, a broken
    /// stream, or a recycle (see [`PyPoolBuilder::max_calls_per_worker`]).
    pub restarts: u64,
    /// Whether a call is running or waiting on it now.
    pub busy: bool,
}

/// A pool of child interpreters that run Python in parallel.
///
/// Cheap to clone, `Send + Sync`. `run` reaches every worker; `eval`,
/// `call_function` and `call_async_function` go to one worker, an idle one
/// if there is one, else the least loaded; `map` spreads many calls out.
/// Unlike a [`PyRunner`], commands from different callers are not ordered
/// with respect to each other: they run on different workers at once.
/// Every command has a blocking `_sync` twin.
///
/// ```no_run
/// # fn main() -> Result<(), async_py::PyRunnerError> {
/// let pool = async_py::PyPool::builder().workers(2).build()?;
/// pool.run_sync("def square(x):\n    return x * x")?;
/// let squares = pool.map_sync("square", (0..4).map(|x| vec![x.into()]).collect());
/// assert_eq!(squares.into_iter().map(Result::unwrap).collect::<Vec<_>>(), [0, 1, 4, 9]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PyPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyPool")
            .field("workers", &self.inner.slots.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    runner: PyRunnerBuilder,
    /// Forks the workers' children, if it started; taken (and ended) by `stop`.
    zygote: Mutex<Option<Arc<Zygote>>>,
    log: Arc<ReplayLog>,
    slots: Vec<Slot>,
    admission: Semaphore,
    /// Held while a run is logged and queued on every worker, so runs reach
    /// each worker in log order; never held across an await or while a
    /// child works, so a `_sync` twin blocking a runtime's thread never waits
    /// for a task that thread would run.
    broadcasts: Mutex<()>,
    /// The worker that answered last, where the search for an idle worker
    /// starts: its child has just worked and spins a moment for the next
    /// request, while an idle sibling's child sleeps and takes a wake-up
    /// (tens of microseconds here) to answer. With none idle, ties between
    /// the least loaded go to each in turn (`next`).
    warm: AtomicUsize,
    /// Where the search for the least loaded worker starts, in turn.
    next: AtomicUsize,
    max_calls: Option<u64>,
    /// Resident bytes past which a worker is recycled after a call.
    max_memory: Option<u64>,
    /// This pool, for the workers' hand-back hooks.
    pool: Arc<OnceLock<Weak<Inner>>>,
    /// `stop` was called: no more runs, no more recycles.
    stopped: AtomicBool,
    /// Workers swapped out by a recycle that still finish their calls.
    retired: Mutex<Vec<Arc<Worker>>>,
    /// Recycles under way (their threads), which `stop` waits for: one may
    /// be starting a replacement that no list holds yet.
    recycles: Arc<watch::Sender<usize>>,
}

impl Drop for Inner {
    /// Ends every worker's child at once: each worker's handle, dropped
    /// after this, waits for its own child's end and output, and the
    /// children then end side by side rather than one after another.
    fn drop(&mut self) {
        let end = |worker: &Worker| drop(worker.runner.queue().close());
        for slot in &self.slots {
            end(&slot.worker.read().unwrap_or_else(|p| p.into_inner()));
            if let Some(joining) = slot.joining().as_ref() {
                end(&joining.worker);
            }
        }
        for worker in self.retired().iter() {
            end(worker);
        }
    }
}

impl Inner {
    fn retired(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Worker>>> {
        self.retired.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn broadcasts(&self) -> std::sync::MutexGuard<'_, ()> {
        self.broadcasts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PyPool {
    /// Configures a pool: size, interpreter, venv, startup code, limits.
    pub fn builder() -> PyPoolBuilder {
        PyPoolBuilder {
            runner: PyRunner::builder().subprocess(),
            workers: thread::available_parallelism().map_or(1, |n| n.get()),
            max_calls: None,
            max_memory: None,
            added: Vec::new(),
        }
    }

    /// How many workers the pool has.
    pub fn workers(&self) -> usize {
        self.inner.slots.len()
    }

    /// Each worker's pid, calls answered, restarts and whether it is busy.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.inner
            .slots
            .iter()
            .map(|slot| {
                let worker = slot.current();
                WorkerStats {
                    pid: worker.state.pid.load(Ordering::SeqCst),
                    calls: slot.calls.load(Ordering::SeqCst),
                    restarts: slot.past_restarts.load(Ordering::SeqCst)
                        + worker.state.restarts.load(Ordering::SeqCst),
                    busy: worker.load.load(Ordering::SeqCst) > 0,
                }
            })
            .collect()
    }

    /// Runs Python statements on every worker, and on every child started
    /// later (after `startup`), so all hold the same definitions. The first
    /// error from any worker is returned; code that failed anywhere is not
    /// replayed on later children.
    pub async fn run(&self, code: &str) -> Result<(), PyRunnerError> {
        self.inner.broadcast(code).await
    }

    /// Evaluates one expression on one worker.
    pub async fn eval(&self, expr: &str) -> Result<Value, PyRunnerError> {
        value_of(self.dispatch(Request::eval(expr), Admission::Wait).await)
    }

    /// Calls a function by (dotted) name on one worker.
    pub async fn call_function(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, PyRunnerError> {
        value_of(
            self.dispatch(Request::call(name, args)?, Admission::Wait)
                .await,
        )
    }

    /// Calls a function on one worker and awaits the coroutine it returns
    /// on that worker's event loop.
    pub async fn call_async_function(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, PyRunnerError> {
        value_of(
            self.dispatch(Request::call_async(name, args)?, Admission::Wait)
                .await,
        )
    }

    /// Starts a call of the function `name` on one worker, dispatched like
    /// [`call_function`](Self::call_function): arguments of any serde type,
    /// keyword arguments, a limit for this call and a typed result. See
    /// [`Call`].
    pub fn call(&self, name: &str) -> Call<'_> {
        Call::on_pool(self, name)
    }

    /// Calls `name` once per argument list, spread over the workers; one
    /// result per input, in input order, each failure in its own slot.
    pub async fn map(
        &self,
        name: &str,
        inputs: Vec<Vec<Value>>,
    ) -> Vec<Result<Value, PyRunnerError>> {
        self.map_admitted(name, inputs, Admission::Wait).await
    }

    /// Ends every worker once the calls sent before have been answered.
    /// Later commands give [`PyRunnerError::Stopped`]; stopping again is `Ok`.
    /// A worker's child that does not answer the stop is killed after a
    /// grace, as [`PyRunner::stop`] says.
    pub async fn stop(&self) -> Result<(), PyRunnerError> {
        self.inner.admission.close();
        // Runs queued before are ahead of the stop on every worker; later
        // ones are refused. Retired workers, and replacements still catching
        // up, are stopped too: their children end before `stop` returns.
        let workers: Vec<_> = {
            let _runs = self.inner.broadcasts();
            self.inner.stopped.store(true, Ordering::SeqCst);
            let slots = self.inner.slots.iter();
            let current = slots.clone().map(Slot::current);
            let joining = slots.filter_map(|slot| Some(slot.joining().as_ref()?.worker.clone()));
            let retired = self.inner.retired().clone();
            current.chain(joining).chain(retired).collect()
        };
        let stops = workers.into_iter().map(|worker| {
            Box::pin(async move { worker.runner.stop().await })
                as BoxedCall<'_, Result<(), PyRunnerError>>
        });
        let stopped = join_in_order(stops, |_| usize::MAX)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(drop);
        // A recycle under way sees `stopped` and ends its replacement,
        // which may not have been in any list above.
        let _ = self
            .inner
            .recycles
            .subscribe()
            .wait_for(|under_way| *under_way == 0)
            .await;
        // Its workers are reaped: the zygote ends too, on a thread of its
        // own, as ending it waits for its exit.
        let zygote = self
            .inner
            .zygote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(zygote) = zygote {
            let (ended, was_ended) = tokio::sync::oneshot::channel();
            let ending = thread::Builder::new()
                .name("async_py-zygote-end".into())
                .spawn(move || {
                    zygote.end();
                    let _ = ended.send(());
                });
            if ending.is_ok() {
                let _ = was_ended.await;
            }
        }
        stopped
    }

    /// Blocking twin of [`run`](Self::run).
    pub fn run_sync(&self, code: &str) -> Result<(), PyRunnerError> {
        block_on_pool(self.run(code))
    }

    /// Blocking twin of [`eval`](Self::eval).
    pub fn eval_sync(&self, expr: &str) -> Result<Value, PyRunnerError> {
        value_of(block_on_pool(
            self.dispatch(Request::eval(expr), Admission::Skip),
        ))
    }

    /// Blocking twin of [`call_function`](Self::call_function).
    pub fn call_function_sync(&self, name: &str, args: Vec<Value>) -> Result<Value, PyRunnerError> {
        block_on_pool(async {
            value_of(
                self.dispatch(Request::call(name, args)?, Admission::Skip)
                    .await,
            )
        })
    }

    /// Blocking twin of [`call_async_function`](Self::call_async_function).
    pub fn call_async_function_sync(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, PyRunnerError> {
        block_on_pool(async {
            value_of(
                self.dispatch(Request::call_async(name, args)?, Admission::Skip)
                    .await,
            )
        })
    }

    /// Blocking twin of [`map`](Self::map).
    pub fn map_sync(
        &self,
        name: &str,
        inputs: Vec<Vec<Value>>,
    ) -> Vec<Result<Value, PyRunnerError>> {
        block_on_pool(self.map_admitted(name, inputs, Admission::Skip))
    }

    /// Blocking twin of [`stop`](Self::stop).
    pub fn stop_sync(&self) -> Result<(), PyRunnerError> {
        block_on_pool(self.stop())
    }
}

/// [`block_on`] for the pool's twins. The pool's futures may wait on tokio's
/// primitives (the zygote's end in `stop`), which count their polls against
/// the budget of the tokio task they run in and, once it is spent, ask to be
/// polled later; a twin called inside a task never hands back to the
/// runtime to refill it, so without this it would spin there.
pub(crate) fn block_on_pool<F: Future>(future: F) -> F::Output {
    block_on(tokio::task::unconstrained(future))
}
