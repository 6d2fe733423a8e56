//! The paths a sandboxed child's interpreter reads: asked of the
//! interpreter itself, started as the child is (same environment, nothing
//! else), once per interpreter and environment in this process.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::error::PyRunnerError;

/// Prints the interpreter's prefixes, its executable's folder, the
/// standard library's and site-packages' folders, and the absolute entries
/// of its import path, each as given and resolved, one per line.
const PROBE: &str = "\
import os, sys, sysconfig
found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
         os.path.dirname(sys.executable), sysconfig.get_config_var('LIBDIR') or ''}
found.update(sysconfig.get_paths().values())
found.update(sys.path)
seen = set()
for path in found:
    if path and os.path.isabs(path) and os.path.exists(path):
        seen.add(os.path.abspath(path))
        seen.add(os.path.realpath(path))
sys.stdout.write(''.join(path + '\\n' for path in sorted(seen)))
";

type Key = (PathBuf, Vec<(OsString, OsString)>);

/// What each interpreter said, by interpreter and environment.
static ASKED: Mutex<Option<HashMap<Key, Arc<Vec<PathBuf>>>>> = Mutex::new(None);

/// The folders `python`, started with exactly `env`, reads its code from.
/// The root folder is never among them: an interpreter installed there
/// is refused rather than let the child read everything.
pub(crate) fn interpreter_paths(
    python: &Path,
    env: &[(OsString, OsString)],
) -> Result<Vec<PathBuf>, PyRunnerError> {
    let key = (python.to_path_buf(), env.to_vec());
    if let Some(paths) = ASKED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return Ok(paths.to_vec());
    }
    let failed = |why: String| {
        PyRunnerError::Startup(format!(
            "sandbox: could not ask {} for the folders it reads: {why}",
            python.display()
        ))
    };
    let output = Command::new(python)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .args(["-c", PROBE])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|err| failed(err.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!(
            "it ended {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let paths: Vec<PathBuf> = output
        .stdout
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| PathBuf::from(OsString::from_vec(line.to_vec())))
        .collect();
    if paths.iter().any(|path| path == Path::new("/")) {
        return Err(failed(
            "its import path holds the root folder, which would open every file to the child"
                .into(),
        ));
    }
    ASKED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key, Arc::new(paths.clone()));
    Ok(paths)
}
