//! Which Python the subprocess backend starts.

use std::path::{Path, PathBuf};

use crate::builder::RunnerConfig;
use crate::error::PyRunnerError;

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
/// `./.venv` (uv's default), then `python3` and `python` on `PATH`.
pub(crate) fn find_python(config: &RunnerConfig) -> Result<PathBuf, PyRunnerError> {
    if let Some(python) = &config.python {
        return Ok(python.clone());
    }
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
