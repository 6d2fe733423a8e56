//! A sandboxed child (`crate::Sandbox`): what is made for it here, and what
//! it is told to enter.
//!
//! Made here, once per runner ([`SandboxPlan`]): the paths it may read (its
//! interpreter's, asked of the interpreter once per process, see `probe`),
//! the pids cgroup it will get a group in (`cgroup`), the seccomp filters
//! (`rules`, compiled by seccompiler). Made here for each child
//! ([`SandboxSeat`]): its folder (scratch and shm), its cgroup, its landlock
//! ruleset (by the landlock crate), all removed when the child is gone; and
//! the move of the child into its cgroup, as soon as it is started.
//!
//! The child enters it itself, in `python/sandbox.py`, before any user code
//! runs: it closes inherited fds, waits to be in its cgroup, sets its
//! open-file limit, makes its user, pid, IPC, mount (and without network,
//! network) namespaces, and then, in the worker, makes every mount but its
//! writable folders read-only, gives up its capabilities, and enters
//! `no_new_privs`, the ruleset (`landlock_restrict_self`, one system call
//! on the fd made here) and the filters (`prctl(PR_SET_SECCOMP)` on the
//! programs compiled here). A started child is told in its environment
//! (`ENV`) and inherits the ruleset's fd; a forked one is told in the
//! zygote's fork request, the fd passed with it. A step that fails ends the
//! child with the reason on its stderr, which `build()` quotes in its
//! `Startup` error: no child serves unsandboxed.

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

/// Where POSIX shared memory and semaphores live (`multiprocessing`'s
/// locks): each sandboxed child binds a folder of its own there.
const SHM: &str = "/dev/shm";

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
            let mut rules = sandbox.clone();
            rules.read = absolute(&sandbox.read)?;
            rules.write = absolute(&sandbox.write)?;
            // What runs before a child enters its sandbox: the interpreter,
            // its import path (folders yet to be made too), the libraries
            // it loads, what its environment names, the compiled worker.
            let interpreter = probe::interpreter_paths(python, env)?;
            let system = rules::system_paths();
            let mut loaded = interpreter.loaded.clone();
            loaded.extend(system.iter().cloned());
            loaded.extend(super::child::compiled_worker_folder());
            loaded.extend(named_by(env));
            loaded.push(PathBuf::from("/etc/ld.so.preload"));
            if let Some((write, code)) = rules.write.iter().find_map(|write| {
                loaded
                    .iter()
                    .find(|code| code.starts_with(write) || write.starts_with(code))
                    .map(|code| (write, code))
            }) {
                return Err(PyRunnerError::Startup(format!(
                    "sandbox: allow_write({}) would let a child change {}, which later \
                     children run before they enter their sandbox",
                    write.display(),
                    code.display()
                )));
            }
            // Other children's folders are made there.
            let temp = std::env::temp_dir();
            let temp = std::fs::canonicalize(&temp).unwrap_or(temp);
            if let Some(write) = rules.write.iter().find(|write| temp.starts_with(write)) {
                return Err(PyRunnerError::Startup(format!(
                    "sandbox: allow_write({}) would let a child reach other sandboxed \
                     children's folders, made in {}",
                    write.display(),
                    temp.display()
                )));
            }
            let mut read = interpreter.read;
            read.extend(system);
            read.extend(rules.read.iter().cloned());
            let cgroups = cgroup::Parent::find()?;
            sweep_stale(cgroups.dir(), false);
            sweep_stale(&std::env::temp_dir(), true);
            Ok(Arc::new(SandboxPlan {
                filter: rules::filter(&rules)?,
                sandbox: rules,
                read,
                cgroups,
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
            remove_left();
            let (name, base) = make_scratch()?;
            let mut seat = SandboxSeat {
                scratch: base.join("scratch"),
                base,
                cgroup: None,
                ruleset: None,
                settings: String::new(),
            };
            // Its POSIX shared memory (multiprocessing's semaphores), bound
            // over /dev/shm: not the machine's, and not within its scratch
            // folder (nor the ruleset's rule on /dev/shm, which a mount over
            // it would hide).
            let shm = Path::new(SHM).is_dir().then(|| seat.base.join("shm"));
            for dir in std::iter::once(&seat.scratch).chain(&shm) {
                std::fs::create_dir(dir).map_err(|err| {
                    PyRunnerError::Startup(format!(
                        "sandbox: could not make {}: {err}",
                        dir.display()
                    ))
                })?;
            }
            let group = self.cgroups.make(
                &name,
                self.sandbox.max_processes.saturating_add(OWN_PROCESSES),
            )?;
            let group_path = group.path().to_string();
            seat.cgroup = Some(group);
            let mut write = vec![seat.scratch.clone()];
            write.extend(self.sandbox.write.iter().cloned());
            let fenced: Vec<PathBuf> = write.iter().cloned().chain(shm.clone()).collect();
            seat.ruleset = Some(rules::ruleset(&self.sandbox, &self.read, &fenced)?);
            let writable: Vec<String> = write.iter().map(|path| hex_path(path)).collect();
            seat.settings = settings(&[
                ("scratch", &hex_path(&seat.scratch)),
                ("cgroup", &hex(group_path.as_bytes())),
                ("nofile", &self.sandbox.max_open_files.to_string()),
                ("network", if self.sandbox.network { "1" } else { "0" }),
                ("restrict", &rules::RESTRICT_SELF.to_string()),
                ("mount_setattr", &rules::MOUNT_SETATTR.to_string()),
                ("write", &writable.join(",")),
                ("shm", &shm.as_deref().map(hex_path).unwrap_or_default()),
                ("filter", &self.filter),
            ]);
            Ok(seat)
        }
        #[cfg(not(target_os = "linux"))]
        unreachable!("a plan is only made on Linux")
    }
}

impl Drop for SandboxPlan {
    fn drop(&mut self) {
        // What this runner's children left is tried once more.
        remove_left();
    }
}

/// The variables of a child's environment that name code its interpreter
/// or dynamic loader takes before the sandbox is entered.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const CODE_VARIABLES: [&str; 8] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONPYCACHEPREFIX",
    "PYTHONUSERBASE",
    "PYTHONSTARTUP",
];

/// The absolute paths that `env`'s [`CODE_VARIABLES`] name (lists split
/// at `:` and, for `LD_PRELOAD`, spaces).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn named_by(env: &[(OsString, OsString)]) -> Vec<PathBuf> {
    env.iter()
        .filter(|(key, _)| CODE_VARIABLES.iter().any(|name| key == name))
        .flat_map(|(_, value)| {
            value
                .as_encoded_bytes()
                .split(|&byte| byte == b':' || byte == b' ')
                .filter(|part| part.first() == Some(&b'/'))
                .map(|part| {
                    PathBuf::from(
                        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(part),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `paths`, each made absolute and resolved (a child and this process may
/// not share a working folder); `Startup` for one that does not exist.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn absolute(paths: &[PathBuf]) -> Result<Vec<PathBuf>, PyRunnerError> {
    paths
        .iter()
        .map(|path| {
            std::fs::canonicalize(path).map_err(|err| {
                PyRunnerError::Startup(format!(
                    "sandbox: {} cannot be allowed: {err}",
                    path.display()
                ))
            })
        })
        .collect()
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

/// `bytes` as lowercase hex.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A path in the settings, whatever bytes it holds.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn hex_path(path: &Path) -> String {
    hex(path.as_os_str().as_encoded_bytes())
}

/// A fresh folder only this user may enter, under the system's temporary
/// folder, and its name, which the child's cgroup shares. The name is not
/// to be guessed: another user could make it first.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn make_scratch() -> Result<(String, PathBuf), PyRunnerError> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..8 {
        let mut random = [0u8; 8];
        // SAFETY: getrandom(2) writes at most `random.len()` bytes into it.
        let got = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
        if got != random.len() as isize {
            let seq = NEXT.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_nanos() as u64);
            random = (nanos ^ seq.rotate_left(32)).to_ne_bytes();
        }
        let name = format!("async_py-{}-{}", std::process::id(), hex(&random));
        let path = std::env::temp_dir().join(&name);
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok((name, path)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => last = Some(err),
            Err(err) => {
                last = Some(err);
                break;
            }
        }
    }
    Err(PyRunnerError::Startup(format!(
        "sandbox: could not make a scratch folder under {}: {}",
        std::env::temp_dir().display(),
        last.map_or_else(String::new, |err| err.to_string())
    )))
}

/// What one child is sandboxed with; removed when dropped, once the child
/// is gone.
#[derive(Debug)]
pub(crate) struct SandboxSeat {
    /// The folder of all it may write: `scratch` and `shm`.
    base: PathBuf,
    scratch: PathBuf,
    #[cfg(target_os = "linux")]
    cgroup: Option<cgroup::Group>,
    ruleset: Option<OwnedFd>,
    settings: String,
}

impl SandboxSeat {
    /// The child's working folder.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// Moves the child `pid`, as soon as it is started (or forked), into its
    /// cgroup, where it waits to see itself before it forks anything.
    pub fn admit(&self, pid: u32) -> Result<(), PyRunnerError> {
        #[cfg(target_os = "linux")]
        if let Some(group) = &self.cgroup {
            group.admit(pid).map_err(|err| {
                PyRunnerError::Startup(format!(
                    "sandbox: could not move child {pid} into its pids cgroup: {err}"
                ))
            })?;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = pid;
        Ok(())
    }

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

/// A child's cgroup and scratch folder not yet removed: the cgroup still
/// held a process (the last of a namespace is released a moment after the
/// child is reaped), or the folder could not be emptied.
#[cfg(target_os = "linux")]
struct Left {
    group: Option<cgroup::Group>,
    scratch: Option<PathBuf>,
}

#[cfg(target_os = "linux")]
static LEFT: std::sync::Mutex<Vec<Left>> = std::sync::Mutex::new(Vec::new());

#[cfg(target_os = "linux")]
impl Left {
    /// Removes what it can, the cgroup first: once it is empty, no process
    /// of the child's writes to its folder any more. True when all is gone.
    fn remove(&mut self, tries: u32) -> bool {
        if let Some(group) = &self.group {
            if !group.remove(tries) {
                return false;
            }
            self.group = None;
        }
        if let Some(scratch) = &self.scratch {
            if !remove_scratch(scratch) {
                return false;
            }
            self.scratch = None;
        }
        true
    }
}

/// Removes what a process now gone made under `dir` for its children
/// (`async_py-<pid>-<hex>`): empty cgroups, or (`folders`) scratch folders
/// with all in them. A process that ended with a runner still alive, or was
/// killed, left them behind; those of a live process are its own.
#[cfg(target_os = "linux")]
fn sweep_stale(dir: &Path, folders: bool) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|name| name.strip_prefix("async_py-"))
            .and_then(|rest| rest.split_once('-'))
            .filter(|(_, tag)| !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let path = entry.path();
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        if folders {
            remove_scratch(&path);
        } else {
            // Only an empty group goes; one still holding a process stays.
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// Tries again what earlier children left.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn remove_left() {
    #[cfg(target_os = "linux")]
    LEFT.lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain_mut(|left| !left.remove(1));
}

/// Removes a scratch folder and all in it, symlinks unfollowed; a folder its
/// child made unwritable (which only root could empty) is made writable
/// first. True when it is gone.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn remove_scratch(scratch: &Path) -> bool {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    fn open_up(dir: &Path) {
        // Through an fd of the folder itself: a symlink put in its place
        // meanwhile is not followed.
        let Ok(folder) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .open(dir)
        else {
            return;
        };
        let _ = folder.set_permissions(std::fs::Permissions::from_mode(0o700));
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                open_up(&entry.path());
            }
        }
    }
    match std::fs::remove_dir_all(scratch) {
        Ok(()) => true,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => {
            open_up(scratch);
            std::fs::remove_dir_all(scratch).is_ok() || !scratch.exists()
        }
    }
}

impl Drop for SandboxSeat {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        {
            let mut left = Left {
                group: self.cgroup.take(),
                scratch: Some(self.base.clone()),
            };
            if !left.remove(cgroup::REMOVE_TRIES) {
                LEFT.lock().unwrap_or_else(|p| p.into_inner()).push(left);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = remove_scratch(&self.base);
    }
}
