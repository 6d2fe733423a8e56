//! Host functions on a pool: every worker has them, replacements too, and
//! each call is given the runner of the worker whose Python called.

use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::time::Duration;

use async_py::{HostCall, PyPoolBuilder, PyRunnerError, Value};
use serde_json::json;

use crate::conformance::host::within_10s;
use crate::faults::eventually;
use crate::pool;

const CODE: &str = r#"
import asyncio, os, time, async_py

def check(wait):
    time.sleep(wait)
    return [os.getpid(), async_py.host.whoami()]

async def awaited(x):
    return [os.getpid(), await async_py.host.later(x)]
"#;

/// A pool whose `whoami` asks the calling worker's runner for its pid (a
/// nested command) and whose async `later` echoes after 50 ms.
fn with_functions(builder: PyPoolBuilder) -> PyPoolBuilder {
    builder
        .host_function("whoami", |call: HostCall| {
            call.runner()
                .eval_sync("os.getpid()")
                .map_err(|err| err.to_string())
        })
        .host_async_function("later", |call: HostCall| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(call.args[0].clone())
        })
}

/// Sends `count` calls of `check` at once; each must have been answered by
/// the worker it ran on. Returns the pids that answered.
async fn check_every_worker(pool: &async_py::PyPool, count: usize) -> BTreeSet<u64> {
    let calls: Vec<_> = (0..count)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call("check").arg(0.05).into_future().await })
        })
        .collect();
    let mut pids = BTreeSet::new();
    for call in calls {
        let pair = within_10s("a pool's host call", call)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            pair[0], pair[1],
            "the host function was given another worker's runner"
        );
        pids.insert(pair[0].as_u64().unwrap());
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_has_the_functions_and_its_own_runner() {
    let pool = with_functions(pool::builder(2)).build().unwrap();
    pool.run(CODE).await.unwrap();
    let pids = check_every_worker(&pool, 20).await;
    assert_eq!(pids.len(), 2, "both workers answered: {pids:?}");
    // Awaited on the workers' loops, the calls spread over both workers.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call("awaited").arg(i).into_future().await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let answer = within_10s("an async host call on a pool", call)
            .await
            .unwrap();
        assert_eq!(answer.unwrap()[1], json!(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacements_after_a_crash_and_a_recycle_have_them() {
    let pool = with_functions(pool::builder(2))
        .max_calls_per_worker(15)
        .build()
        .unwrap();
    pool.run(CODE).await.unwrap();
    let before = pool::pids(&pool);
    // A crash: the worker's child is replaced.
    let outcome = pool.eval("os._exit(3)").await;
    assert!(
        matches!(outcome, Err(PyRunnerError::WorkerDied { .. })),
        "{outcome:?}"
    );
    eventually("a replacement child", || pool::pids(&pool) != before);
    // Enough calls for both workers to be recycled too.
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        seen.extend(check_every_worker(&pool, 20).await);
    }
    assert!(
        pool.stats().iter().all(|worker| worker.restarts >= 1),
        "{:?}",
        pool.stats()
    );
    assert!(seen.len() > 2, "replacement children answered: {seen:?}");
    let answer = pool.call("awaited").arg("after").await.unwrap();
    assert_eq!(answer[1], Value::from("after"));
}
