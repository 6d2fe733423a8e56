//! Helpers for the fault tests of the subprocess backend.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_py::{PyRunner, PyRunnerBuilder};

pub fn python() -> PathBuf {
    std::env::var_os("PYO3_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

pub fn builder() -> PyRunnerBuilder {
    PyRunner::builder().subprocess().python(python())
}

pub fn runner() -> PyRunner {
    builder().build().expect("the subprocess backend starts")
}

pub fn child_pid(runner: &PyRunner) -> u32 {
    runner
        .eval_sync("__import__('os').getpid()")
        .expect("the child answers")
        .as_u64()
        .expect("a pid") as u32
}

/// Whether a process exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Whether a process is gone entirely: neither running nor a zombie.
pub fn is_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A start that failed at a start timeout of one second, as its error says.
pub fn assert_start_timed_out<T: std::fmt::Debug>(built: Result<T, async_py::PyRunnerError>) {
    match built {
        Err(async_py::PyRunnerError::Startup(message)) => {
            assert!(
                message.contains("1s") && message.contains("start timeout"),
                "{message}"
            )
        }
        other => panic!("expected a Startup error, got {other:?}"),
    }
}

/// Runs `body` on a thread of its own and fails the test if it has not
/// returned within `seconds`: a hang shows as a failure, not a stuck run.
pub fn within<T: Send + 'static>(seconds: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)));
    });
    match outcome.recv_timeout(Duration::from_secs(seconds)) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("still running after {seconds} s: it hangs"),
    }
}

/// Polls `condition` for up to ten seconds (a deadline for hangs, not a timing assertion).
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` to `pid`; false if there is no such process (any more).
pub fn try_kill(pid: u32, signal: i32) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("kill runs")
        .success()
}

pub fn kill(pid: u32, signal: i32) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Python that finds the worker's protocol output fd (a write-only pipe that
/// is not stderr's) and writes raw bytes to it, behind the worker's back.
pub fn write_to_protocol(bytes: &str) -> String {
    format!(
        "import os, stat, fcntl\n\
         err = os.fstat(2).st_ino\n\
         for fd in range(3, 256):\n\
         \x20   try:\n\
         \x20       st = os.fstat(fd)\n\
         \x20   except OSError:\n\
         \x20       continue\n\
         \x20   writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY\n\
         \x20   if stat.S_ISFIFO(st.st_mode) and writable and st.st_ino != err:\n\
         \x20       os.write(fd, {bytes})\n\
         \x20       break\n\
         else:\n\
         \x20   raise RuntimeError('no protocol fd found')\n"
    )
}

/// `future`, whose wake-ups each hold up the thread that wakes it for a
/// while first, as a wake-up can on a busy machine (the woken thread takes
/// the waker's core). A timeout wakes its caller just before the child
/// gets SIGINT: this widens the gap between the parent's last look at the
/// child and the signal, so a race there is hit often, not once in a while.
pub async fn woken_slowly<F: std::future::Future>(future: F) -> F::Output {
    struct SlowWaker(std::task::Waker);
    impl std::task::Wake for SlowWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            std::thread::sleep(Duration::from_micros(300));
            self.0.wake_by_ref();
        }
    }
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let waker = std::task::Waker::from(std::sync::Arc::new(SlowWaker(cx.waker().clone())));
        future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
    })
    .await
}

/// Python for the tests of a command that ends at its limit: `busy(seconds)`
/// spins for that long; `record(round)` notes in the file `runs` that it ran
/// (the file outlives a replaced child), runs on for a millisecond and
/// returns its pid.
pub fn race_defs(runs: &std::path::Path) -> String {
    format!(
        "import os, time\n\
         def busy(seconds):\n\
         \x20   end = time.perf_counter() + seconds\n\
         \x20   while time.perf_counter() < end:\n\
         \x20       pass\n\
         def record(round):\n\
         \x20   with open({:?}, 'a') as runs:\n\
         \x20       runs.write('%d\\n' % round)\n\
         \x20   busy(0.001)\n\
         \x20   return os.getpid()",
        runs.display().to_string()
    )
}

/// The rounds below `rounds` that `record` did not note exactly once.
pub fn rounds_not_run_once(runs: &std::path::Path, rounds: usize) -> Vec<usize> {
    let text = std::fs::read_to_string(runs).unwrap_or_default();
    let mut counted = vec![0; rounds];
    for line in text.lines() {
        counted[line.parse::<usize>().expect("a round")] += 1;
    }
    (0..rounds).filter(|&round| counted[round] != 1).collect()
}

/// CPU time this process has used so far (all its threads), in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage(2) only writes the rusage it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// How many times a startup made by [`counting_startup`] ran.
pub fn count_starts(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |text| text.len())
}

/// Startup code that notes each run in `file` (see [`count_starts`]), then
/// `then`.
pub fn counting_startup(file: &std::path::Path, then: &str) -> String {
    format!(
        "open({:?}, 'a').write('x')\n{then}",
        file.to_str().expect("a UTF-8 temp path")
    )
}

/// A stand-in for an interpreter, at `dir/python`: a shell script that
/// ignores its arguments and runs `body`. [`HELLO`] in `body` writes a
/// valid hello frame to stdout.
pub fn fake_python(dir: &std::path::Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Shell that writes the smallest hello the parent takes: the frame of
/// `["hello", 5]`.
pub const HELLO: &str = r"printf '\000\000\000\010\222\245hello\005'";

/// Python defining `outer_pid(inner)`: the pid that a process of the
/// worker's pid namespace, `inner` there, has where these tests look (None
/// if it is gone). Outside any namespace of its own the two are the same.
pub const OUTER_PID: &str = r#"
import os
def outer_pid(inner):
    here = os.readlink('/proc/self/ns/pid')
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            if os.readlink('/proc/%s/ns/pid' % entry) != here:
                continue
            with open('/proc/%s/status' % entry) as status:
                for line in status:
                    if line.startswith('NSpid:') and int(line.split()[-1]) == inner:
                        return int(entry)
        except (OSError, ValueError):
            pass
    return None
"#;

/// Python that forks a copy of the worker which leaves its process group
/// and session (`os.setsid()`), writes its pid as seen from here into the
/// file that the Python expression `report` names, and sleeps for five
/// minutes.
pub fn setsid_copy(report: &str) -> String {
    format!(
        "import os, time\n\
         report = {report}\n\
         if os.fork() == 0:\n\
         \x20   os.setsid()\n\
         \x20   with open(report + '.partial', 'w') as partial:\n\
         \x20       partial.write(os.readlink('/proc/self'))\n\
         \x20   os.rename(report + '.partial', report)\n\
         \x20   time.sleep(300)\n\
         \x20   os._exit(0)"
    )
}

/// `path` as a Python string literal.
pub fn python_text(path: &std::path::Path) -> String {
    format!("{:?}", path.to_str().expect("a UTF-8 temp path"))
}

/// The pid written into `report`, once it is there.
pub fn reported_pid(report: &std::path::Path) -> u32 {
    eventually("the pid is reported", || report.exists());
    std::fs::read_to_string(report)
        .unwrap()
        .trim()
        .parse()
        .expect("a pid")
}

/// SIGKILLs a process when dropped, so that a failed test leaves nothing
/// running.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if is_running(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
}
