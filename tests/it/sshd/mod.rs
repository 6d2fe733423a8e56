//! A real OpenSSH server on 127.0.0.1, one per test, for the tests of
//! children started through a launcher prefix (`ssh -T host`).
//!
//! `Sshd::start()` makes a private folder with a host key, a user key and
//! the config, and runs `/usr/sbin/sshd -D -e` on a free port in a process
//! group of its own; it returns once a login with the user key has run a
//! command. `prefix()` is the `ssh` command line a remote command follows.
//! Dropping the `Sshd` ends the server and every session it started, and
//! removes the folder.
//!
//! No global state: each test starts its own server, so the tests can run
//! as threads of one process (`cargo test`) or as processes (nextest).
//!
//! `ssh` joins the remote command's words with spaces and hands the line to
//! the user's shell: quote code for a POSIX shell (`sh_quote`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Debian's sshd; it must be run by an absolute path (it re-executes itself).
const SSHD: &str = "/usr/sbin/sshd";
/// sshd's privilege-separation folder (Debian's build), made if missing.
const PRIVSEP_DIR: &str = "/run/sshd";
/// How long `start` waits, over all its tries, for a server that answers.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Tries at a free port that another process took first.
const PORT_TRIES: u32 = 5;

/// A running sshd on 127.0.0.1 that lets the current user in with a key of
/// its own; see the module's doc.
pub struct Sshd {
    // Declared first so that it is dropped (the server killed) before the
    // folder holding its config and keys goes.
    server: Server,
    port: u16,
    user: String,
    user_key: PathBuf,
    dir: TempDir,
}

impl Sshd {
    /// Starts a server and waits until it runs a command for `prefix()`.
    /// Panics, with sshd's own log, if it does not within about 20 s.
    pub fn start() -> Sshd {
        let deadline = Instant::now() + START_DEADLINE;
        privsep_dir();
        let mut dir = tempfile::Builder::new()
            .prefix("async_py-sshd-")
            .tempdir()
            .expect("a temp folder for sshd");
        let host_key = dir.path().join("host_ed25519");
        let user_key = dir.path().join("user_ed25519");
        keygen(&host_key);
        keygen(&user_key);
        let authorized_keys = dir.path().join("authorized_keys");
        fs::copy(user_key.with_extension("pub"), &authorized_keys).expect("authorized_keys");
        let user = current_user();
        let config = dir.path().join("sshd_config");
        let log = dir.path().join("sshd.log");

        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port();
            fs::write(
                &config,
                sshd_config(dir.path(), port, &host_key, &authorized_keys),
            )
            .expect("sshd_config");
            let server = Server::spawn(&config, &log);
            let mut sshd = Sshd {
                server,
                port,
                user: user.clone(),
                user_key: user_key.clone(),
                dir,
            };
            match sshd.wait_ready(deadline) {
                Ok(()) => return sshd,
                Err(failure) => {
                    let Sshd {
                        server, dir: kept, ..
                    } = sshd;
                    drop(server);
                    let log = fs::read_to_string(&log).unwrap_or_default();
                    // Another process took the port between our probe and
                    // sshd's bind: try another.
                    if matches!(failure, Failure::Exited(_))
                        && log.contains("Address already in use")
                        && tries < PORT_TRIES
                        && Instant::now() < deadline
                    {
                        dir = kept;
                        continue;
                    }
                    panic!(
                        "sshd on 127.0.0.1:{port} did not come up ({failure}, try {tries}).\n\
                         sshd's stderr:\n{log}"
                    );
                }
            }
        }
    }

    /// The `ssh` command line to put before a remote command, as its words:
    /// no tty, this server's key and port, no host key check, no password,
    /// no prompt, no config files of this machine's.
    pub fn prefix(&self) -> Vec<String> {
        let mut words: Vec<String> = [
            "ssh",
            "-T",
            "-F",
            "/dev/null",
            "-i",
            self.user_key.to_str().expect("a UTF-8 temp path"),
            "-p",
            &self.port.to_string(),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        for option in [
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "LogLevel=ERROR",
        ] {
            words.push("-o".into());
            words.push(option.into());
        }
        words.push(format!("{}@127.0.0.1", self.user));
        words
    }

    /// The port sshd listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user the prefix logs in as: the user this process runs as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The server's pid, also its process group's.
    pub fn pid(&self) -> u32 {
        self.server.child.id()
    }

    /// The private folder of keys, config and sshd's log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What sshd has written to its stderr so far (one line a login).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A `Command` of the prefix followed by `remote`, the remote command's
    /// words (joined with spaces by ssh, for the user's shell to split).
    pub fn command<S: AsRef<str>>(&self, remote: &[S]) -> Command {
        let prefix = self.prefix();
        let mut command = Command::new(&prefix[0]);
        command.args(&prefix[1..]);
        command.args(remote.iter().map(AsRef::as_ref));
        command
    }

    fn wait_ready(&mut self, deadline: Instant) -> Result<(), Failure> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut last_probe = String::new();
        loop {
            if let Ok(Some(status)) = self.server.child.try_wait() {
                return Err(Failure::Exited(status));
            }
            if Instant::now() >= deadline {
                return Err(Failure::Deadline(last_probe));
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                match self.probe(deadline) {
                    Ok(()) => return Ok(()),
                    Err(why) => last_probe = why,
                }
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// Runs `true` through the prefix; the error is what went wrong.
    fn probe(&self, deadline: Instant) -> Result<(), String> {
        let mut child = self
            .command(&["true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("ssh could not be run: {e}"))?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut stderr);
                    }
                    return if status.success() {
                        Ok(())
                    } else {
                        Err(format!("ssh ... true: {status}; ssh's stderr: {stderr}"))
                    };
                }
                Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("ssh ... true did not finish in time".into());
                }
            }
        }
    }
}

/// The interpreter the tests run locally (`faults::python()`: $PYO3_PYTHON
/// or `python3` on this process's PATH), as the absolute path of its real
/// executable: a remote session has sshd's PATH and the user's shell
/// startup, where `python3` can be another interpreter.
pub fn remote_python() -> String {
    let python = crate::faults::python();
    let out = Command::new(&python)
        .args(["-c", "import sys; print(sys.executable)"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{} could not be run: {e}", python.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        python.display(),
        out.status
    );
    let path = String::from_utf8(out.stdout).expect("a UTF-8 path");
    let path = path.trim_end_matches('\n').to_owned();
    assert!(
        Path::new(&path).is_absolute(),
        "sys.executable of {} is {path:?}",
        python.display()
    );
    path
}

/// `word` quoted for a POSIX shell: in single quotes, each `'` as `'\''`.
pub fn sh_quote(word: &str) -> String {
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

enum Failure {
    /// sshd ended before it answered.
    Exited(ExitStatus),
    /// The deadline passed; the last probe's error, if one ran.
    Deadline(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Exited(status) => write!(f, "sshd exited: {status}"),
            Failure::Deadline(probe) if probe.is_empty() => {
                write!(f, "no TCP connection within {START_DEADLINE:?}")
            }
            Failure::Deadline(probe) => {
                write!(f, "no login within {START_DEADLINE:?}; last try: {probe}")
            }
        }
    }
}

/// The sshd process; dropping it kills the server and its sessions.
struct Server {
    child: Child,
}

impl Server {
    fn spawn(config: &Path, log: &Path) -> Server {
        let log = File::create(log).expect("sshd's log file");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{SSHD} could not be run ({e}); .ci/run installs openssh-server")
            });
        Server { child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            // Already ended and reaped: its pid may be another's now.
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // Each connection and each session's command is a session of its
        // own (sshd calls setsid), out of the server's group: find them
        // while they are still the server's descendants, then end them all.
        let descendants = descendants(pid);
        // SAFETY: plain syscalls on pids and groups this fixture started.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            let own_group = libc::getpgrp();
            for &p in &descendants {
                let group = libc::getpgid(p);
                if group > 1 && group != own_group {
                    libc::kill(-group, libc::SIGKILL);
                }
                libc::kill(p, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// Every process below `root`, from /proc, parents before children.
fn descendants(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children: HashMap<libc::pid_t, Vec<libc::pid_t>> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The parent's pid is the second field after the command's ")".
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            next.push(child);
        }
    }
    found
}

/// sshd refuses to start without its privilege-separation folder, which
/// Debian makes only in the service's start. Tests may race to make it.
fn privsep_dir() {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(PRIVSEP_DIR)
    {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => panic!("{PRIVSEP_DIR} could not be made: {e}"),
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-t", "ed25519", "-C", "async_py test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ssh-keygen could not be run: {e}"));
    assert!(
        out.status.success(),
        "ssh-keygen failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn current_user() -> String {
    if let Ok(out) = Command::new("id").arg("-un").output() {
        if out.status.success() {
            let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !name.is_empty() {
                return name;
            }
        }
    }
    match std::env::var("USER") {
        Ok(name) if !name.is_empty() => name,
        _ => panic!("the current user's name: neither `id -un` nor $USER gave it"),
    }
}

/// A port on 127.0.0.1 that was free a moment ago (sshd may still lose it
/// to another process; `start` then tries another).
fn free_port() -> u16 {
    let mut last = None;
    for _ in 0..20 {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
            Ok(listener) => return listener.local_addr().expect("a bound address").port(),
            Err(e) => {
                last = Some(e);
                sleep(Duration::from_millis(50));
            }
        }
    }
    panic!("no free port on 127.0.0.1: {last:?}");
}

fn sshd_config(dir: &Path, port: u16, host_key: &Path, authorized_keys: &Path) -> String {
    let mut config = String::new();
    let mut line = |key: &str, value: &dyn std::fmt::Display| {
        writeln!(config, "{key} {value}").unwrap();
    };
    line("ListenAddress", &format!("127.0.0.1:{port}"));
    line("HostKey", &host_key.display());
    line("PidFile", &dir.join("sshd.pid").display());
    line("AuthorizedKeysFile", &authorized_keys.display());
    // The tests run as root here: key logins only.
    line("PermitRootLogin", &"prohibit-password");
    line("PubkeyAuthentication", &"yes");
    line("PasswordAuthentication", &"no");
    line("KbdInteractiveAuthentication", &"no");
    line("UsePAM", &"no");
    // The temp folder and keys are checked by nobody: they are ours.
    line("StrictModes", &"no");
    line("LoginGraceTime", &"15");
    // Tests in parallel, each with several children and probes.
    line("MaxStartups", &"100");
    line("MaxSessions", &"100");
    // Nothing of this machine's in a session: no ~/.ssh/rc, no banner.
    line("PermitUserRC", &"no");
    line("PermitUserEnvironment", &"no");
    line("PrintMotd", &"no");
    line("PrintLastLog", &"no");
    line("X11Forwarding", &"no");
    line("UseDNS", &"no");
    line("LogLevel", &"INFO");
    config
}
