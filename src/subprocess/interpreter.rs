//! Which Python the subprocess backend starts.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::child::poll;
use crate::config::RunnerConfig;
use crate::error::PyRunnerError;

/// How long an interpreter that is a script gets to say what it runs.
const ASK_LIMIT: Duration = Duration::from_secs(30);

/// The interpreter inside a venv folder.
pub(crate) fn venv_python(dir: &Path) -> Result<PathBuf, PyRunnerError> {
    if !dir.is_dir() {
        return Err(PyRunnerError::Startup(format!(
            "venv folder {} does not exist",
            dir.display()
        )));
    }
    let python = if cfg!(windows) {
        dir.join("Scripts").join("python.exe")
    } else {
        dir.join("bin").join("python")
    };
    if !python.exists() {
        return Err(PyRunnerError::Startup(format!(
            "{} is not a venv: it has no {}",
            dir.display(),
            python.strip_prefix(dir).unwrap_or(&python).display()
        )));
    }
    Ok(python)
}

/// The first that applies: `python(path)`, `venv(dir)`, `$VIRTUAL_ENV`,
/// `./.venv` (uv's default), then `python3` and `python` on `PATH`. One
/// found (not named by `python(path)`) that is a script is replaced by the
/// executable it runs (see [`real_executable`]).
pub(crate) fn find_python(config: &RunnerConfig) -> Result<PathBuf, PyRunnerError> {
    if let Some(python) = &config.python {
        return Ok(python.clone());
    }
    let found = discover_python(config)?;
    Ok(real_executable(found, config))
}

/// `python` as a sandboxed child can start it, with a cleared environment
/// in a folder of its own: a bare name looked up on this process's `PATH`,
/// a relative path made absolute (against `current_dir`, where `./.venv`
/// was found), and a script (a version manager's shim, which needs its
/// environment) replaced by the executable it runs (see
/// [`real_executable`]).
pub(crate) fn python_for_clear_env(python: PathBuf, config: &RunnerConfig) -> PathBuf {
    let found = if python.components().count() == 1 {
        which::which(&python).unwrap_or(python)
    } else if python.is_relative() {
        // A `python(path)` of the user's is relative to the child's folder,
        // as it would be unsandboxed; one found here (`venv`, `./.venv`) to
        // this process's.
        let given = config.python.is_some();
        let from = match &config.current_dir {
            Some(dir) if given => dir.join(&python),
            _ => python.clone(),
        };
        std::path::absolute(from).unwrap_or(python)
    } else {
        python
    };
    real_executable(found, config)
}

fn discover_python(config: &RunnerConfig) -> Result<PathBuf, PyRunnerError> {
    if let Some(venv) = &config.venv {
        return venv_python(venv);
    }
    let inherits_env = !config.env_clear;
    if let Some(active) = std::env::var_os("VIRTUAL_ENV").filter(|v| inherits_env && !v.is_empty())
    {
        return venv_python(Path::new(&active));
    }
    let local_venv = match &config.current_dir {
        Some(dir) => dir.join(".venv"),
        None => PathBuf::from(".venv"),
    };
    if local_venv.is_dir() {
        return venv_python(&local_venv);
    }
    which::which("python3")
        .or_else(|_| which::which("python"))
        .map_err(|_| {
            PyRunnerError::Startup(
                "no Python interpreter found: no python(path), no venv(dir), no $VIRTUAL_ENV, no ./.venv, \
                 and neither python3 nor python on PATH"
                    .into(),
            )
        })
}

/// What decides the executable a script runs: pyenv's shims choose by the
/// environment (`PYENV_VERSION`) and the folder (`.python-version`).
#[derive(Clone, PartialEq, Eq, Hash)]
struct AskedIn {
    script: PathBuf,
    folder: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    env_clear: bool,
}

/// What a script said it runs, once asked (`None`: no usable answer).
type Answer = OnceLock<Option<PathBuf>>;

/// `found` itself, unless it is a script (it starts with `#!`), such as a
/// version manager's shim: that starts a shell and more before Python, on
/// every start of a child. The script is then run once per process (per
/// script, folder and environment) to ask the interpreter it runs for
/// `sys.executable`, which children start from instead. Nothing is
/// resolved through symlinks: a venv's `bin/python` stays as it is, so
/// that the child stays in the venv. Without a usable answer (the script
/// failed, or named no file), `found` is kept, and its start says what is
/// wrong.
fn real_executable(found: PathBuf, config: &RunnerConfig) -> PathBuf {
    if !is_script(&found) {
        return found;
    }
    static ANSWERS: OnceLock<Mutex<HashMap<AskedIn, Arc<Answer>>>> = OnceLock::new();
    let asked_in = AskedIn {
        script: found.clone(),
        folder: config
            .current_dir
            .clone()
            .or_else(|| std::env::current_dir().ok()),
        env: config.env.clone(),
        env_clear: config.env_clear,
    };
    // One answer per key, asked once even by runners built at the same time;
    // the lock is not held while the script runs.
    let answer = ANSWERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(asked_in)
        .or_default()
        .clone();
    answer
        .get_or_init(|| ask_executable(&found, config))
        .clone()
        .unwrap_or(found)
}

/// Whether the file starts with `#!`, as a script that the kernel runs
/// through its interpreter does.
fn is_script(path: &Path) -> bool {
    let mut start = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut start))
        .is_ok()
        && start == *b"#!"
}

/// Runs `script` (without a shell) as a child would be run, and returns
/// the `sys.executable` it reports, if that is a file that is no script.
fn ask_executable(script: &Path, config: &RunnerConfig) -> Option<PathBuf> {
    let mut command = Command::new(script);
    command
        .args(["-S", "-c", "import sys; sys.stdout.write(sys.executable)"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if config.env_clear {
        command.env_clear();
    }
    for (key, value) in &config.env {
        command.env(key, value);
    }
    if let Some(dir) = &config.current_dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().ok()?;
    let deadline = Instant::now() + ASK_LIMIT;
    let answer = child
        .stdout
        .take()
        .and_then(|stdout| read_until_end(stdout, deadline));
    // A script that never ends must not hold up `build()` for ever.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if answer.is_some() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    if !status?.success() {
        return None;
    }
    let executable = PathBuf::from(OsString::from_vec(answer?));
    let usable = executable.is_absolute() && executable.is_file() && !is_script(&executable);
    usable.then_some(executable)
}

/// What `stdout` holds up to its end (the first 4 KiB of it), unless the
/// deadline comes first.
fn read_until_end(mut stdout: ChildStdout, deadline: Instant) -> Option<Vec<u8>> {
    const KEPT: usize = 4 << 10;
    let mut answer = Vec::new();
    let mut chunk = [0u8; KEPT];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut fds = [libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        poll(&mut fds, Some(left));
        if fds[0].revents == 0 {
            continue;
        }
        match stdout.read(&mut chunk) {
            Ok(0) => return Some(answer),
            Ok(read) => {
                let room = KEPT.saturating_sub(answer.len());
                answer.extend_from_slice(&chunk[..read.min(room)]);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}
