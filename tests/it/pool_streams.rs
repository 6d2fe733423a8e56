//! PyPool: `call(..).stream()` on one worker, which keeps the stream.

use std::path::Path;
use std::time::{Duration, Instant};

use async_py::{PyRunnerError, PyStream};
use futures_util::StreamExt;
use serde_json::json;

use crate::pool;

const DEFS: &str = r#"
import os, time
def pids(count, pause=0):
    for i in range(count):
        time.sleep(pause)
        yield [i, os.getpid()]
def endless(mark):
    try:
        i = 0
        while True:
            i += 1
            yield i
    finally:
        open(mark, "w").close()
"#;

/// Every item up to the end, failing past ten seconds in all.
async fn read_all<T>(mut stream: PyStream<T>) -> Vec<Result<T, PyRunnerError>>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let mut items = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(item) = tokio::time::timeout_at(deadline.into(), stream.next())
        .await
        .expect("the end within ten seconds")
    {
        items.push(item);
    }
    items
}

/// The items `[i, pid]` of a `pids` stream: in order, all from one pid.
fn one_worker_in_order(items: Vec<Result<(u64, u32), PyRunnerError>>, count: u64) -> u32 {
    let items: Vec<(u64, u32)> = items.into_iter().map(|item| item.unwrap()).collect();
    let indexes: Vec<u64> = items.iter().map(|&(i, _)| i).collect();
    assert_eq!(indexes, (0..count).collect::<Vec<_>>());
    let pid = items[0].1;
    assert!(items.iter().all(|&(_, each)| each == pid), "{items:?}");
    pid
}

#[tokio::test]
async fn a_pool_stream_comes_in_order_from_the_one_worker_that_opened_it() {
    let pool = pool::pool(2);
    pool.run(DEFS).await.unwrap();
    let items = read_all(
        pool.call("pids")
            .args((300, 0.001))
            .returns::<(u64, u32)>()
            .stream(),
    )
    .await;
    let pid = one_worker_in_order(items, 300);
    assert!(pool::pids(&pool).contains(&pid));
    pool.stop().await.unwrap();
}

#[tokio::test]
async fn two_streams_on_a_pool_run_at_once() {
    let pool = pool::pool(2);
    pool.run(DEFS).await.unwrap();
    let started = Instant::now();
    let first = pool
        .call("pids")
        .args((20, 0.05))
        .returns::<(u64, u32)>()
        .stream();
    let second = pool
        .call("pids")
        .args((20, 0.05))
        .returns::<(u64, u32)>()
        .stream();
    let (first, second) = tokio::join!(read_all(first), read_all(second));
    let (a, b) = (
        one_worker_in_order(first, 20),
        one_worker_in_order(second, 20),
    );
    // An open stream counts as its worker's load: the second went to the other.
    assert_ne!(a, b);
    assert!(started.elapsed() < Duration::from_millis(1900));
    pool.stop().await.unwrap();
}

#[tokio::test]
async fn dropping_a_pool_stream_closes_its_generator() {
    let pool = pool::pool(2);
    pool.run(DEFS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("closed");
    let mut stream = pool
        .call("endless")
        .arg(pool::text(&mark))
        .returns::<u64>()
        .stream();
    for expected in 1..=5 {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        assert_eq!(item.unwrap().unwrap().unwrap(), expected);
    }
    drop(stream);
    assert!(appears(&mark).await, "the generator's finally never ran");
    assert_eq!(pool.eval("1 + 1").await.unwrap(), json!(2));
    pool.stop().await.unwrap();
}

async fn appears(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}
