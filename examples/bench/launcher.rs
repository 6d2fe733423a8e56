//! The launcher table: a child started through `ssh` to a private sshd on
//! 127.0.0.1, its calls next to a bare echo over one ssh connection, and
//! its start (`cargo run --release --all-features --example bench --
//! launcher`).
//!
//! The sshd is this bench's own: a temp folder with a host key, a user key
//! and a config, `/usr/sbin/sshd -D -e -f config` on a free port, killed
//! (with every session it started) and the folder removed at the end.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_py::{PyRunner, PyRunnerBuilder, Value};

use super::local_bench::{awaited_loop, list, ms, spread, sync_loop, us};
use super::{median, python_executable};

/// Rounds of every measure; a cell is the median of the rounds' medians.
const ROUNDS: usize = 5;
/// Round trips of the echo loop, and calls of each call loop.
const TRIPS: usize = 5000;
/// Loops of each kind per round, the kinds taking turns.
const TURNS: usize = 3;
/// Starts per round, each next to a bare `ssh ... python -c pass`.
const STARTS: usize = 4;
/// The echo's frame: 4-byte big-endian length, then the payload.
const PAYLOAD: &[u8] = b"twenty bytes of echo";

const F: &str = "def f(i):\n    return i\n";

/// The far side of the reference: reads 4-byte-length-prefixed frames from
/// stdin with `os.read` and writes each back whole.
const ECHO: &str = r#"import os
def take(n):
    got = b""
    while len(got) < n:
        more = os.read(0, n - len(got))
        if not more:
            raise SystemExit
        got += more
    return got
while True:
    head = take(4)
    os.write(1, head + take(int.from_bytes(head, "big")))
"#;

/// `word` quoted for a POSIX shell: ssh joins the remote words with spaces
/// and hands the line to the user's shell.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A private sshd on 127.0.0.1 that lets the current user in with a key of
/// its own. Dropping it kills the server and its sessions, then removes
/// the folder.
struct Sshd {
    server: Child,
    port: u16,
    user: String,
    key: PathBuf,
    /// Keys, config and log; removed when dropped, after the server is killed.
    _dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Sshd {
        // Debian's sshd refuses to run without its privilege-separation folder.
        fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("async_py-bench-sshd-")
            .tempdir()
            .expect("a temp folder");
        let host_key = dir.path().join("host_ed25519");
        let key = dir.path().join("user_ed25519");
        for path in [&host_key, &key] {
            let ok = Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-N",
                    "",
                    "-t",
                    "ed25519",
                    "-C",
                    "async_py bench",
                    "-f",
                ])
                .arg(path)
                .stdin(Stdio::null())
                .status()
                .expect("ssh-keygen runs")
                .success();
            assert!(ok, "ssh-keygen failed");
        }
        let authorized = dir.path().join("authorized_keys");
        fs::copy(key.with_extension("pub"), &authorized).expect("authorized_keys");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.path().join("sshd_config");
        let lines = [
            format!("ListenAddress 127.0.0.1:{port}"),
            format!("HostKey {}", host_key.display()),
            format!("PidFile {}", dir.path().join("sshd.pid").display()),
            format!("AuthorizedKeysFile {}", authorized.display()),
            "PermitRootLogin prohibit-password".into(),
            "PubkeyAuthentication yes".into(),
            "PasswordAuthentication no".into(),
            "KbdInteractiveAuthentication no".into(),
            "UsePAM no".into(),
            "StrictModes no".into(),
            "PermitUserRC no".into(),
            "PrintMotd no".into(),
            "PrintLastLog no".into(),
            "X11Forwarding no".into(),
            "UseDNS no".into(),
            "MaxStartups 100".into(),
            "MaxSessions 100".into(),
        ];
        fs::write(&config, lines.join("\n") + "\n").expect("sshd_config");
        let log = dir.path().join("sshd.log");
        let server = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("sshd's log"))
            .process_group(0)
            .spawn()
            .expect("/usr/sbin/sshd runs (openssh-server)");
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let mut sshd = Sshd {
            server,
            port,
            user,
            key,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = sshd.server.try_wait() {
                panic!(
                    "sshd exited ({status}): {}",
                    fs::read_to_string(&log).unwrap()
                );
            }
            let ok = sshd
                .command(&["true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return sshd;
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not let us in within 20 s: {}",
                fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `ssh` command line a remote command follows: no tty, no config
    /// of this machine's, this server's key and port, no host key check.
    fn prefix(&self) -> Vec<String> {
        let mut words: Vec<String> = ["ssh", "-T", "-F", "/dev/null", "-i"]
            .map(String::from)
            .into();
        words.push(self.key.display().to_string());
        words.extend(["-p".into(), self.port.to_string()]);
        for option in [
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "LogLevel=ERROR",
        ] {
            words.extend(["-o".into(), option.into()]);
        }
        words.push(format!("{}@127.0.0.1", self.user));
        words
    }

    /// The prefix followed by `remote`, words that ssh joins with spaces.
    fn command(&self, remote: &[&str]) -> Command {
        let prefix = self.prefix();
        let mut command = Command::new(&prefix[0]);
        command.args(&prefix[1..]).args(remote);
        command
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Each connection and session is a session of its own (sshd calls
        // setsid): find them while they are the server's descendants.
        let pid = self.server.id() as libc::pid_t;
        let below = descendants(pid);
        // SAFETY: plain kill(2) of the server's group and of processes it
        // started.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            for p in below {
                libc::kill(p, libc::SIGKILL);
            }
        }
        let _ = self.server.wait();
        // `dir` goes after this, with the keys and config.
    }
}

/// Every process below `root`, from /proc.
fn descendants(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children: HashMap<libc::pid_t, Vec<libc::pid_t>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(pid);
        }
    }
    let (mut found, mut next) = (Vec::new(), vec![root]);
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            next.push(child);
        }
    }
    found
}

/// One ssh connection running the echo loop on the far side.
struct Echo {
    child: Child,
    frame: Vec<u8>,
    back: Vec<u8>,
}

impl Echo {
    fn start(sshd: &Sshd, python: &Path) -> Echo {
        let python = python.to_str().expect("a UTF-8 path");
        let child = sshd
            .command(&[&sh_quote(python), "-u", "-c", &sh_quote(ECHO)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ssh runs");
        let mut frame = (PAYLOAD.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(PAYLOAD);
        let back = vec![0; frame.len()];
        Echo { child, frame, back }
    }

    /// Seconds per round trip of `TRIPS` frames, each written once its
    /// predecessor is back.
    fn round_trips(&mut self) -> f64 {
        let stdin = self.child.stdin.as_mut().unwrap();
        let stdout = self.child.stdout.as_mut().unwrap();
        let start = Instant::now();
        for _ in 0..TRIPS {
            stdin.write_all(&self.frame).unwrap();
            stdout.read_exact(&mut self.back).unwrap();
        }
        let seconds = start.elapsed().as_secs_f64() / TRIPS as f64;
        assert_eq!(self.back, self.frame);
        seconds
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Build → first `eval("1")` answered, and `stop_sync()` after it, in seconds.
fn one_start(builder: &PyRunnerBuilder) -> [f64; 2] {
    let started = Instant::now();
    let runner = builder.clone().build().expect("the runner starts over ssh");
    assert_eq!(runner.eval_sync("1").unwrap(), Value::from(1));
    let answered = started.elapsed().as_secs_f64();
    let stopping = Instant::now();
    runner.stop_sync().unwrap();
    drop(runner);
    [answered, stopping.elapsed().as_secs_f64()]
}

/// A bare `ssh ... python -c pass`, in seconds: the floor of a start.
fn bare_start(sshd: &Sshd, python: &Path) -> f64 {
    let started = Instant::now();
    let ok = sshd
        .command(&[&sh_quote(python.to_str().unwrap()), "-c", "pass"])
        .stdin(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    started.elapsed().as_secs_f64()
}

pub async fn launcher_table() {
    let python = python_executable();
    let sshd = Sshd::start();
    let builder = PyRunner::builder()
        .subprocess()
        .launcher(sshd.prefix())
        .python(&python);
    let local = PyRunner::builder()
        .subprocess()
        .python(&python)
        .build()
        .unwrap();
    let runner = builder.clone().build().expect("a runner over ssh");
    let mut echo = Echo::start(&sshd, &python);
    for r in [&runner, &local] {
        r.run(F).await.unwrap();
    }
    // Warm-up of each loop before measuring.
    echo.round_trips();
    sync_loop(&runner, TRIPS);
    awaited_loop(&runner, TRIPS).await;
    sync_loop(&local, TRIPS);
    bare_start(&sshd, &python);
    one_start(&builder);

    let mut rounds: [Vec<f64>; 8] = Default::default();
    let [echoes, syncs, awaits, sync_ratio, await_ratio, locals, starts, bares] = &mut rounds;
    let mut stops = Vec::new();
    for _ in 0..ROUNDS {
        let (mut e, mut s, mut a, mut l) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for turn in 0..TURNS {
            // The echo goes first and last in turn, so that neither kind
            // always follows the other.
            if turn % 2 == 0 {
                e.push(echo.round_trips());
                s.push(sync_loop(&runner, TRIPS));
                a.push(awaited_loop(&runner, TRIPS).await);
            } else {
                a.push(awaited_loop(&runner, TRIPS).await);
                s.push(sync_loop(&runner, TRIPS));
                e.push(echo.round_trips());
            }
            l.push(sync_loop(&local, TRIPS));
        }
        let (e, s, a) = (median(e), median(s), median(a));
        echoes.push(e);
        syncs.push(s);
        awaits.push(a);
        sync_ratio.push(s / e);
        await_ratio.push(a / e);
        locals.push(median(l));
        let (mut st, mut b, mut sp) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..STARTS {
            b.push(bare_start(&sshd, &python));
            let [answered, stopped] = one_start(&builder);
            st.push(answered);
            sp.push(stopped);
        }
        starts.push(median(st));
        bares.push(median(b));
        stops.push(median(sp));
    }
    echo.stop();
    runner.stop().await.unwrap();
    local.stop().await.unwrap();
    drop(sshd);

    let ratio = |r: f64| format!("{r:.2}×");
    println!("| launcher measure (ssh to 127.0.0.1) | median (min–max) of {ROUNDS} rounds |");
    println!("|---|---|");
    println!(
        "| bare ssh round trip: a {}-byte frame echoed by a Python `os.read` loop over one ssh connection, per trip of a {TRIPS}-trip loop (median of {TURNS} loops per round) | {} |",
        PAYLOAD.len() + 4,
        spread(echoes, us)
    );
    println!(
        "| `call_function_sync(\"f\", [i])` over ssh, per call of a {TRIPS}-call loop (median of {TURNS} loops per round, in turn with the echo) | {} |",
        spread(syncs, us)
    );
    println!(
        "| the same ÷ the bare round trip | {} |",
        spread(sync_ratio, ratio)
    );
    println!(
        "| awaited `call_function(\"f\", [i])` over ssh, the same | {} |",
        spread(awaits, us)
    );
    println!(
        "| the same ÷ the bare round trip | {} |",
        spread(await_ratio, ratio)
    );
    println!(
        "| for comparison: `call_function_sync` to a local child (no launcher), the same loops | {} |",
        spread(locals, us)
    );
    println!(
        "| start over ssh: build → first `eval(\"1\")` answered (median of {STARTS} per round) | {} |",
        spread(starts, ms)
    );
    println!(
        "| bare `ssh ... python -c pass`, each just before one of those starts | {} |",
        spread(bares, ms)
    );
    println!(
        "| `stop_sync()` of a runner over ssh | {} |",
        spread(&stops, ms)
    );
    println!();
    println!("Per round (medians):");
    println!();
    println!("- bare round trip: {}", list(echoes, us));
    println!("- `call_function_sync`: {}", list(syncs, us));
    println!("- awaited `call_function`: {}", list(awaits, us));
    println!("- sync ÷ bare: {}", list(sync_ratio, ratio));
    println!("- awaited ÷ bare: {}", list(await_ratio, ratio));
    println!("- start over ssh: {}", list(starts, ms));
    println!("- bare `ssh ... python -c pass`: {}", list(bares, ms));
    println!();
    let worst = median(sync_ratio.clone()).max(median(await_ratio.clone()));
    println!(
        "Target: a call over ssh within 2× the bare round trip: {} ({}).",
        if worst <= 2.0 { "met" } else { "missed" },
        ratio(worst)
    );
}
