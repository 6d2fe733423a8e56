//! Prints a markdown table of call latency and throughput for each backend.
//!
//! `cargo run --release --example bench`

use std::time::{Duration, Instant};

use async_py::{Backend, PyRunner};
use serde_json::Value;

struct Row {
    what: &'static str,
    cells: Vec<String>,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
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

async fn measure(backend: Backend) -> Vec<String> {
    let builder = PyRunner::builder();
    let builder = match backend {
        Backend::PyO3 => builder.pyo3(),
        Backend::Subprocess => builder.subprocess(),
        Backend::RustPython => builder.rustpython(),
    };
    let started = Instant::now();
    let runner = builder.build().expect("backend starts");
    let start_time = started.elapsed();
    runner.run(ADD).await.unwrap();
    vec![
        micros(start_time),
        micros(awaited_call(&runner).await),
        micros(sync_call(&runner)),
        format!(
            "{:.0}k/s",
            concurrent_calls(&runner, 8, 5000).await / 1000.0
        ),
        format!(
            "{:.0}k/s",
            concurrent_calls(&runner, 64, 300).await / 1000.0
        ),
        format!(
            "{:.3} s",
            sleeping_coroutines(&runner, 1000).await.as_secs_f64()
        ),
        format!("{:.1} ms", cpu_loop(&runner).as_secs_f64() * 1e3),
    ]
}

#[tokio::main]
async fn main() {
    let backends = [Backend::PyO3];
    let labels = [
        "start (build to ready)",
        "awaited `call_function(\"add\", [1, 2])`, median",
        "`call_function_sync`, median",
        "8 tasks × 5000 calls",
        "64 tasks × 300 calls",
        "1000 concurrent `asyncio.sleep(0.1)` calls",
        "CPU loop, 1M iterations",
    ];
    let mut rows: Vec<Row> = labels
        .iter()
        .map(|what| Row {
            what,
            cells: Vec::new(),
        })
        .collect();
    for backend in backends {
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
}
