//! What a sandboxed child may do: [`Sandbox`], given to
//! [`PyRunnerBuilder::sandbox`](crate::PyRunnerBuilder::sandbox) or
//! [`PyPoolBuilder::sandbox`](crate::PyPoolBuilder::sandbox). How it is
//! made is the subprocess backend's (`src/subprocess/sandbox/`).

use std::path::PathBuf;

/// Rules for a child that runs code you do not trust: a language model's
/// output, a user's script. Linux only, subprocess backend and pool only.
///
/// By default the child
/// - reads only its interpreter, the standard library, its venv and the
///   import path it starts with, the system's shared libraries, and
///   `/dev/null`, `/dev/zero`, `/dev/random`, `/dev/urandom` (plus
///   [`allow_read`](Self::allow_read) paths); anything else (`/etc/passwd`,
///   `/root`, `/proc`) is `PermissionError`;
/// - writes only a private scratch folder, its working folder and `TMPDIR`
///   and `HOME`, made for it and removed when it ends (plus
///   [`allow_write`](Self::allow_write) paths, and a `/dev/shm` of its
///   own); every other mount is read-only to it;
/// - has no network: it cannot make a socket of any kind (TCP, UDP, Unix,
///   netlink), only a Unix stream pair; [`network(true)`](Self::network)
///   gives it IP;
/// - runs no program outside what it may read, and whatever it runs is under
///   the same rules; gains no privileges (`no_new_privs`) and holds no
///   capability at all, also when this process runs as root (so it reads
///   another user's file only by its "other" permission bits); makes no
///   namespace, mount, keyring, BPF program or io_uring;
/// - sees only the environment given with `env(..)`, with `TMPDIR` and
///   `HOME` its scratch folder unless `env(..)` sets them, and no file
///   descriptor of this process's but its pipes;
/// - has at most [`max_processes`](Self::max_processes) processes and
///   threads besides the worker's own (a pids cgroup of its own), and at
///   most [`max_open_files`](Self::max_open_files) open files;
/// - cannot signal this process or anything outside its sandbox: it sees
///   only the processes of its own pid namespace (`os.getppid()` is 0).
///
/// The rules are entered by the child before any user code runs, by every
/// child: a pool's, a replacement, one its zygote forked. A rule the kernel
/// cannot give fails `build()` with
/// [`Startup`](crate::PyRunnerError::Startup) naming what is missing; no
/// child ever runs without it. See the README, "Running untrusted code",
/// for what the sandbox does not cover, and the kernel it needs.
///
/// ```no_run
/// # async fn demo() -> Result<(), async_py::PyRunnerError> {
/// use async_py::{PyRunner, Sandbox};
///
/// let runner = PyRunner::builder()
///     .subprocess()
///     .sandbox(Sandbox::new().allow_read("/srv/data").max_processes(4))
///     .timeout(std::time::Duration::from_secs(5))
///     .build()?;
/// runner.run("open('/etc/passwd')").await.unwrap_err(); // PermissionError
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub(crate) read: Vec<PathBuf>,
    pub(crate) write: Vec<PathBuf>,
    pub(crate) network: bool,
    pub(crate) max_processes: u32,
    pub(crate) max_open_files: u32,
    pub(crate) landlock_abi: Option<u32>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    /// The default rules (see [`Sandbox`]): no network, 64 processes and
    /// threads, 256 open files.
    pub fn new() -> Sandbox {
        Sandbox {
            read: Vec::new(),
            write: Vec::new(),
            network: false,
            max_processes: 64,
            max_open_files: 256,
            landlock_abi: None,
        }
    }

    /// Lets the child read `path`: a file, or a folder and all beneath it.
    /// It must exist when the runner is built (`Startup` if not); a
    /// relative path is taken from this process's working folder.
    pub fn allow_read(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.read.push(path.into());
        self
    }

    /// Lets the child read and write `path`: a file, or a folder and all
    /// beneath it (making and removing files in it too). It must exist when
    /// the runner is built, and may not hold or lie within what a child
    /// loads before it enters its sandbox (its interpreter, import path,
    /// the system's libraries, the compiled worker's cache): `Startup` if
    /// it does, as a child could plant code there that the next one runs.
    pub fn allow_write(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.write.push(path.into());
        self
    }

    /// `true`: the child has this machine's IP network (`AF_INET`,
    /// `AF_INET6`, and netlink, which name lookups use) as any process has;
    /// other families stay refused, Unix sockets among them, as a daemon's
    /// socket on the filesystem (a container engine's, say) is no part of a
    /// network. `false` (the default): it cannot make a socket
    /// (`socket.socket()` raises `PermissionError`). Either way a Unix
    /// stream `socket.socketpair()` and pipes work, and so do asyncio and
    /// `multiprocessing`'s `fork` contexts; its `forkserver` and `Manager`,
    /// which listen on a Unix socket, do not.
    pub fn network(mut self, allowed: bool) -> Sandbox {
        self.network = allowed;
        self
    }

    /// The most processes and threads the child may have at once besides
    /// the worker's own: a fork past it fails (`BlockingIOError`), a thread
    /// past it `RuntimeError`. Default 64.
    pub fn max_processes(mut self, n: u32) -> Sandbox {
        self.max_processes = n;
        self
    }

    /// The most files (and pipes, and sockets) the child may have open at
    /// once (`RLIMIT_NOFILE`), the worker's own few included; past it an
    /// open fails with `OSError` (EMFILE). Default 256.
    pub fn max_open_files(mut self, n: u32) -> Sandbox {
        self.max_open_files = n;
        self
    }

    /// Demands landlock ABI `abi` of the kernel, as a newer rule would: for
    /// the tests of the `Startup` error a kernel without a rule gives.
    #[doc(hidden)]
    pub fn require_landlock_abi(mut self, abi: u32) -> Sandbox {
        self.landlock_abi = Some(abi);
        self
    }
}
