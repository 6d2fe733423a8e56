//! Many callers against one child, and a child killed again and again under
//! load: every call either succeeds or fails with `WorkerDied`/`Timeout`,
//! none hangs, and no child is left behind.

use crate::faults;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_py::PyRunnerError;
use faults::*;
use serde_json::json;

/// A hang shows up as a failed test, not a stuck run.
const NO_HANG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaited_and_blocking_callers_together_get_every_answer() {
    let runner = runner();
    runner
        .run("def tag(a, b):\n    return [a, b]")
        .await
        .unwrap();
    let work = async {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let runner = runner.clone();
                tokio::spawn(async move {
                    for i in 0..2000 {
                        let got = runner
                            .call_function("tag", vec![json!(t), json!(i)])
                            .await
                            .unwrap();
                        assert_eq!(got, json!([t, i]));
                    }
                })
            })
            .collect();
        let threads: Vec<_> = (100..104)
            .map(|t| {
                let runner = runner.clone();
                tokio::task::spawn_blocking(move || {
                    for i in 0..1000 {
                        let got = runner
                            .call_function_sync("tag", vec![json!(t), json!(i)])
                            .unwrap();
                        assert_eq!(got, json!([t, i]));
                    }
                })
            })
            .collect();
        for task in tasks.into_iter().chain(threads) {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(NO_HANG, work)
        .await
        .expect("no call hangs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_kill_and_restart_cycles_under_sixteen_callers() {
    // Every fresh child defines `work` in its startup code.
    let runner = builder()
        .timeout(Duration::from_secs(20))
        .startup("def work(i):\n    return i * 2")
        .build()
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..16)
        .map(|c| {
            let runner = runner.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let (mut ok, mut died) = (0u64, 0u64);
                let mut i = 0u64;
                while !done.load(Ordering::SeqCst) {
                    i += 1;
                    match runner.call_function("work", vec![json!(i)]).await {
                        Ok(value) => {
                            assert_eq!(value, json!(i * 2), "caller {c}");
                            ok += 1;
                        }
                        Err(PyRunnerError::WorkerDied { .. } | PyRunnerError::Timeout(_)) => {
                            died += 1
                        }
                        Err(other) => panic!("caller {c}: unexpected {other:?}"),
                    }
                }
                (ok, died)
            })
        })
        .collect();
    let killer = {
        let runner = runner.clone();
        tokio::spawn(async move {
            let mut pids = HashSet::new();
            for _ in 0..200 {
                let pid = loop {
                    match runner.eval("__import__('os').getpid()").await {
                        Ok(pid) => break pid.as_u64().unwrap() as u32,
                        Err(PyRunnerError::WorkerDied { .. }) => continue,
                        Err(other) => panic!("{other:?}"),
                    }
                };
                pids.insert(pid);
                // The answer may come from a worker whose stand-in outside its
                // pid namespace was killed a moment ago (and reaped since):
                // the kernel's kill of the namespace lands just after.
                try_kill(pid, 9);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            pids
        })
    };
    let pids = tokio::time::timeout(NO_HANG, killer)
        .await
        .expect("the killer finishes")
        .unwrap();
    done.store(true, Ordering::SeqCst);
    let mut total_ok = 0;
    for caller in callers {
        let (ok, _died) = tokio::time::timeout(NO_HANG, caller)
            .await
            .expect("no caller hangs")
            .unwrap();
        total_ok += ok;
    }
    assert!(
        pids.len() >= 150,
        "children were really replaced: {}",
        pids.len()
    );
    assert!(total_ok > 0);
    let last = child_pid(&runner);
    runner.stop().await.unwrap();
    for pid in pids.into_iter().chain([last]) {
        eventually(&format!("child {pid} is reaped"), || is_gone(pid));
    }
}
