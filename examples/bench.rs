//! Prints a markdown table of call latency and throughput for each backend,
//! the call builder's next to the simple commands, and the pool's.
//!
//! `cargo run --release --example bench` (all tables), `... bench calls`
//! (the call builder's only), `... bench pool` (the pool's only),
//! `... bench streams` (streams only), `... bench output` (captured
//! output's only), `... bench host` (host functions only), `... bench
//! sandbox` (the sandbox's only: subprocess backend and pool), `...
//! bench launcher` (a child over ssh to a private sshd on 127.0.0.1, next
//! to a bare ssh round trip), `... bench local` (a local child's start and
//! calls, small, for comparing two builds in turn).

use std::time::{Duration, Instant};

#[path = "bench/host.rs"]
mod host_bench;
#[cfg(feature = "subprocess")]
#[path = "bench/launcher.rs"]
mod launcher_bench;
#[cfg(feature = "subprocess")]
#[path = "bench/local.rs"]
mod local_bench;
#[path = "bench/output.rs"]
mod output_bench;
#[cfg(feature = "subprocess")]
#[path = "bench/sandbox.rs"]
mod sandbox_bench;

use async_py::{Backend, PyRunner, PyRunnerBuilder};
use serde_json::Value;

struct Row {
    what: &'static str,
    cells: Vec<String>,
}

fn median<T: PartialOrd + Copy>(mut samples: Vec<T>) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("comparable samples"));
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> String {
    if d >= Duration::from_millis(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    }
}

const ADD: &str = "def add(a, b):\n    return a + b\n";

async fn awaited_call(runner: &PyRunner) -> Duration {
    let args = || vec![Value::from(1), Value::from(2)];
    for _ in 0..2000 {
        runner.call_function("add", args()).await.unwrap();
    }
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let start = Instant::now();
        runner.call_function("add", args()).await.unwrap();
        samples.push(start.elapsed());
    }
    median(samples)
}

fn sync_call(runner: &PyRunner) -> Duration {
    let args = || vec![Value::from(1), Value::from(2)];
    for _ in 0..2000 {
        runner.call_function_sync("add", args()).unwrap();
    }
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let start = Instant::now();
        runner.call_function_sync("add", args()).unwrap();
        samples.push(start.elapsed());
    }
    median(samples)
}

async fn concurrent_calls(runner: &PyRunner, tasks: usize, calls: usize) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let runner = runner.clone();
            tokio::spawn(async move {
                for i in 0..calls {
                    let got = runner
                        .call_function("add", vec![Value::from(t), Value::from(i)])
                        .await
                        .unwrap();
                    assert_eq!(got, Value::from(t + i));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    (tasks * calls) as f64 / start.elapsed().as_secs_f64()
}

/// The median of five runs of [`concurrent_calls`] on this (multi-thread)
/// runtime, the same on a current-thread runtime of its own thread, and on
/// a multi-thread runtime with one worker thread.
async fn concurrent_rates(runner: &PyRunner, tasks: usize, calls: usize) -> [f64; 3] {
    let mut multi = Vec::new();
    for _ in 0..5 {
        multi.push(concurrent_calls(runner, tasks, calls).await);
    }
    let on_runtime = |builder: fn() -> tokio::runtime::Builder| {
        let runner = runner.clone();
        std::thread::spawn(move || {
            let runtime = builder().enable_all().build().expect("a runtime");
            median(
                (0..5)
                    .map(|_| runtime.block_on(concurrent_calls(&runner, tasks, calls)))
                    .collect(),
            )
        })
        .join()
        .expect("the runs finish")
    };
    let single = on_runtime(tokio::runtime::Builder::new_current_thread);
    let one_worker = on_runtime(|| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1);
        builder
    });
    [median(multi), single, one_worker]
}

async fn sleeping_coroutines(runner: &PyRunner, count: usize) -> Duration {
    runner
        .run("import asyncio\nasync def nap(s):\n    await asyncio.sleep(s)\n    return s\n")
        .await
        .unwrap();
    let start = Instant::now();
    let calls: Vec<_> = (0..count)
        .map(|_| {
            let runner = runner.clone();
            tokio::spawn(async move {
                runner
                    .call_async_function("nap", vec![Value::from(0.1)])
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    start.elapsed()
}

fn echo_large_list(runner: &PyRunner) -> Duration {
    runner.run_sync("def echo(x):\n    return x").unwrap();
    let list = Value::Array((0..100_000).map(Value::from).collect());
    let mut samples = Vec::new();
    for _ in 0..11 {
        let args = vec![list.clone()];
        let start = Instant::now();
        let back = runner.call_function_sync("echo", args).unwrap();
        samples.push(start.elapsed());
        assert_eq!(back.as_array().map(Vec::len), Some(100_000));
    }
    median(samples)
}

/// The real interpreter behind `python3` on PATH (not a version manager's shim).
fn python_executable() -> std::path::PathBuf {
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(output.stdout).unwrap().trim().into()
}

/// How long a bare `python -c pass` takes: the floor for a child's start.
fn bare_python_start(python: &std::path::Path) -> Duration {
    let start = Instant::now();
    std::process::Command::new(python)
        .args(["-c", "pass"])
        .status()
        .unwrap();
    start.elapsed()
}

/// Medians of 11 builds and, for a backend with a child, of a bare
/// `python -c pass` started just before each build: the two are compared
/// at the same moments of a machine whose speed drifts.
fn start_times(builder: &PyRunnerBuilder, child: bool) -> (Duration, Option<Duration>) {
    let python = python_executable();
    let mut starts = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..11 {
        if child {
            bare.push(bare_python_start(&python));
        }
        let started = Instant::now();
        let runner = builder.clone().build().expect("backend starts");
        starts.push(started.elapsed());
        runner.stop_sync().unwrap();
    }
    (median(starts), child.then(|| median(bare)))
}

fn cpu_loop(runner: &PyRunner) -> Duration {
    runner
        .run_sync(
            "def spin(n):\n    t = 0\n    for i in range(n):\n        t += i * i\n    return t\n",
        )
        .unwrap();
    runner
        .call_function_sync("spin", vec![Value::from(1000)])
        .unwrap();
    let start = Instant::now();
    runner
        .call_function_sync("spin", vec![Value::from(1_000_000)])
        .unwrap();
    start.elapsed()
}

/// Resident memory of a process, from /proc, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn python_pid(runner: &PyRunner) -> u32 {
    runner
        .eval_sync("__import__('os').getpid()")
        .unwrap()
        .as_u64()
        .unwrap() as u32
}

/// Resident memory of this process (and of the child, if Python runs in
/// one) before and after 100 000 calls.
fn memory_over_many_calls(runner: &PyRunner) -> String {
    let own = std::process::id();
    let child = python_pid(runner);
    let before = (rss_mib(own), rss_mib(child));
    for i in 0..100_000u64 {
        runner
            .call_function_sync("add", vec![Value::from(i), Value::from(1)])
            .unwrap();
    }
    let after = (rss_mib(own), rss_mib(child));
    if child == own {
        format!("{:.1} → {:.1} MiB", before.0, after.0)
    } else {
        format!(
            "parent {:.1} → {:.1} MiB, child {:.1} → {:.1} MiB",
            before.0, after.0, before.1, after.1
        )
    }
}

/// SIGKILL for a child, as a crash would end it.
fn kill_hard(pid: u32) {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}

/// From SIGKILL of the child to the next call that succeeds (median of 9).
fn death_to_next_call(runner: &PyRunner) -> String {
    if python_pid(runner) == std::process::id() {
        return "—".into();
    }
    let mut samples = Vec::new();
    for _ in 0..9 {
        let killed = python_pid(runner);
        kill_hard(killed);
        let start = Instant::now();
        // The killed process may be a contained child's stand-in, whose
        // worker goes down a moment later: the call that counts is one a
        // fresh child answered.
        loop {
            match runner.eval_sync("__import__('os').getpid()") {
                Ok(pid) if pid != killed => break,
                _ => {}
            }
        }
        samples.push(start.elapsed());
    }
    micros(median(samples))
}

/// The backends compiled in, in the tables' order.
const BACKENDS: &[Backend] = &[
    #[cfg(feature = "pyo3")]
    Backend::PyO3,
    #[cfg(feature = "subprocess")]
    Backend::Subprocess,
    #[cfg(feature = "rustpython")]
    Backend::RustPython,
];

/// Prints a table of one row per label, a column per backend of
/// [`BACKENDS`], and a blank line.
fn print_backend_table(title: &str, labels: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    print!("| {title} |");
    for backend in BACKENDS {
        print!(" {backend:?} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(BACKENDS.len()));
    for (label, cells) in labels.iter().zip(rows) {
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!();
}

/// A builder of `backend`; a child runs the real interpreter, not a shim.
fn builder_for(backend: Backend) -> PyRunnerBuilder {
    let builder = PyRunner::builder();
    match backend {
        Backend::PyO3 => builder.pyo3(),
        Backend::Subprocess => builder.subprocess().python(python_executable()),
        Backend::RustPython => builder.rustpython(),
    }
}

async fn measure(backend: Backend) -> Vec<String> {
    let builder = builder_for(backend);
    let (start_time, bare) = start_times(&builder, backend == Backend::Subprocess);
    let runner = builder.build().expect("backend starts");
    runner.run(ADD).await.unwrap();
    let awaited = micros(awaited_call(&runner).await);
    let sync = micros(sync_call(&runner));
    let eight = concurrent_rates(&runner, 8, 5000).await;
    let many = concurrent_rates(&runner, 64, 300).await;
    let rates = |[multi, single, one_worker]: [f64; 3]| {
        format!(
            "{:.0}k/s ({:.0}k/s; {:.0}k/s)",
            multi / 1e3,
            single / 1e3,
            one_worker / 1e3
        )
    };
    vec![
        match bare {
            Some(bare) => format!(
                "{} (bare `python -c pass`: {})",
                micros(start_time),
                micros(bare)
            ),
            None => micros(start_time),
        },
        awaited,
        sync,
        rates(eight),
        rates(many),
        if backend == Backend::RustPython {
            "— (no event loop)".into()
        } else {
            format!(
                "{:.3} s",
                sleeping_coroutines(&runner, 1000).await.as_secs_f64()
            )
        },
        format!("{:.1} ms", echo_large_list(&runner).as_secs_f64() * 1e3),
        format!("{:.1} ms", cpu_loop(&runner).as_secs_f64() * 1e3),
        memory_over_many_calls(&runner),
        death_to_next_call(&runner),
    ]
}

/// The call builder's table: a typed call next to `call_function` in the
/// same run, and the byte and list echoes it was made for.
mod calls_bench {
    use super::*;
    use serde_bytes::ByteBuf;

    const ECHO: &str = "def echo(x):\n    return x\n";
    /// Rounds of the two add loops, taken in turn.
    const ROUNDS: usize = 5;
    const CALLS: usize = 5000;

    /// Median of `CALLS` `call_function("add", [i, 1])` on a blocking caller.
    fn simple_add(runner: &PyRunner) -> Duration {
        let mut samples = Vec::with_capacity(CALLS);
        for i in 0..CALLS as i64 {
            let start = Instant::now();
            let args = vec![Value::from(i), Value::from(1)];
            let sum = runner.call_function_sync("add", args).unwrap();
            samples.push(start.elapsed());
            assert_eq!(sum, Value::from(i + 1));
        }
        median(samples)
    }

    /// The same with `call("add").args((i, 1)).returns::<i64>()`.
    fn typed_add(runner: &PyRunner) -> Duration {
        let mut samples = Vec::with_capacity(CALLS);
        for i in 0..CALLS as i64 {
            let start = Instant::now();
            let sum = runner
                .call("add")
                .args((i, 1))
                .returns::<i64>()
                .wait()
                .unwrap();
            samples.push(start.elapsed());
            assert_eq!(sum, i + 1);
        }
        median(samples)
    }

    /// Medians over the rounds, and the median of the per-round ratios
    /// (typed / simple) with their range.
    fn add_pair(runner: &PyRunner) -> (Duration, Duration, f64, f64, f64) {
        simple_add(runner);
        typed_add(runner);
        let (mut simples, mut typeds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let simple = simple_add(runner);
            let typed = typed_add(runner);
            ratios.push(typed.as_secs_f64() / simple.as_secs_f64());
            simples.push(simple);
            typeds.push(typed);
        }
        let low = ratios.iter().cloned().fold(f64::MAX, f64::min);
        let high = ratios.iter().cloned().fold(0.0, f64::max);
        (median(simples), median(typeds), median(ratios), low, high)
    }

    fn echo_bytes(runner: &PyRunner) -> Duration {
        let data = ByteBuf::from(vec![0x5a; 8 << 20]);
        let mut samples = Vec::new();
        for _ in 0..11 {
            let start = Instant::now();
            let back: ByteBuf = runner.call("echo").arg(&data).returns().wait().unwrap();
            samples.push(start.elapsed());
            assert_eq!(back.len(), data.len());
        }
        median(samples)
    }

    fn echo_ints(runner: &PyRunner) -> Duration {
        let list: Vec<i64> = (0..100_000).collect();
        let mut samples = Vec::new();
        for _ in 0..11 {
            let start = Instant::now();
            let back: Vec<i64> = runner.call("echo").arg(&list).returns().wait().unwrap();
            samples.push(start.elapsed());
            assert_eq!(back.len(), list.len());
        }
        median(samples)
    }

    /// What making and freeing the 100 000 ints costs the interpreter itself:
    /// the floor under any echo of them.
    fn make_and_free_ints(runner: &PyRunner) -> String {
        let seconds = runner
            .eval_sync(
                "sorted(__import__('timeit').repeat('x = list(range(100_000)); del x', \
                 number=1, repeat=11))[5]",
            )
            .unwrap()
            .as_f64()
            .unwrap();
        format!("{:.2} ms", seconds * 1e3)
    }

    /// Python's own `ProcessPoolExecutor` echoing the same 8 MiB, median of 11.
    fn executor_echo_bytes() -> Duration {
        let script = r#"
import concurrent.futures as f, time
def echo(x):
    return x
if __name__ == '__main__':
    data = b'Z' * (8 << 20)
    with f.ProcessPoolExecutor(1) as pool:
        pool.submit(echo, data).result()
        times = []
        for _ in range(11):
            start = time.perf_counter()
            pool.submit(echo, data).result()
            times.append(time.perf_counter() - start)
    print(sorted(times)[5])
"#;
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("executor_echo.py");
        std::fs::write(&file, script).unwrap();
        let output = std::process::Command::new(python_executable())
            .arg(&file)
            .output()
            .expect("python3 runs");
        let seconds: f64 = String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Duration::from_secs_f64(seconds)
    }

    pub fn calls_table() {
        let backends = BACKENDS;
        let mut rows: [Vec<String>; 6] = Default::default();
        for &backend in backends {
            let runner = builder_for(backend).build().expect("backend starts");
            runner.run_sync(ADD).unwrap();
            runner.run_sync(ECHO).unwrap();
            let (simple, typed, ratio, low, high) = add_pair(&runner);
            rows[0].push(micros(simple));
            rows[1].push(format!(
                "{} (× {ratio:.2}, rounds {low:.2}–{high:.2})",
                micros(typed)
            ));
            rows[2].push(format!("{:.2} ms", echo_bytes(&runner).as_secs_f64() * 1e3));
            rows[3].push(format!("{:.2} ms", echo_ints(&runner).as_secs_f64() * 1e3));
            rows[4].push(format!(
                "{:.2} ms",
                echo_large_list(&runner).as_secs_f64() * 1e3
            ));
            rows[5].push(make_and_free_ints(&runner));
            runner.stop_sync().unwrap();
        }
        let labels = [
            "`call_function_sync(\"add\", [i, 1])`, median of 5 rounds of 5000",
            "`call(\"add\").args((i, 1)).returns::<i64>().wait()`, the same rounds in turn (× the round's `call_function`)",
            "echo of 8 MiB as `ByteBuf`, median of 11",
            "echo of a 100 000-int list as `Vec<i64>`, median of 11",
            "the same list as `Value` through `call_function_sync`, median of 11",
            "for scale: Python's own `x = list(range(100_000)); del x`, timed in the interpreter, median of 11",
        ];
        print!("| call builder |");
        for backend in backends {
            print!(" {backend:?} |");
        }
        println!();
        println!("|---|{}", "---|".repeat(backends.len()));
        for (label, cells) in labels.iter().zip(rows) {
            println!("| {label} | {} |", cells.join(" | "));
        }
        println!();
        println!(
            "Python's `ProcessPoolExecutor(1)` echoes the same 8 MiB in {:.1} ms (median of 11, this run).",
            executor_echo_bytes().as_secs_f64() * 1e3
        );
        println!();
    }
}

/// The pool table: `PyPool` next to Python's own `ProcessPoolExecutor`.
#[cfg(feature = "subprocess")]
mod pool_bench {
    use super::*;
    use async_py::PyPool;

    /// CPU-bound pure Python: about 20 ms a call here.
    const BURN: &str = "def burn(n):\n    t = 0\n    for i in range(n):\n        t += i * i\n    return t\ndef add(a, b):\n    return a + b\n";
    const BURN_CALLS: usize = 16;
    const BURN_N: u64 = 400_000;
    /// How many pools of 1 and of 4 are started, in turn, for the start row.
    const POOL_STARTS: usize = 9;
    /// How many times 1 and 2 workers take turns at the burn.
    const BURN_PAIRS: usize = 9;

    fn pool(workers: usize) -> PyPool {
        pool_builder(workers).build().expect("the pool starts")
    }

    fn pool_builder(workers: usize) -> async_py::PyPoolBuilder {
        PyPool::builder()
            .workers(workers)
            .python(python_executable())
    }

    /// Medians of the start of a pool of 1 and of 4, taken in turn.
    fn pool_starts() -> (Duration, Duration) {
        let builders = [pool_builder(1), pool_builder(4)];
        let mut samples = [Vec::new(), Vec::new()];
        for _ in 0..POOL_STARTS {
            for (builder, samples) in builders.iter().zip(&mut samples) {
                let start = Instant::now();
                let pool = builder.clone().build().expect("the pool starts");
                samples.push(start.elapsed());
                pool.stop_sync().unwrap();
            }
        }
        let [one, four] = samples;
        (median(one), median(four))
    }

    fn mean(samples: &[f64]) -> f64 {
        samples.iter().sum::<f64>() / samples.len() as f64
    }

    /// Defines `burn` on every worker and warms them up.
    async fn prepare_burn(pool: &PyPool) {
        pool.run(BURN).await.unwrap();
        pool.map("burn", vec![vec![Value::from(1000)]; 4]).await;
    }

    /// The first two CPUs this process may run on (none if it cannot tell).
    #[cfg(target_os = "linux")]
    fn two_cpus() -> Vec<usize> {
        // SAFETY: an all-zero cpu_set_t is a valid empty set, which
        // sched_getaffinity fills in; CPU_ISSET only reads it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .take(2)
                .collect()
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn two_cpus() -> Vec<usize> {
        Vec::new()
    }

    /// Keeps process `pid` on one CPU.
    #[cfg(target_os = "linux")]
    fn pin(pid: u32, cpu: usize) {
        // SAFETY: the set is a valid cpu_set_t that lives across the call.
        let pinned = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(pid as libc::pid_t, std::mem::size_of_val(&set), &set)
        };
        assert_eq!(pinned, 0, "could not keep process {pid} on CPU {cpu}");
    }

    #[cfg(not(target_os = "linux"))]
    fn pin(_pid: u32, _cpu: usize) {
        unreachable!("no CPUs to pin to are listed off Linux")
    }

    /// Seconds for BURN_CALLS calls of `burn`, all given to one `map`.
    async fn pool_burn(pool: &PyPool) -> f64 {
        let inputs = vec![vec![Value::from(BURN_N)]; BURN_CALLS];
        let start = Instant::now();
        for result in pool.map("burn", inputs).await {
            result.unwrap();
        }
        start.elapsed().as_secs_f64()
    }

    async fn pool_callers(pool: &PyPool, callers: usize, calls: usize) -> f64 {
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|t| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for i in 0..calls {
                        let sum = pool.call_function("add", vec![t.into(), i.into()]).await;
                        assert_eq!(sum.unwrap(), Value::from(t + i));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        (callers * calls) as f64 / start.elapsed().as_secs_f64()
    }

    async fn pool_map(pool: &PyPool, items: usize) -> f64 {
        let inputs: Vec<Vec<Value>> = (0..items).map(|i| vec![i.into(), 1.into()]).collect();
        let start = Instant::now();
        let results = pool.map("add", inputs).await;
        let rate = items as f64 / start.elapsed().as_secs_f64();
        assert!(results.into_iter().all(|r| r.is_ok()));
        rate
    }

    /// Median time from SIGKILL of an idle worker's child to its replacement
    /// being ready (a new pid in `stats()`, which the pool shows only once
    /// the new child has run `startup` and every `run`), over 9 kills
    /// spread over the workers; each replacement answers calls before the
    /// next kill.
    fn death_to_replacement(pool: &PyPool) -> Duration {
        let mut samples = Vec::new();
        for round in 0..9 {
            let index = round % pool.workers();
            let pid = pool.stats()[index].pid;
            kill_hard(pid);
            let start = Instant::now();
            while pool.stats()[index].pid == pid {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "worker {index} was not replaced within 10 s"
                );
                std::thread::sleep(Duration::from_micros(100));
            }
            samples.push(start.elapsed());
            // The replacement answers a call before it may be killed in its
            // turn: a child killed before it answered anything counts as a
            // crash loop, whose restarts wait on purpose.
            let answered = pool.stats()[index].calls;
            while pool.stats()[index].calls == answered {
                let sums = pool.map_sync("add", vec![vec![1.into(), 2.into()]; 4 * pool.workers()]);
                assert!(sums.iter().all(|sum| sum == &Ok(Value::from(3))));
            }
        }
        median(samples)
    }

    /// Python's own `concurrent.futures.ProcessPoolExecutor`, run by the
    /// same interpreter: a script that takes one command a line on stdin and
    /// answers each with numbers on a line of stdout.
    const PPE_SCRIPT: &str = r#"
import concurrent.futures as cf, os, sys, time, threading
def start(n):
    t = time.perf_counter()
    with cf.ProcessPoolExecutor(n) as ex:
        list(ex.map(add, range(n), range(n)))
    return time.perf_counter() - t
def ready(n):
    ex = cf.ProcessPoolExecutor(n)
    # Calls that overlap make it start all n processes before timing.
    list(ex.map(time.sleep, [0.2] * n))
    return ex
def burn_on(ex):
    t = time.perf_counter()
    list(ex.map(burn, [BURN_N] * BURN_CALLS))
    return time.perf_counter() - t
def callers(ex, n, calls):
    def one(c):
        futures = [ex.submit(add, c, i) for i in range(calls)]
        for f in futures: f.result()
    threads = [threading.Thread(target=one, args=(c,)) for c in range(n)]
    t = time.perf_counter()
    for th in threads: th.start()
    for th in threads: th.join()
    return n * calls / (time.perf_counter() - t)
def trivial():
    with cf.ProcessPoolExecutor(2) as ex:
        list(ex.map(time.sleep, [0.2] * 2))
        rate = callers(ex, 8, 500)
        t = time.perf_counter()
        list(ex.map(add, range(10000), range(10000)))
        return rate, 10000 / (time.perf_counter() - t)
if __name__ == "__main__":
    pools = {}
    for line in sys.stdin:
        command = line.split()
        if command[0] == "starts":
            out = [start(1), start(4)]
        elif command[0] == "burn":
            n = int(command[1])
            if n not in pools:
                pools[n] = ready(n)
            if len(command) > 2:  # run by its one process, kept on that CPU
                pools[n].submit(os.sched_setaffinity, 0, {int(command[2])}).result()
            out = [burn_on(pools[n])]
        elif command[0] == "close":
            for ex in pools.values():
                ex.shutdown()
            pools.clear()
            out = []
        elif command[0] == "trivial":
            out = list(trivial())
        else:
            break
        print(" ".join(map(str, out)), flush=True)
    for ex in pools.values():
        ex.shutdown()
"#;

    /// The `ProcessPoolExecutor` script, running, with its pipes.
    struct ProcessPoolExecutor {
        child: std::process::Child,
        answers: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
        _dir: tempfile::TempDir,
    }

    impl ProcessPoolExecutor {
        fn start() -> Self {
            use std::io::BufRead;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ppe_bench.py");
            let script =
                format!("{BURN}\nBURN_N = {BURN_N}\nBURN_CALLS = {BURN_CALLS}\n{PPE_SCRIPT}");
            std::fs::write(&path, script).unwrap();
            let mut child = std::process::Command::new(python_executable())
                .arg(&path)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python runs");
            let answers = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            ProcessPoolExecutor {
                child,
                answers,
                _dir: dir,
            }
        }

        /// Sends one command; the numbers of its answer.
        fn ask(&mut self, command: &str) -> Vec<f64> {
            use std::io::Write;
            let stdin = self.child.stdin.as_mut().unwrap();
            writeln!(stdin, "{command}").unwrap();
            stdin.flush().unwrap();
            let line = self
                .answers
                .next()
                .expect("the ProcessPoolExecutor script answers")
                .unwrap();
            line.split_whitespace()
                .map(|n| n.parse().expect("a number"))
                .collect()
        }
    }

    impl Drop for ProcessPoolExecutor {
        fn drop(&mut self) {
            drop(self.child.stdin.take());
            let status = self.child.wait().unwrap();
            if !std::thread::panicking() {
                assert!(status.success(), "the ProcessPoolExecutor script failed");
            }
        }
    }

    pub async fn pool_table() {
        let (start_one, start_four) = pool_starts();
        // One and two workers take turns: the machine's speed drifts (and
        // here it sometimes changes by a third from one second to the
        // next), so the speed-up is the median of the ratios of adjacent
        // runs, not the ratio of two medians.
        // Python's pool takes its turns between this pool's, so that both
        // see the same stretches of the machine's speed.
        let mut ppe = ProcessPoolExecutor::start();
        let (one, two) = (pool(1), pool(2));
        prepare_burn(&one).await;
        prepare_burn(&two).await;
        let mut ours = [Vec::new(), Vec::new(), Vec::new()];
        let mut theirs = [Vec::new(), Vec::new(), Vec::new()];
        // The CPUs of a VM need not run at one speed (here one at times
        // took up to half as long again as the other for the same loop),
        // and a lone worker stays on the CPU it started on: one worker's
        // time is the mean of a run on each CPU, for both pools.
        let cpus = two_cpus();
        // Where the lone workers run: on each of those CPUs, or anywhere.
        let places: Vec<Option<usize>> = if cpus.is_empty() {
            vec![None]
        } else {
            cpus.iter().copied().map(Some).collect()
        };
        for _ in 0..BURN_PAIRS {
            let mut a = Vec::new();
            for &place in &places {
                if let Some(cpu) = place {
                    let pid = one.stats()[0].pid;
                    assert_ne!(pid, 0, "the one-worker pool has a child");
                    pin(pid, cpu);
                }
                a.push(pool_burn(&one).await);
            }
            let (a, b) = (mean(&a), pool_burn(&two).await);
            ours[0].push(a);
            ours[1].push(b);
            ours[2].push(a / b);
            let a: Vec<f64> = places
                .iter()
                .map(|place| match place {
                    Some(cpu) => ppe.ask(&format!("burn 1 {cpu}"))[0],
                    None => ppe.ask("burn 1")[0],
                })
                .collect();
            let (a, b) = (mean(&a), ppe.ask("burn 2")[0]);
            theirs[0].push(a);
            theirs[1].push(b);
            theirs[2].push(a / b);
        }
        one.stop().await.unwrap();
        let [burn_one, burn_two, speedup] = ours.map(median);
        let [ppe_one, ppe_two, ppe_speedup] = theirs.map(median);
        two.run("def add(a, b):\n    return a + b").await.unwrap();
        pool_callers(&two, 8, 500).await;
        let mut rates = Vec::new();
        for _ in 0..5 {
            rates.push(pool_callers(&two, 8, 5000).await);
        }
        let callers = median(rates);
        let mapped = pool_map(&two, 10_000).await;
        let replaced = death_to_replacement(&two);
        two.stop().await.unwrap();
        // Its burn pools end first, as this pool's do.
        ppe.ask("close");
        let ppe_starts = ppe.ask("starts");
        let ppe_trivial = ppe.ask("trivial");
        drop(ppe);
        println!("| pool measure | `PyPool` | `ProcessPoolExecutor` |");
        println!("|---|---|---|");
        println!(
            "| start, 1 worker / 4 workers (`PyPool`: medians of {POOL_STARTS}, taken in turn) | {} / {} | {} / {} |",
            micros(start_one),
            micros(start_four),
            micros(Duration::from_secs_f64(ppe_starts[0])),
            micros(Duration::from_secs_f64(ppe_starts[1]))
        );
        let held = match cpus.len() {
            0 => "not held on a CPU".to_string(),
            1 => "held on the one CPU".to_string(),
            n => format!("mean of a run on each of {n} CPUs"),
        };
        println!(
            "| {BURN_CALLS} CPU-bound calls (~{BURN_N} loop turns each), 1 worker ({held}) / 2 workers, medians of {BURN_PAIRS} (speed-up: median of paired runs; the two pools take turns) | {:.3} s / {:.3} s ({:.2}×) | {:.3} s / {:.3} s ({:.2}×) |",
            burn_one,
            burn_two,
            speedup,
            ppe_one,
            ppe_two,
            ppe_speedup
        );
        println!(
            "| trivial calls from 8 callers, 2 workers (`PyPool`: 8 × 5000 calls, median of 5; `ProcessPoolExecutor`: 8 × 500 pipelined) | {:.0}k/s | {:.1}k/s |",
            callers / 1000.0,
            ppe_trivial[0] / 1000.0
        );
        println!(
            "| `map` over 10 000 trivial calls, 2 workers | {:.0}k items/s | {:.1}k items/s |",
            mapped / 1000.0,
            ppe_trivial[1] / 1000.0
        );
        println!(
            "| a worker's child killed → its replacement ready, median of 9 | {} | — |",
            micros(replaced)
        );
    }
}

/// The streams table: a generator's items through `call(..).stream()`.
mod streams_bench {
    use super::*;
    use futures_util::StreamExt;

    const GENERATORS: &str = r#"
import time
def ints(n):
    yield from range(n)
def stamped():
    yield time.monotonic()
    time.sleep(0.05)
"#;

    /// This process's `CLOCK_MONOTONIC`, the clock of Python's
    /// `time.monotonic()` on Linux, in seconds.
    fn monotonic() -> f64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
    }

    /// Items per second through a stream of `count` ints, read as `T`;
    /// `Err` if the backend cannot stream.
    async fn rate<T>(runner: &PyRunner, count: u64) -> Result<f64, String>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let start = Instant::now();
        let mut stream = runner.call("ints").arg(count).returns::<T>().stream();
        let mut seen = 0;
        while let Some(item) = stream.next().await {
            item.map_err(|err| err.to_string())?;
            seen += 1;
        }
        assert_eq!(seen, count);
        Ok(count as f64 / start.elapsed().as_secs_f64())
    }

    /// How long after its `yield` the first item of a generator that then
    /// sleeps reaches the consumer.
    async fn first_item(runner: &PyRunner) -> Result<Duration, String> {
        let mut stream = runner.call("stamped").returns::<f64>().stream();
        let yielded = match stream.next().await {
            Some(item) => item.map_err(|err| err.to_string())?,
            None => return Err("no item".into()),
        };
        let late = monotonic() - yielded;
        while stream.next().await.is_some() {}
        Ok(Duration::from_secs_f64(late.max(0.0)))
    }

    fn summary(samples: Vec<f64>, show: impl Fn(f64) -> String) -> String {
        let low = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let high = samples.iter().copied().fold(0.0, f64::max);
        format!("{} ({}–{})", show(median(samples)), show(low), show(high))
    }

    pub async fn streams_table() {
        let backends = BACKENDS;
        let mut rows: [Vec<String>; 3] = Default::default();
        for &backend in backends {
            let runner = builder_for(backend).build().expect("backend starts");
            runner.run(GENERATORS).await.unwrap();
            let per_second = |rate: f64| format!("{:.0} k/s", rate / 1e3);
            let mut cells = Vec::new();
            let mut values = Vec::new();
            let mut typed = Vec::new();
            let mut firsts = Vec::new();
            let mut unsupported = None;
            for _ in 0..5 {
                match (
                    rate::<Value>(&runner, 100_000).await,
                    rate::<i64>(&runner, 100_000).await,
                    first_item(&runner).await,
                ) {
                    (Ok(value), Ok(int), Ok(first)) => {
                        values.push(value);
                        typed.push(int);
                        firsts.push(first.as_secs_f64());
                    }
                    (Err(err), ..) | (_, Err(err), _) | (.., Err(err)) => {
                        unsupported = Some(err);
                        break;
                    }
                }
            }
            match unsupported {
                Some(err) => cells.extend([err.clone(), err.clone(), err]),
                None => {
                    cells.push(summary(values, per_second));
                    cells.push(summary(typed, per_second));
                    cells.push(summary(firsts, |s| micros(Duration::from_secs_f64(s))));
                }
            }
            for (row, cell) in rows.iter_mut().zip(cells) {
                row.push(cell);
            }
            runner.stop().await.unwrap();
        }
        let labels = [
            "100 000 ints as `Value` items, items/s: median (min–max) of 5",
            "the same as `returns::<i64>()` items",
            "first item of a generator that then sleeps, after its `yield`: median (min–max) of 5",
        ];
        print_backend_table("streams", &labels, rows);
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("streams") {
        streams_bench::streams_table().await;
        return;
    }
    #[cfg(feature = "subprocess")]
    if std::env::args().nth(1).as_deref() == Some("pool") {
        pool_bench::pool_table().await;
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("calls") {
        calls_bench::calls_table();
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("output") {
        output_bench::output_table();
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("host") {
        host_bench::host_table().await;
        return;
    }
    #[cfg(feature = "subprocess")]
    if std::env::args().nth(1).as_deref() == Some("sandbox") {
        sandbox_bench::sandbox_table().await;
        return;
    }
    #[cfg(feature = "subprocess")]
    if std::env::args().nth(1).as_deref() == Some("launcher") {
        launcher_bench::launcher_table().await;
        return;
    }
    #[cfg(feature = "subprocess")]
    if std::env::args().nth(1).as_deref() == Some("local") {
        local_bench::local_table().await;
        return;
    }
    let backends = BACKENDS;
    let labels = [
        "start (build to ready)",
        "awaited `call_function(\"add\", [1, 2])`, median",
        "`call_function_sync`, median",
        "8 tasks × 5000 calls, median of 5 (on a current-thread runtime; on a multi-thread one with 1 worker thread)",
        "64 tasks × 300 calls, median of 5 (on a current-thread runtime; on a multi-thread one with 1 worker thread)",
        "1000 concurrent `asyncio.sleep(0.1)` calls",
        "echo of a 100 000-int list, median",
        "CPU loop, 1M iterations",
        "resident memory before → after 100 000 calls",
        "child killed → next call succeeds, median",
    ];
    let mut rows: Vec<Row> = labels
        .iter()
        .map(|what| Row {
            what,
            cells: Vec::new(),
        })
        .collect();
    for &backend in backends {
        for (row, cell) in rows.iter_mut().zip(measure(backend).await) {
            row.cells.push(cell);
        }
    }
    print!("| measure |");
    for backend in backends {
        print!(" {backend:?} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(backends.len()));
    for row in rows {
        println!("| {} | {} |", row.what, row.cells.join(" | "));
    }
    println!();
    println!(
        "A child's start is measured next to a bare `python -c pass` of the same \
         interpreter, each started just before one of the 11 builds."
    );
    if !cfg!(feature = "rustpython") {
        println!("(The RustPython column needs `--features rustpython`.)");
    }
    println!();
    calls_bench::calls_table();
    output_bench::output_table();
    host_bench::host_table().await;
    streams_bench::streams_table().await;
    #[cfg(feature = "subprocess")]
    pool_bench::pool_table().await;
    #[cfg(feature = "subprocess")]
    sandbox_bench::sandbox_table().await;
}
