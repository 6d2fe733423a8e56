//! The subprocess backend: Python in a child process, driven over stdio.
//!
//! The child is started from the interpreter [`find_python`] picks and runs
//! the bundled worker (`python/*.py`, joined into one source). One
//! supervisor thread per runner owns it (see `supervisor`), so the runner
//! needs no tokio runtime of its own and the caller's runtime is never
//! blocked.

mod child;
mod flights;
mod interpreter;
mod launcher;
mod ring;
mod sandbox;
mod stderr;
mod supervisor;
mod zygote;

use std::sync::Arc;
use std::time::Instant;

use crate::command::{start_backend_thread, CommandQueue, Job, Request};
use crate::config::RunnerConfig;
use crate::error::PyRunnerError;
use crate::tuning::{Supervision, RUNNER};
use child::LaunchSpec;
pub(crate) use interpreter::find_python;
use supervisor::{Settings, Shared};
pub(crate) use zygote::Zygote;

/// The supervisor thread decodes replies, which nest up to rmp-serde's
/// depth limit; room to spare.
const SUPERVISOR_STACK: usize = 8 << 20;

/// What a supervisor tells, and asks of, the one it serves beside others
/// (a pool's worker tells its pool). A runner's supervisor has none. Every
/// call comes from the supervisor's side, one at a time, and must not
/// block for long: the child's callers wait meanwhile.
pub(crate) trait Companion: Send + Sync {
    /// A child with this pid started and holds all it must: it serves.
    fn serving(&self, pid: u32);
    /// The child cannot take work for now: it failed to start, or it
    /// unwinds after a timeout. `replaced`: a child was killed to be
    /// replaced.
    fn unavailable(&self, replaced: bool);
    /// The child serves again (it kept running after a timeout's signal).
    fn available(&self);
    /// Runs on a fresh child, after `startup` and before anything else,
    /// what it must hold, through `run`; an outer error fails the start.
    fn replay(&self, run: &mut RunAtStart<'_>) -> Result<(), PyRunnerError>;
    /// Whether a request goes to the child even if its caller gave up.
    fn must_run(&self, request: &Request) -> bool;
    /// A request about to be sent: `None` if it was answered here instead.
    fn before_send(&self, job: Job) -> Option<Job>;
    /// A request's reply came from the child (`ok`: not an error).
    fn answered(&self, request: &Request, ok: bool);
    /// A request the child had started when it was lost.
    fn lost_running(&self, request: &Request);
    /// A request the lost child never started: `Some` gives it back to this
    /// supervisor, `None` means another took it.
    fn hand_back(&self, job: Job) -> Option<Job>;
    /// A cancel (`Request::Cancel`) for a request this supervisor does not
    /// hold: one moved to another supervisor by `hand_back`, say.
    fn stray_cancel(&self, job: Job);
}

/// Runs one request on a child as it starts: the outer error is a failed
/// start, the inner one what the request raised.
pub(crate) type RunAtStart<'a> =
    dyn FnMut(&Request) -> Result<Result<(), PyRunnerError>, PyRunnerError> + 'a;

/// How a supervisor serves beside others: who it tells, who forks its
/// children, and when its first child must be ready.
pub(crate) struct Attachment {
    pub companion: Arc<dyn Companion>,
    /// Forks the children, if given (see [`Zygote`]).
    pub zygote: Option<Arc<Zygote>>,
    /// The first child must say hello by then, if given.
    pub first_start_by: Option<Instant>,
    pub supervision: Supervision,
}

/// Starts the child and its supervisor thread; returns once the child has
/// said hello and run the startup code.
pub(crate) fn spawn(config: &RunnerConfig, queue: Arc<CommandQueue>) -> Result<(), PyRunnerError> {
    spawn_with(config, queue, None)
}

/// [`spawn`] for a supervisor that serves beside others.
pub(crate) fn spawn_attached(
    config: &RunnerConfig,
    queue: Arc<CommandQueue>,
    attachment: Attachment,
) -> Result<(), PyRunnerError> {
    spawn_with(config, queue, Some(attachment))
}

fn spawn_with(
    config: &RunnerConfig,
    queue: Arc<CommandQueue>,
    attachment: Option<Attachment>,
) -> Result<(), PyRunnerError> {
    let (companion, zygote, first_start_by, supervision) = match attachment {
        Some(attached) => (
            Some(attached.companion),
            attached.zygote,
            attached.first_start_by,
            attached.supervision,
        ),
        None => (None, None, None, RUNNER),
    };
    let share_cores = companion.is_some();
    // A launcher's child is never a local fork.
    let zygote = zygote.filter(|_| config.launcher.is_none());
    let settings = Settings {
        spec: launch_spec(config, zygote, share_cores)?,
        startup: config.startup.clone(),
        frame_limit: config.frame_limit,
        replay: config.replay && companion.is_none(),
        companion,
        timeout: config.timeout,
        host: config.host.clone(),
        supervision,
    };
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

/// How the children of a runner with `config` start: forked by `zygote` if
/// given; `share_cores` when they serve beside others.
fn launch_spec(
    config: &RunnerConfig,
    zygote: Option<Arc<Zygote>>,
    share_cores: bool,
) -> Result<LaunchSpec, PyRunnerError> {
    let mut python = match &config.launcher {
        // The far side's, as given: nothing here is looked at.
        Some(_) => config
            .python
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("python3")),
        None => find_python(config)?,
    };
    let sandbox = match &config.sandbox {
        Some(rules) => {
            python = interpreter::python_for_clear_env(python, config);
            Some(sandbox::SandboxPlan::prepare(rules, &python, &config.env)?)
        }
        None => None,
    };
    Ok(LaunchSpec {
        python,
        env: config.env.clone(),
        env_clear: config.env_clear || sandbox.is_some(),
        current_dir: config.current_dir.clone(),
        hello_timeout: config.start_timeout,
        zygote,
        share_cores,
        output: config.output.clone(),
        host: config
            .host
            .as_ref()
            .filter(|host| !host.table.is_empty())
            .map(|host| supervisor::host_setting(&host.table)),
        memory_limit: config.memory_limit,
        sandbox,
        launcher: config.launcher.clone(),
        heartbeat: config.heartbeat,
    })
}

/// Starts a zygote for the children of runners with `config` that serve
/// side by side.
pub(crate) fn start_zygote(config: &RunnerConfig) -> Result<Arc<Zygote>, PyRunnerError> {
    Zygote::start(&launch_spec(config, None, false)?)
}
