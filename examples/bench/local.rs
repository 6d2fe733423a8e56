//! The local-child table: a subprocess runner's start and call, no
//! launcher (`cargo run --release --example bench -- local`). Small and
//! quick, so that two builds can be run in turn, paired, to see whether a
//! change moved the local child's figures. It uses only API that older
//! builds have too, so the same file can be put into an older checkout's
//! bench to measure that build with its own code.

use std::path::Path;
use std::time::Instant;

use async_py::{PyRunner, PyRunnerBuilder, Value};

use super::{median, python_executable};

/// Rounds of every measure; a cell is the median of the rounds' medians.
const ROUNDS: usize = 5;
/// Starts per round.
const STARTS: usize = 8;
/// Calls of each loop.
const CALLS: usize = 10_000;
/// Loops of each kind per round, the kinds taking turns.
const CALL_TURNS: usize = 3;

const F: &str = "def f(i):\n    return i\n";

pub fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1e3)
}

pub fn us(seconds: f64) -> String {
    format!("{:.2} µs", seconds * 1e6)
}

/// "median (min–max)" of the rounds' values.
pub fn spread(rounds: &[f64], show: impl Fn(f64) -> String) -> String {
    let low = rounds.iter().copied().fold(f64::INFINITY, f64::min);
    let high = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{} ({}–{})",
        show(median(rounds.to_vec())),
        show(low),
        show(high)
    )
}

/// The rounds' values, comma-separated.
pub fn list(rounds: &[f64], show: impl Fn(f64) -> String) -> String {
    rounds
        .iter()
        .map(|&v| show(v))
        .collect::<Vec<_>>()
        .join(", ")
}

fn builder(python: &Path) -> PyRunnerBuilder {
    PyRunner::builder().subprocess().python(python)
}

/// Build → first `eval("1")` answered, in seconds; then `stop_sync()`.
fn one_start(builder: &PyRunnerBuilder) -> f64 {
    let started = Instant::now();
    let runner = builder.clone().build().expect("the runner starts");
    assert_eq!(runner.eval_sync("1").unwrap(), Value::from(1));
    let answered = started.elapsed().as_secs_f64();
    runner.stop_sync().unwrap();
    answered
}

/// Seconds per call of `calls` `call_function_sync("f", [i])` (`f` returns
/// its argument); the other modes' call loops too.
pub fn sync_loop(runner: &PyRunner, calls: usize) -> f64 {
    let start = Instant::now();
    for i in 0..calls as i64 {
        let got = runner
            .call_function_sync("f", vec![Value::from(i)])
            .unwrap();
        assert_eq!(got, Value::from(i));
    }
    start.elapsed().as_secs_f64() / calls as f64
}

/// Seconds per call of `calls` awaited `call_function("f", [i])`.
pub async fn awaited_loop(runner: &PyRunner, calls: usize) -> f64 {
    let start = Instant::now();
    for i in 0..calls as i64 {
        let got = runner
            .call_function("f", vec![Value::from(i)])
            .await
            .unwrap();
        assert_eq!(got, Value::from(i));
    }
    start.elapsed().as_secs_f64() / calls as f64
}

pub async fn local_table() {
    let python = python_executable();
    let builder = builder(&python);
    one_start(&builder);
    let runner = builder.clone().build().unwrap();
    runner.run(F).await.unwrap();
    sync_loop(&runner, CALLS);
    awaited_loop(&runner, CALLS).await;
    let (mut starts, mut syncs, mut awaits) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        starts.push(median((0..STARTS).map(|_| one_start(&builder)).collect()));
        let (mut s, mut a) = (Vec::new(), Vec::new());
        for turn in 0..CALL_TURNS {
            if turn % 2 == 0 {
                s.push(sync_loop(&runner, CALLS));
                a.push(awaited_loop(&runner, CALLS).await);
            } else {
                a.push(awaited_loop(&runner, CALLS).await);
                s.push(sync_loop(&runner, CALLS));
            }
        }
        syncs.push(median(s));
        awaits.push(median(a));
    }
    runner.stop().await.unwrap();

    println!("| local child (no launcher) | median (min–max) of {ROUNDS} rounds |");
    println!("|---|---|");
    println!(
        "| start: build → first `eval(\"1\")` answered (median of {STARTS} per round) | {} |",
        spread(&starts, ms)
    );
    println!(
        "| `call_function_sync(\"f\", [i])`, per call of a {CALLS}-call loop (median of {CALL_TURNS} loops per round) | {} |",
        spread(&syncs, us)
    );
    println!(
        "| awaited `call_function(\"f\", [i])`, the same | {} |",
        spread(&awaits, us)
    );
    println!();
    println!("Per round (medians):");
    println!();
    println!("- start: {}", list(&starts, ms));
    println!("- `call_function_sync`: {}", list(&syncs, us));
    println!("- awaited `call_function`: {}", list(&awaits, us));
    println!();
}
