//! PyPool: the call builder, dispatched like `call_function`.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_py::PyRunnerError;
use serde::Deserialize;
use serde_bytes::ByteBuf;
use serde_json::json;

use crate::pool;

const DEFS: &str = r#"
import asyncio, os, time
def describe(a, *, scale=1, label="x"):
    return {"a": a * scale, "label": label, "pid": os.getpid()}
def echo(x):
    return x
def spin():
    while True:
        pass
cleaned = []
async def hold(tag):
    try:
        await asyncio.sleep(3600)
    finally:
        cleaned.append(tag)
async def slow_echo(x):
    await asyncio.sleep(0.01)
    return x
"#;

#[derive(Deserialize, Debug)]
struct Described {
    a: i64,
    label: String,
    pid: u32,
}

#[tokio::test]
async fn calls_with_kwargs_and_typed_results_spread_over_the_workers() {
    let pool = pool::pool(2);
    pool.run(DEFS).await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..8i64 {
        let pool = pool.clone();
        calls.spawn(async move {
            let described = pool
                .call("describe")
                .arg(i)
                .kwarg("scale", 10)
                .returns::<Described>()
                .await;
            (i, described)
        });
    }
    let mut pids = std::collections::BTreeSet::new();
    while let Some(joined) = calls.join_next().await {
        let (i, described) = joined.unwrap();
        let described = described.unwrap();
        assert_eq!(described.a, i * 10);
        assert_eq!(described.label, "x");
        pids.insert(described.pid);
    }
    assert!(!pids.is_empty() && pids.len() <= 2);
    // Bytes both ways, awaited results, and the blocking twin.
    let data = ByteBuf::from(vec![7u8; 1 << 20]);
    let echoed: ByteBuf = pool.call("slow_echo").arg(&data).returns().await.unwrap();
    assert!(echoed == data);
    let label: String = pool
        .call("describe")
        .arg(1)
        .kwarg("label", "blocking")
        .returns::<Described>()
        .wait()
        .map(|d| d.label)
        .unwrap();
    assert_eq!(label, "blocking");
}

#[tokio::test]
async fn a_call_s_limit_kills_only_its_worker_s_call() {
    let pool = pool::pool(2);
    pool.run(DEFS).await.unwrap();
    let started = Instant::now();
    let spun = pool.call("spin").timeout(Duration::from_millis(300)).await;
    assert_eq!(
        spun,
        Err(PyRunnerError::Timeout(Duration::from_millis(300)))
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // Replaced, with the pool's runs replayed: the definitions are there.
    for i in 0..4 {
        assert_eq!(pool.call("echo").arg(i).await.unwrap(), json!(i));
    }
}

#[tokio::test]
async fn a_dropped_call_cancels_its_coroutine_on_its_worker() {
    let pool = pool::pool(1);
    pool.run(DEFS).await.unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        pool.call("hold").arg("dropped").into_future(),
    )
    .await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cleaned = pool.eval("cleaned").await.unwrap();
        if cleaned == json!(["dropped"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "its finally never ran: {cleaned}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pending = pool
        .eval("sum(1 for t in asyncio.all_tasks(asyncio.get_event_loop()) if not t.done())")
        .await
        .unwrap();
    assert_eq!(pending, json!(0));
}
