//! The sandbox table: a sandboxed child's start and calls next to an
//! unsandboxed one's, subprocess backend and pool
//! (`cargo run --release --all-features --example bench -- sandbox`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use async_py::{PyPool, PyPoolBuilder, PyRunner, PyRunnerBuilder, Sandbox, Value};

use super::local_bench::awaited_loop;
use super::{median, python_executable};

/// Rounds of every measure; a cell is the median of the rounds' medians.
const ROUNDS: usize = 5;
/// Starts of each kind per round, taken in turn (paired).
const STARTS: usize = 10;
/// Calls of each loop.
const CALLS: usize = 10_000;
/// Loops of each runner per round, the two taking turns.
const CALL_TURNS: usize = 4;
/// Pool starts of each kind per round, taken in turn.
const POOL_STARTS: usize = 5;

const F: &str = "def f(i):\n    return i\n";

fn runner_builder(python: &Path, sandboxed: bool) -> PyRunnerBuilder {
    let builder = PyRunner::builder().subprocess().python(python);
    if sandboxed {
        builder.sandbox(Sandbox::new())
    } else {
        builder
    }
}

fn pool_builder(python: &Path, sandboxed: bool) -> PyPoolBuilder {
    let builder = PyPool::builder().workers(2).python(python);
    if sandboxed {
        builder.sandbox(Sandbox::new())
    } else {
        builder
    }
}

fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1e3)
}

fn us(seconds: f64) -> String {
    format!("{:.2} µs", seconds * 1e6)
}

/// "median (min–max)" of the rounds' values.
fn spread(rounds: &[f64], show: impl Fn(f64) -> String) -> String {
    let low = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let high = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{} ({}–{})",
        show(median(rounds.to_vec())),
        show(low),
        show(high)
    )
}

fn list(rounds: &[f64], show: impl Fn(f64) -> String) -> String {
    rounds
        .iter()
        .map(|&v| show(v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One start of a runner: (build → first `eval("1")` answered, of which
/// `build()`, then `stop_sync()`), in seconds.
fn one_start(builder: &PyRunnerBuilder) -> [f64; 3] {
    let started = Instant::now();
    let runner = builder.clone().build().expect("the runner starts");
    let built = started.elapsed();
    assert_eq!(runner.eval_sync("1").unwrap(), Value::from(1));
    let answered = started.elapsed();
    let stopping = Instant::now();
    runner.stop_sync().unwrap();
    drop(runner);
    let stopped = stopping.elapsed();
    [
        answered.as_secs_f64(),
        built.as_secs_f64(),
        stopped.as_secs_f64(),
    ]
}

/// One start of a pool of 2: build → `run("pass")` answered by both
/// workers, then `stop_sync()`, in seconds.
fn one_pool_start(builder: &PyPoolBuilder) -> [f64; 2] {
    let started = Instant::now();
    let pool = builder.clone().build().expect("the pool starts");
    pool.run_sync("pass").unwrap();
    let answered = started.elapsed();
    let stopping = Instant::now();
    pool.stop_sync().unwrap();
    drop(pool);
    [answered.as_secs_f64(), stopping.elapsed().as_secs_f64()]
}

/// Per round: medians of plain and sandboxed of each of the `N` figures
/// `one` gives, and the median of the paired differences of the first.
struct Paired<const N: usize> {
    plain: [Vec<f64>; N],
    sandboxed: [Vec<f64>; N],
    difference: Vec<f64>,
}

fn paired<B, const N: usize>(
    plain: &B,
    sandboxed: &B,
    per_round: usize,
    one: impl Fn(&B) -> [f64; N],
) -> Paired<N> {
    let mut out = Paired {
        plain: std::array::from_fn(|_| Vec::new()),
        sandboxed: std::array::from_fn(|_| Vec::new()),
        difference: Vec::new(),
    };
    for _ in 0..ROUNDS {
        let mut a: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
        let mut b: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
        let mut diffs = Vec::new();
        for i in 0..per_round {
            // Which goes first alternates, so neither always follows the
            // other's stop.
            let (x, y) = if i % 2 == 0 {
                let x = one(plain);
                (x, one(sandboxed))
            } else {
                let y = one(sandboxed);
                (one(plain), y)
            };
            for k in 0..N {
                a[k].push(x[k]);
                b[k].push(y[k]);
            }
            diffs.push(y[0] - x[0]);
        }
        for k in 0..N {
            out.plain[k].push(median(a[k].clone()));
            out.sandboxed[k].push(median(b[k].clone()));
        }
        out.difference.push(median(diffs));
    }
    out
}

/// Seconds per call of `CALLS` awaited `eval("1")`.
async fn eval_loop(runner: &PyRunner) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        runner.eval("1").await.unwrap();
    }
    start.elapsed().as_secs_f64() / CALLS as f64
}

/// Per round, plain and sandboxed per-call times (each the median of
/// `CALL_TURNS` loops, the runners taking turns) and their ratio, for
/// `call_function` ([0]) and `eval` ([1]).
async fn calls(python: &Path) -> [[Vec<f64>; 3]; 2] {
    let plain = runner_builder(python, false).build().unwrap();
    let sandboxed = runner_builder(python, true).build().unwrap();
    for runner in [&plain, &sandboxed] {
        runner.run(F).await.unwrap();
        awaited_loop(runner, CALLS).await;
        eval_loop(runner).await;
    }
    let mut out: [[Vec<f64>; 3]; 2] = Default::default();
    for _ in 0..ROUNDS {
        let mut got: [[Vec<f64>; 2]; 2] = Default::default();
        for turn in 0..CALL_TURNS {
            let order = if turn % 2 == 0 {
                [(&plain, 0), (&sandboxed, 1)]
            } else {
                [(&sandboxed, 1), (&plain, 0)]
            };
            for (runner, which) in order {
                got[0][which].push(awaited_loop(runner, CALLS).await);
            }
            for (runner, which) in order {
                got[1][which].push(eval_loop(runner).await);
            }
        }
        for (kind, [a, b]) in got.into_iter().enumerate() {
            let (a, b) = (median(a), median(b));
            out[kind][0].push(a);
            out[kind][1].push(b);
            out[kind][2].push(b / a);
        }
    }
    plain.stop().await.unwrap();
    sandboxed.stop().await.unwrap();
    out
}

pub async fn sandbox_table() {
    let python: PathBuf = python_executable();
    let plain = runner_builder(&python, false);
    let sandboxed = runner_builder(&python, true);
    // The first sandboxed build of a process asks the interpreter for its
    // paths (cached afterwards): one warm-up of each before measuring.
    one_start(&sandboxed);
    one_start(&plain);
    let starts = paired(&plain, &sandboxed, STARTS, one_start);
    let [call, eval] = calls(&python).await;
    let (pool_plain, pool_sandboxed) = (pool_builder(&python, false), pool_builder(&python, true));
    one_pool_start(&pool_sandboxed);
    one_pool_start(&pool_plain);
    let pools = paired(&pool_plain, &pool_sandboxed, POOL_STARTS, one_pool_start);

    let ratio = |r: f64| format!("{r:.2}×");
    let signed = |s: f64| format!("{:+.1} ms", s * 1e3);
    println!("| sandbox measure | unsandboxed | `Sandbox::new()` | difference / ratio |");
    println!("|---|---|---|---|");
    println!(
        "| start: build → first `eval(\"1\")` answered (medians of {STARTS} paired starts per round; median (min–max) of {ROUNDS} rounds) | {} | {} | {} |",
        spread(&starts.plain[0], ms),
        spread(&starts.sandboxed[0], ms),
        spread(&starts.difference, signed),
    );
    println!(
        "| of which `build()` | {} | {} | |",
        spread(&starts.plain[1], ms),
        spread(&starts.sandboxed[1], ms),
    );
    println!(
        "| `stop_sync()` after it (child ends; sandboxed: scratch folder and cgroup removed) | {} | {} | |",
        spread(&starts.plain[2], ms),
        spread(&starts.sandboxed[2], ms),
    );
    println!(
        "| awaited `call_function(\"f\", [i])`, per call of a {CALLS}-call loop (median of {CALL_TURNS} loops per round, runners taking turns; median (min–max) of {ROUNDS} rounds) | {} | {} | {} |",
        spread(&call[0], us),
        spread(&call[1], us),
        spread(&call[2], ratio),
    );
    println!(
        "| awaited `eval(\"1\")`, per call, the same | {} | {} | {} |",
        spread(&eval[0], us),
        spread(&eval[1], us),
        spread(&eval[2], ratio),
    );
    println!(
        "| pool of 2 (zygote forks): build → `run(\"pass\")` answered by both (medians of {POOL_STARTS} paired starts per round; of {ROUNDS} rounds) | {} | {} | {} |",
        spread(&pools.plain[0], ms),
        spread(&pools.sandboxed[0], ms),
        spread(&pools.difference, signed),
    );
    println!(
        "| the pool's `stop_sync()` | {} | {} | |",
        spread(&pools.plain[1], ms),
        spread(&pools.sandboxed[1], ms),
    );
    println!();
    println!("Per round (medians):");
    println!();
    println!("- start, unsandboxed: {}", list(&starts.plain[0], ms));
    println!("- start, sandboxed: {}", list(&starts.sandboxed[0], ms));
    println!(
        "- start, paired difference: {}",
        list(&starts.difference, signed)
    );
    println!("- `call_function` ratio: {}", list(&call[2], ratio));
    println!("- `eval` ratio: {}", list(&eval[2], ratio));
    println!(
        "- pool start, paired difference: {}",
        list(&pools.difference, signed)
    );
    println!();
    println!(
        "One sandboxed and one unsandboxed runner (and pool) were started and stopped \
         before measuring: the first sandboxed build of a process asks the interpreter \
         for its paths (about 20 ms, cached afterwards)."
    );
    println!();
    let start_gap = median(starts.difference.clone());
    let call_ratio = median(call[2].clone());
    println!(
        "Targets: sandboxed start within 10 ms of unsandboxed: {} ({}); sandboxed call within 10%: {} ({}).",
        if start_gap <= 0.010 { "met" } else { "missed" },
        signed(start_gap),
        if call_ratio <= 1.10 { "met" } else { "missed" },
        ratio(call_ratio),
    );
}
