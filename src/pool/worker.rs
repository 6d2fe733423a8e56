//! A worker: one supervised child (a subprocess runner's), its place in
//! the pool, its load, and what its supervisor tells the pool.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, Weak};
use std::time::Instant;

use serde_json::Value;

use super::dispatch::ADMITTED_PER_WORKER;
use super::memory::MemoryWatch;
use super::recycle::Joining;
use super::replay::ReplayLog;
use super::Inner;
use crate::command::{Answer, CommandQueue, Job, Request};
use crate::config::{Backend, RunnerConfig};
use crate::error::PyRunnerError;
use crate::runner::PyRunner;
use crate::subprocess::{Attachment, Companion, RunAtStart, Zygote};
use crate::tuning::POOL_WORKER;

/// A place in the pool, held by one worker at a time (a recycled worker's
/// replacement takes its place).
pub(super) struct Slot {
    pub(super) worker: RwLock<Arc<Worker>>,
    /// A recycle's replacement catching up on the pool's runs: runs made
    /// meanwhile reach it too. Set and cleared under the broadcast lock.
    pub(super) joining: Mutex<Option<Joining>>,
    /// Calls answered by the workers that held this place.
    pub(super) calls: AtomicU64,
    /// Restarts of the workers that held this place before, and their recycles.
    pub(super) past_restarts: AtomicU64,
    /// The launcher its workers are started through, if not the pool's
    /// (`PyPoolBuilder::add_workers`).
    pub(super) launcher: Option<Vec<std::ffi::OsString>>,
}

pub(super) struct Worker {
    pub(super) runner: PyRunner,
    pub(super) state: Arc<WorkerState>,
    /// Calls sent to it and not yet answered.
    pub(super) load: AtomicUsize,
    /// Calls it answered, for recycling.
    pub(super) calls: AtomicU64,
    /// Its replacement is being started; it takes no new calls once that
    /// replacement is in place.
    pub(super) retiring: AtomicBool,
    /// When its memory was last looked at (`max_memory_per_worker`).
    pub(super) memory: Mutex<MemoryWatch>,
}

impl Worker {
    /// Starts a worker's runner from `config`; its first child must be
    /// ready by `first_start_by` if given.
    pub(super) fn start(
        config: &RunnerConfig,
        log: Arc<ReplayLog>,
        pool: Arc<OnceLock<Weak<Inner>>>,
        zygote: Option<Arc<Zygote>>,
        first_start_by: Option<Instant>,
    ) -> Result<Worker, PyRunnerError> {
        let state = Arc::new(WorkerState::default());
        let link = Arc::new(PoolLink {
            log,
            state: state.clone(),
            pool,
            shares: Mutex::default(),
        });
        let queue = Arc::new(CommandQueue::new());
        // Its host functions are given this worker's runner.
        let mut config = config.clone();
        config.host = config.host.as_ref().map(|host| host.for_another_runner());
        let config = &config;
        let attachment = Attachment {
            companion: link,
            zygote,
            first_start_by,
            supervision: POOL_WORKER,
        };
        // Linked before the first start, whose replay may send commands
        // from host functions (see `PyRunnerBuilder::build`).
        let runner = PyRunner::from_parts(queue.clone(), Backend::Subprocess, config.timeout);
        if let Some(host) = &config.host {
            host.link.set(&runner);
        }
        crate::subprocess::spawn_attached(config, queue, attachment)?;
        Ok(Worker {
            runner,
            state,
            load: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            retiring: AtomicBool::new(false),
            memory: Mutex::default(),
        })
    }

    /// Keeps a worker whose replacement could not be made: it serves on,
    /// and the next try comes after another `max_calls_per_worker` calls
    /// rather than with the next call.
    pub(super) fn keep(&self) {
        self.calls.store(0, Ordering::SeqCst);
        self.retiring.store(false, Ordering::SeqCst);
    }

    /// How busy it looks to the dispatcher: a worker whose child is being
    /// replaced counts as full.
    pub(super) fn weight(&self) -> usize {
        let load = self.load.load(Ordering::SeqCst);
        if self.state.restarting.load(Ordering::SeqCst) {
            load + ADMITTED_PER_WORKER
        } else {
            load
        }
    }
}

impl Slot {
    pub(super) fn new(worker: Worker, launcher: Option<Vec<std::ffi::OsString>>) -> Slot {
        Slot {
            worker: RwLock::new(Arc::new(worker)),
            joining: Mutex::new(None),
            calls: AtomicU64::new(0),
            past_restarts: AtomicU64::new(0),
            launcher,
        }
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, Arc<Worker>> {
        self.worker.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn current(&self) -> Arc<Worker> {
        self.read().clone()
    }

    pub(super) fn joining(&self) -> std::sync::MutexGuard<'_, Option<Joining>> {
        self.joining.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a call against the worker that holds it (in place `index`) until
/// it is answered or dropped. It follows the call (see `Job::follow`): a
/// call that a lost child never started, moved to another worker, counts
/// there from then on.
pub(super) struct Charge(Mutex<(usize, Arc<Worker>)>);

impl Charge {
    /// A call for `worker`, counted from now.
    pub(super) fn new(index: usize, worker: Arc<Worker>) -> Arc<Charge> {
        worker.load.fetch_add(1, Ordering::SeqCst);
        Arc::new(Charge(Mutex::new((index, worker))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Arc<Worker>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker the call is counted against, and its place.
    pub(super) fn holder(&self) -> (usize, Arc<Worker>) {
        self.lock().clone()
    }

    /// Counts the call against `worker`, in place `index`, instead.
    pub(super) fn move_to(&self, index: usize, worker: Arc<Worker>) {
        worker.load.fetch_add(1, Ordering::SeqCst);
        let (_, before) = std::mem::replace(&mut *self.lock(), (index, worker));
        before.load.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.lock().1.load.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A worker's child as the pool sees it.
#[derive(Default)]
pub(super) struct WorkerState {
    /// The current child's pid (0 before the first start).
    pub(super) pid: AtomicU32,
    /// Children replaced after a death, a timeout or a broken stream.
    pub(super) restarts: AtomicU64,
    /// The child is being replaced: calls sent now wait for its start.
    pub(super) restarting: AtomicBool,
}

/// What a worker's supervisor tells its pool, and what it asks of it: the
/// runs a fresh child must hold, and where its lost child's calls go.
struct PoolLink {
    log: Arc<ReplayLog>,
    state: Arc<WorkerState>,
    pool: Arc<OnceLock<Weak<Inner>>>,
    shares: Mutex<Shares>,
}

/// The pool's runs as this worker's current child holds them.
#[derive(Default)]
struct Shares {
    /// How many entries of the log the child ran at its start.
    replayed: usize,
    /// What those of them still running on the pool raised here, for this
    /// worker's own share of the run to answer with.
    replay_errors: HashMap<usize, PyRunnerError>,
    /// Runs whose share here was answered without an error (those not yet
    /// settled; see `replay`).
    ok: HashSet<usize>,
}

impl PoolLink {
    fn shares(&self) -> std::sync::MutexGuard<'_, Shares> {
        self.shares.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Companion for PoolLink {
    fn serving(&self, pid: u32) {
        self.state.pid.store(pid, Ordering::SeqCst);
        self.state.restarting.store(false, Ordering::SeqCst);
    }

    /// Counted as full by the pool, which sends its calls elsewhere, until
    /// a fresh child serves.
    fn unavailable(&self, replaced: bool) {
        self.state.restarting.store(true, Ordering::SeqCst);
        if replaced {
            self.state.restarts.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn available(&self) {
        self.state.restarting.store(false, Ordering::SeqCst);
    }

    /// Runs what was sent to the pool so far. A run that raises here though
    /// it ran on every worker without raising (it read a file since
    /// deleted, say) fails the start: this child would lack what the others
    /// hold. One still running on the others may yet fail there too, and is
    /// left to that outcome.
    fn replay(&self, run: &mut RunAtStart<'_>) -> Result<(), PyRunnerError> {
        {
            let mut shares = self.shares();
            shares.replayed = 0;
            shares.replay_errors.clear();
        }
        let entries = self.log.snapshot();
        for (index, code) in entries.iter().enumerate() {
            let Some(code) = code else {
                continue;
            };
            let Err(err) = run(&Request::Run { code: code.clone() })? else {
                continue;
            };
            let before = if self.log.is_settled(index) {
                Some("on every worker")
            } else if self.shares().ok.contains(&index) {
                // Still running elsewhere, but this worker's share was
                // answered: nothing is left here to fail the run with.
                Some("on this worker's child before")
            } else {
                None
            };
            if let Some(before) = before {
                return Err(PyRunnerError::Startup(format!(
                    "the pool's run number {} raised when replayed on a fresh child, \
                     though it had run {before}: {err}",
                    index + 1
                )));
            }
            // Still running on the pool: this worker's share answers with
            // it, so the run fails (and is forgotten) as it would have on
            // the child this one replaced.
            self.shares().replay_errors.insert(index, err);
        }
        self.shares().replayed = entries.len();
        Ok(())
    }

    /// A pool's run goes out even if its caller gave up: every child must
    /// hold what the others hold.
    fn must_run(&self, request: &Request) -> bool {
        matches!(request, Request::Broadcast { .. })
    }

    /// A child started after a run was logged ran it at its start: its
    /// share is answered here.
    fn before_send(&self, job: Job) -> Option<Job> {
        let Request::Broadcast { index, .. } = job.request else {
            return Some(job);
        };
        let mut shares = self.shares();
        if index < shares.replayed {
            let reply = shares
                .replay_errors
                .remove(&index)
                .map_or(Ok(Answer::Value(Value::Null)), Err);
            drop(shares);
            job.reply.send(reply);
            return None;
        }
        shares.replayed = index + 1;
        Some(job)
    }

    /// Notes a run this worker's child ran without raising; the runs no
    /// longer in progress are let go now and then.
    fn answered(&self, request: &Request, ok: bool) {
        let (Request::Broadcast { index, .. }, true) = (request, ok) else {
            return;
        };
        let mut shares = self.shares();
        if shares.ok.len() >= 64 {
            shares.ok.retain(|&index| self.log.is_pending(index));
        }
        shares.ok.insert(*index);
    }

    /// A pool's run that killed its child is not replayed on the next,
    /// unless every worker ran it: then the next child must run it too (and
    /// fails its start if it cannot).
    fn lost_running(&self, request: &Request) {
        if let Request::Broadcast { index, .. } = request {
            if !self.log.is_settled(*index) {
                self.log.blank(*index);
            }
        }
    }

    /// Calls the lost child never started go to the other workers rather
    /// than wait for a new child. Its own share of a run stays: the new
    /// child runs it at its start.
    /// The call was moved to another worker: its charge says which.
    fn stray_cancel(&self, job: Job) {
        let holder = job
            .follow
            .as_deref()
            .and_then(|follow| follow.downcast_ref::<Charge>())
            .map(|charge| charge.holder().1);
        if let Some(holder) = holder {
            if !Arc::ptr_eq(&holder.state, &self.state) {
                // Refused only by a stopped worker, whose calls have ended.
                let _ = holder.runner.queue().push(job);
            }
        }
    }

    fn hand_back(&self, job: Job) -> Option<Job> {
        let movable = matches!(
            job.request,
            Request::Eval { .. }
                | Request::ReadVariable { .. }
                | Request::CallFunction { .. }
                | Request::CallAsyncFunction { .. }
                | Request::Invoke(_)
        );
        if !movable || job.reply.is_abandoned() {
            return Some(job);
        }
        match self.pool.get().and_then(Weak::upgrade) {
            Some(inner) => inner.place_elsewhere(job, &self.state),
            None => Some(job),
        }
    }
}
