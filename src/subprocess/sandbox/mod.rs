//! A sandboxed child (`crate::Sandbox`): what is made for it here, and what
//! it is told to enter.
//!
//! Made here, once per runner ([`SandboxPlan`]): the paths it may read (its
//! interpreter's, asked of the interpreter once per process, see `probe`),
//! the pids cgroup it will get a group in (`cgroup`), the socket filter
//! (`rules`, compiled by seccompiler). Made here for each child
//! ([`SandboxSeat`]): its scratch folder, its cgroup, its landlock ruleset
//! (by the landlock crate), all removed when the child is gone.
//!
//! The child enters it itself, in `python/sandbox.py`, after it has made
//! its namespaces and before anything else runs: it joins the cgroup, sets
//! its open-file limit, makes a user, pid, IPC (and without network, a
//! network) namespace, and then, in the worker, `no_new_privs`, the ruleset
//! (`landlock_restrict_self`, one system call on the fd made here) and the
//! filter (`prctl(PR_SET_SECCOMP)` on the program compiled here). A
//! started child is told in its environment (`ENV`) and inherits the
//! ruleset's fd; a forked one is told in the zygote's fork request, the fd
//! passed with it. A step that fails ends the child with the reason on its
//! stderr, which `build()` quotes in its `Startup` error: no child serves
//! unsandboxed.

#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod probe;
#[cfg(target_os = "linux")]
mod rules;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::PyRunnerError;
use crate::sandbox::Sandbox;

/// The child's environment variable that carries its sandbox's settings
/// (`ENV_SANDBOX` of `python/protocol.py`), removed before user code runs.
pub(crate) const ENV: &str = "ASYNC_PY_SANDBOX";

/// The processes of a sandbox that are the worker's own, not the user's:
/// the process this side started (the stand-in), its pid namespace's init,
/// and the worker (see `python/contain.py`).
const OWN_PROCESSES: u32 = 3;

/// What every child of one runner (or pool) is sandboxed with.
#[derive(Debug)]
pub(crate) struct SandboxPlan {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    sandbox: Sandbox,
    /// Folders and files the child may read and run.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    read: Vec<PathBuf>,
    /// Where each child's cgroup is made.
    #[cfg(target_os = "linux")]
    cgroups: cgroup::Parent,
    /// The socket filter, as the child hands it to the kernel (hex).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    filter: String,
}

impl SandboxPlan {
    /// Checks that this kernel gives every rule of `sandbox`, and prepares
    /// what the children of `python` (started with environment `env`, and
    /// nothing else) are sandboxed with.
    pub fn prepare(
        sandbox: &Sandbox,
        python: &Path,
        env: &[(OsString, OsString)],
    ) -> Result<Arc<SandboxPlan>, PyRunnerError> {
        #[cfg(target_os = "linux")]
        {
            rules::check_kernel(sandbox)?;
            for path in sandbox.read.iter().chain(&sandbox.write) {
                if let Err(err) = std::fs::metadata(path) {
                    return Err(PyRunnerError::Startup(format!(
                        "sandbox: {} cannot be allowed: {err}",
                        path.display()
                    )));
                }
            }
            let mut read = probe::interpreter_paths(python, env)?;
            read.extend(rules::system_paths());
            read.extend(sandbox.read.iter().cloned());
            Ok(Arc::new(SandboxPlan {
                sandbox: sandbox.clone(),
                read,
                cgroups: cgroup::Parent::find()?,
                filter: rules::socket_filter(sandbox)?,
            }))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (sandbox, python, env);
            Err(PyRunnerError::Startup(
                "sandbox: the sandbox is made of Linux's own mechanisms (landlock, \
                 namespaces, cgroups, seccomp) and needs Linux"
                    .into(),
            ))
        }
    }

    /// Makes what one child is sandboxed with.
    pub fn seat(&self) -> Result<SandboxSeat, PyRunnerError> {
        #[cfg(target_os = "linux")]
        {
            let name = unique_name();
            let scratch = make_scratch(&name)?;
            let mut seat = SandboxSeat {
                scratch,
                cgroup: None,
                ruleset: None,
                settings: String::new(),
            };
            let group = self.cgroups.make(
                &name,
                self.sandbox.max_processes.saturating_add(OWN_PROCESSES),
            )?;
            let procs = group.procs();
            seat.cgroup = Some(group);
            let mut write = vec![seat.scratch.clone()];
            write.extend(self.sandbox.write.iter().cloned());
            seat.ruleset = Some(rules::ruleset(&self.sandbox, &self.read, &write)?);
            let writable: Vec<String> = write
                .iter()
                .map(|path| hex(path.as_os_str().as_encoded_bytes()))
                .collect();
            seat.settings = settings(&[
                ("scratch", seat.scratch.to_string_lossy().as_ref()),
                ("cgroup", procs.to_string_lossy().as_ref()),
                ("nofile", &self.sandbox.max_open_files.to_string()),
                ("network", if self.sandbox.network { "1" } else { "0" }),
                ("restrict", &rules::RESTRICT_SELF.to_string()),
                ("mount_setattr", &rules::MOUNT_SETATTR.to_string()),
                ("write", &writable.join(",")),
                ("filter", &self.filter),
            ]);
            Ok(seat)
        }
        #[cfg(not(target_os = "linux"))]
        unreachable!("a plan is only made on Linux")
    }
}

/// `key=value` lines, as `python/sandbox.py` reads them.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn settings(pairs: &[(&str, &str)]) -> String {
    let mut text = String::new();
    for (key, value) in pairs {
        text.push_str(key);
        text.push('=');
        text.push_str(value);
        text.push('\n');
    }
    text
}

/// `bytes` as lowercase hex: a path in the settings, whatever bytes it holds.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A name no other child of any runner of this process has had.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "async_py-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A folder only this user may enter, under the system's temporary folder.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn make_scratch(name: &str) -> Result<PathBuf, PyRunnerError> {
    use std::os::unix::fs::DirBuilderExt;
    let path = std::env::temp_dir().join(name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(|err| {
            PyRunnerError::Startup(format!(
                "sandbox: could not make the scratch folder {}: {err}",
                path.display()
            ))
        })?;
    Ok(path)
}

/// What one child is sandboxed with; removed when dropped, once the child
/// is gone.
#[derive(Debug)]
pub(crate) struct SandboxSeat {
    scratch: PathBuf,
    #[cfg(target_os = "linux")]
    cgroup: Option<cgroup::Group>,
    ruleset: Option<OwnedFd>,
    settings: String,
}

impl SandboxSeat {
    /// The landlock ruleset the child enters, to pass to it.
    pub fn ruleset(&self) -> RawFd {
        self.ruleset.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// What the child is told: for a started child, with the ruleset's fd
    /// (which it inherits); a forked one learns the fd passed to it.
    pub fn settings(&self, with_fd: bool) -> String {
        let mut text = self.settings.clone();
        if with_fd {
            text.push_str(&settings(&[("ruleset", &self.ruleset().to_string())]));
        }
        text
    }
}

impl Drop for SandboxSeat {
    fn drop(&mut self) {
        // What the child wrote goes with it; its symlinks are not followed.
        let _ = std::fs::remove_dir_all(&self.scratch);
        #[cfg(target_os = "linux")]
        if let Some(group) = self.cgroup.take() {
            group.remove();
        }
    }
}
