//! The subprocess backend: Python in a child process, driven over stdio.
//!
//! The child is started from the interpreter [`find_python`] picks and runs
//! the bundled worker (`python/*.py`, joined into one source). One
//! supervisor thread per runner owns it (see `supervisor`), so the runner
//! needs no tokio runtime of its own and the caller's runtime is never
//! blocked.

mod child;
mod interpreter;
mod ring;
mod stderr;
mod supervisor;
mod zygote;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::builder::RunnerConfig;
use crate::command::{start_backend_thread, CommandQueue, Job};
use crate::error::PyRunnerError;
use child::LaunchSpec;
pub(crate) use interpreter::find_python;
use supervisor::{Settings, Shared};
pub(crate) use zygote::Zygote;

/// The supervisor thread decodes replies, which nest up to rmp-serde's
/// depth limit; room to spare.
const SUPERVISOR_STACK: usize = 8 << 20;

/// What ties a pool's worker to its pool: the definitions every child must
/// hold, counters the pool reports, and where a lost child's unstarted
/// calls go.
#[derive(Clone)]
pub(crate) struct PoolHooks {
    pub log: Arc<ReplayLog>,
    pub state: Arc<WorkerState>,
    /// Places a call this worker's lost child never started on another
    /// worker; gives it back if there is none to take it.
    pub hand_back: Arc<dyn Fn(Job) -> Option<Job> + Send + Sync>,
    /// The pool's zygote, which forks this worker's children.
    pub zygote: Option<Arc<Zygote>>,
}

impl std::fmt::Debug for PoolHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHooks").finish_non_exhaustive()
    }
}

/// The code of every `run` sent to a pool, in order: each child a worker
/// starts runs them all (after `startup`) before its first call. A run that
/// failed anywhere is blanked, so it is not replayed.
#[derive(Default)]
pub(crate) struct ReplayLog {
    entries: Mutex<Vec<Option<LoggedRun>>>,
}

struct LoggedRun {
    code: String,
    /// Settled, awaited or given up (a blanked run has no entry).
    state: RunState,
}

/// A logged run, as [`ReplayLog::state`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunState {
    /// It ran on every worker without raising.
    Settled,
    /// Its outcome is not recorded yet, and its caller waits for it.
    Awaited,
    /// Its caller dropped it before its outcome: it never gets one.
    GivenUp,
    /// It failed somewhere (or there is no such run): it is not replayed.
    Blank,
}

impl ReplayLog {
    /// Adds a run; its index.
    pub fn push(&self, code: &str) -> usize {
        let mut entries = self.lock();
        entries.push(Some(LoggedRun {
            code: code.to_owned(),
            state: RunState::Awaited,
        }));
        entries.len() - 1
    }

    /// Keeps a run that failed from being replayed.
    pub fn blank(&self, index: usize) {
        if let Some(entry) = self.lock().get_mut(index) {
            *entry = None;
        }
    }

    /// Marks a run that every worker ran without raising: one that raises
    /// when replayed would leave that child unlike the others.
    pub fn settle(&self, index: usize) {
        if let Some(Some(run)) = self.lock().get_mut(index) {
            run.state = RunState::Settled;
        }
    }

    /// Notes that the caller of a run still awaited dropped it.
    pub fn give_up(&self, index: usize) {
        if let Some(Some(run)) = self.lock().get_mut(index) {
            if run.state == RunState::Awaited {
                run.state = RunState::GivenUp;
            }
        }
    }

    /// Where the run at `index` stands.
    pub fn state(&self, index: usize) -> RunState {
        match self.lock().get(index) {
            Some(Some(run)) => run.state,
            _ => RunState::Blank,
        }
    }

    /// Whether the run at `index` ran on every worker without raising.
    pub fn is_settled(&self, index: usize) -> bool {
        self.state(index) == RunState::Settled
    }

    /// Whether the run at `index` is still in progress on the pool: neither
    /// settled nor blanked.
    pub fn is_pending(&self, index: usize) -> bool {
        matches!(self.state(index), RunState::Awaited | RunState::GivenUp)
    }

    /// The code of every entry so far (blanked ones as `None`).
    pub fn snapshot(&self) -> Vec<Option<String>> {
        self.lock()
            .iter()
            .map(|entry| entry.as_ref().map(|run| run.code.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<LoggedRun>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker's child as the pool sees it.
#[derive(Default)]
pub(crate) struct WorkerState {
    /// The current child's pid (0 before the first start).
    pub pid: AtomicU32,
    /// Children replaced after a death, a timeout or a broken stream.
    pub restarts: AtomicU64,
    /// The child is being replaced: calls sent now wait for its start.
    pub restarting: AtomicBool,
}

/// Starts the child and its supervisor thread; returns once the child has
/// said hello and run the startup code.
pub(crate) fn spawn(config: &RunnerConfig, queue: Arc<CommandQueue>) -> Result<(), PyRunnerError> {
    let settings = Settings {
        spec: launch_spec(config)?,
        startup: config.startup.clone(),
        frame_limit: config.frame_limit,
        hooks: config.pool_hooks.clone(),
        timeout: config.timeout,
        replay: config.replay,
    };
    let first_start_by = config.first_start_by;
    // Every child is started by the supervisor thread, which lives as long
    // as the runner: Linux's parent-death signal fires when the thread that
    // forked the child exits, not the process.
    start_backend_thread(
        "async_py-subprocess",
        SUPERVISOR_STACK,
        move |ready| match Shared::start(queue.clone(), settings, first_start_by) {
            Ok(shared) => {
                let _ended = queue.end_awaited();
                ready.report(Ok(()));
                shared.run();
            }
            Err(err) => ready.report(Err(err)),
        },
    )
}

/// How the children of a runner with `config` start: a pool's worker's
/// are forked by the pool's zygote if it has one.
fn launch_spec(config: &RunnerConfig) -> Result<LaunchSpec, PyRunnerError> {
    let zygote = config
        .pool_hooks
        .as_ref()
        .and_then(|hooks| hooks.zygote.clone());
    Ok(LaunchSpec {
        python: find_python(config)?,
        env: config.env.clone(),
        env_clear: config.env_clear,
        current_dir: config.current_dir.clone(),
        hello_timeout: config.start_timeout,
        zygote,
        share_cores: config.pool_hooks.is_some(),
    })
}

/// Starts a zygote for the children of a pool's workers with `config`.
pub(crate) fn start_zygote(config: &RunnerConfig) -> Result<Arc<Zygote>, PyRunnerError> {
    Zygote::start(&launch_spec(config)?)
}
