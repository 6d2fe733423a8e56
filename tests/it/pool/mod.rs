//! Helpers for the pool tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;

use async_py::{PyPool, PyPoolBuilder, Value};

pub fn builder(workers: usize) -> PyPoolBuilder {
    let python = std::env::var_os("PYO3_PYTHON").unwrap_or_else(|| "python3".into());
    PyPool::builder().workers(workers).python(python)
}

pub fn pool(workers: usize) -> PyPool {
    builder(workers).build().expect("the pool starts")
}

/// Definitions the tests share: `pid()`, and `meet(me, other, folder)`, which
/// leaves a file named `me` and waits up to ten seconds for one named
/// `other`, so two calls return only if they run at the same time.
pub const DEFS: &str = r#"
import os, time
def pid():
    return os.getpid()
def var(name):
    return globals()[name]
def meet(me, other, folder):
    open(os.path.join(folder, me), "w").close()
    deadline = time.monotonic() + 10
    while not os.path.exists(os.path.join(folder, other)):
        if time.monotonic() > deadline:
            raise TimeoutError("%s never came" % other)
        time.sleep(0.001)
    return os.getpid()
def hold(folder):
    """Blocks until a file named `go` appears in `folder`; returns the pid."""
    open(os.path.join(folder, "held"), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.001)
    return os.getpid()
"#;

pub fn pids(pool: &PyPool) -> BTreeSet<u32> {
    pool.stats().iter().map(|worker| worker.pid).collect()
}

pub fn text(path: &Path) -> Value {
    Value::from(path.to_str().expect("a UTF-8 temp path"))
}

/// The pids that answered `pid()` across `calls` calls sent at once.
pub fn answering_pids(pool: &PyPool, calls: usize) -> BTreeSet<u32> {
    pool.map_sync("pid", vec![Vec::new(); calls])
        .into_iter()
        .map(|pid| pid.expect("pid() answers").as_u64().expect("a pid") as u32)
        .collect()
}

/// Runs `body` on a thread of its own and fails the test if it has not
/// returned within `seconds`: a hang shows as a failure, not a stuck run.
pub fn within<T: Send + 'static>(seconds: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)));
    });
    match outcome.recv_timeout(std::time::Duration::from_secs(seconds)) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("still running after {seconds} s: it hangs"),
    }
}

/// Writes `text` to `path` in one step (a file beside it, renamed over it):
/// a worker that retries a start reading the file meanwhile finds it whole
/// or not at all, never empty.
pub fn restore(path: &Path, text: &str) {
    let beside = path.with_extension("part");
    std::fs::write(&beside, text).unwrap();
    std::fs::rename(&beside, path).unwrap();
}

/// Runs the future `body` makes on a tokio runtime of its own, on a thread
/// of its own, failing past `seconds` (see [`within`]): a current-thread
/// runtime with `threads` 0, else a multi-thread one with that many workers.
pub fn on_runtime<F>(
    threads: usize,
    seconds: u64,
    body: impl FnOnce() -> F + Send + 'static,
) -> F::Output
where
    F: std::future::Future,
    F::Output: Send + 'static,
{
    within(seconds, move || {
        let mut builder = if threads == 0 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        };
        builder.enable_all().build().unwrap().block_on(body())
    })
}

/// Starts, on a thread of its own, a run that reads `folder/flag` into `X`
/// on every worker and then, on the worker whose child is `held`, waits
/// for `folder/go`; returns once every worker has read the file.
pub fn run_held_on(
    pool: &PyPool,
    folder: &Path,
    held: u32,
) -> std::thread::JoinHandle<Result<(), async_py::PyRunnerError>> {
    let file = |name: &str| folder.join(name).to_str().unwrap().to_owned();
    let code = format!(
        "X = open({flag:?}).read()\n\
         if os.getpid() == {held}:\n\
         \x20   open({waiting:?}, 'w').close()\n\
         \x20   while not os.path.exists({go:?}):\n\
         \x20       time.sleep(0.005)\n\
         else:\n\
         \x20   open({done:?}, 'w').close()",
        flag = file("flag"),
        waiting = file("waiting"),
        go = file("go"),
        done = file("done"),
    );
    let run = std::thread::spawn({
        let pool = pool.clone();
        move || pool.run_sync(&code)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(folder.join("waiting").exists() && folder.join("done").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "every worker read the file"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    run
}
