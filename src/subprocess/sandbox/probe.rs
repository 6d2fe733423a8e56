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
/// standard library's and site-packages' folders, the absolute entries of
/// its import path, its user site and byte-code cache folders, each as
/// given and resolved, one per line: `+` before one that exists (to be
/// read), `-` before one that does not (yet: a child must not make it).
const PROBE: &str = "\
import os, site, sys, sysconfig
found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
         os.path.dirname(sys.executable), sysconfig.get_config_var('LIBDIR') or ''}
found.update(sysconfig.get_paths().values())
found.update(sys.path)
found.update([site.getuserbase(), site.getusersitepackages(), getattr(sys, 'pycache_prefix', None) or ''])
seen = set()
for path in found:
    if path and os.path.isabs(path):
        for form in (os.path.abspath(path), os.path.realpath(path)):
            seen.add(('+' if os.path.exists(form) else '-') + form)
sys.stdout.write(''.join(path + '\\n' for path in sorted(seen)))
";

/// What an interpreter reads: `read`, the folders that exist; `loaded`,
/// those and the ones that would be read if they existed.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub read: Vec<PathBuf>,
    pub loaded: Vec<PathBuf>,
}

type Key = (PathBuf, Vec<(OsString, OsString)>);

/// What each interpreter said, by interpreter and environment.
static ASKED: Mutex<Option<HashMap<Key, Arc<Paths>>>> = Mutex::new(None);

/// The folders `python`, started with exactly `env`, reads its code from.
/// The root folder is never among them: an interpreter installed there
/// is refused rather than let the child read everything.
pub(crate) fn interpreter_paths(
    python: &Path,
    env: &[(OsString, OsString)],
) -> Result<Paths, PyRunnerError> {
    let key = (python.to_path_buf(), env.to_vec());
    if let Some(paths) = ASKED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return Ok(Paths::clone(paths));
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
    let mut paths = Paths {
        read: Vec::new(),
        loaded: Vec::new(),
    };
    for line in output.stdout.split(|&byte| byte == b'\n') {
        let Some((&mark, path)) = line.split_first() else {
            continue;
        };
        let path = PathBuf::from(OsString::from_vec(path.to_vec()));
        if mark == b'+' {
            paths.read.push(path.clone());
        }
        paths.loaded.push(path);
    }
    if paths.read.iter().any(|path| path == Path::new("/")) {
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
