//! The host functions table: Python calling Rust, per backend
//! (`cargo run --release --example bench -- host`).

use std::time::Duration;

use async_py::{HostCall, PyRunner, Value};

use super::{builder_for, median, print_backend_table, BACKENDS};

const RUNS: usize = 5;

/// Timed inside Python, so the command that runs the loop is not counted.
const LOOPS: &str = r#"
import asyncio, time, async_py

def noop(i):
    pass

def host_loop(n):
    start = time.perf_counter()
    for i in range(n):
        async_py.host.tick(i)
    return (time.perf_counter() - start) / n

def python_loop(n):
    start = time.perf_counter()
    for i in range(n):
        noop(i)
    return (time.perf_counter() - start) / n

async def naps(k):
    start = time.perf_counter()
    await asyncio.gather(*(async_py.host.nap() for _ in range(k)))
    return time.perf_counter() - start

def naps_in_a_loop(k):
    return asyncio.run(naps(k))
"#;

fn runner_for(backend: async_py::Backend) -> PyRunner {
    builder_for(backend)
        .host_function("tick", |call: HostCall| {
            Ok(call.args.into_iter().next().unwrap_or(Value::Null))
        })
        .host_async_function("nap", |_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(Value::Null)
        })
        .build()
        .expect("backend starts")
}

fn spread(samples: Vec<f64>, show: impl Fn(f64) -> String) -> String {
    let low = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let high = samples.iter().copied().fold(0.0, f64::max);
    format!("{} ({}–{})", show(median(samples)), show(low), show(high))
}

pub async fn host_table() {
    let mut rows: [Vec<String>; 3] = Default::default();
    // Two decimals: the plain Python call of the reference row is tens of ns.
    let per_call = |s: f64| format!("{:.2} µs", s * 1e6);
    for &backend in BACKENDS {
        let runner = runner_for(backend);
        runner.run(LOOPS).await.unwrap();
        let calls = if backend == async_py::Backend::Subprocess {
            20_000
        } else {
            100_000
        };
        let seconds = |value: Value| value.as_f64().expect("a time in seconds");
        // Warm both paths.
        runner.call("host_loop").arg(1000).await.unwrap();
        let (mut host, mut python, mut naps) = (Vec::new(), Vec::new(), Vec::new());
        let mut naps_failed = None;
        for _ in 0..RUNS {
            host.push(seconds(runner.call("host_loop").arg(calls).await.unwrap()));
            python.push(seconds(
                runner.call("python_loop").arg(calls).await.unwrap(),
            ));
            // RustPython runs no coroutines of the runner's: the command
            // runs a loop of its own (its start and end are counted).
            let naps_by = if backend == async_py::Backend::RustPython {
                "naps_in_a_loop"
            } else {
                "naps"
            };
            match runner.call(naps_by).arg(20).await {
                Ok(took) => naps.push(seconds(took)),
                Err(err) => naps_failed = Some(err.to_string()),
            }
        }
        rows[0].push(spread(host, per_call));
        rows[1].push(spread(python, per_call));
        rows[2].push(match naps_failed {
            Some(err) => err,
            None => spread(naps, |s| format!("{s:.3} s")),
        });
        runner.stop().await.unwrap();
    }
    let labels = [
        "a Python loop calling sync host function `tick(i)`, per call: median (range) of 5 runs",
        "the same loop calling a Python function `noop(i)` instead, per call",
        "20 coroutines each awaiting a 100 ms async host function, in all",
    ];
    print_backend_table("host functions", &labels, rows);
}
