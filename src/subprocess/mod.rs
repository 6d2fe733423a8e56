//! The subprocess backend: Python in a child process, driven over stdio.
//!
//! The child is started from the interpreter [`find_python`] picks and runs
//! the bundled `python/worker.py`. One supervisor thread per runner owns it
//! (see `supervisor`), so the runner needs no tokio runtime of its own and
//! the caller's runtime is never blocked.

mod child;
mod interpreter;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use crate::builder::RunnerConfig;
use crate::command::{start_backend_thread, CommandQueue};
use crate::error::PyRunnerError;
use child::LaunchSpec;
pub(crate) use interpreter::find_python;
use supervisor::{Settings, Shared};

/// The supervisor thread decodes replies, which nest up to rmp-serde's
/// depth limit; room to spare.
const SUPERVISOR_STACK: usize = 8 << 20;

/// How long a child may take from spawn to hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the child and its supervisor thread; returns once the child has
/// said hello and run the startup code.
pub(crate) fn spawn(config: &RunnerConfig, queue: Arc<CommandQueue>) -> Result<(), PyRunnerError> {
    let python = find_python(config)?;
    let settings = Settings {
        spec: LaunchSpec {
            python,
            env: config.env.clone(),
            env_clear: config.env_clear,
            current_dir: config.current_dir.clone(),
            hello_timeout: HELLO_TIMEOUT,
        },
        startup: config.startup.clone(),
        frame_limit: config.frame_limit,
    };
    // Every child is started by the supervisor thread, which lives as long
    // as the runner: Linux's parent-death signal fires when the thread that
    // forked the child exits, not the process.
    start_backend_thread(
        "async_py-subprocess",
        SUPERVISOR_STACK,
        move |ready| match Shared::start(queue, settings) {
            Ok(shared) => {
                ready.report(Ok(()));
                shared.run();
            }
            Err(err) => ready.report(Err(err)),
        },
    )
}
