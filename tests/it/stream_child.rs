//! Streams through a child: `call(..).stream()` on the subprocess backend.
//! Each test bounds its wait (`read`), so a stream that hangs fails.

use std::path::Path;
use std::time::{Duration, Instant};

use async_py::{PyRunner, PyRunnerError, PyStream};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_bytes::ByteBuf;
use serde_json::{json, Value};

use crate::conformance::base_python;

/// The window of `tuning::STREAM_WINDOW`: how far a generator may run ahead.
const WINDOW: u64 = 256;

const DEFS: &str = r#"
import asyncio, os, time
produced = 0
def count(n):
    for i in range(n):
        yield i
def early():
    yield "first"
    time.sleep(2)
    yield "second"
def burst(count, then):
    yield from range(count)
    time.sleep(then)
    yield -1
async def acount(n):
    for i in range(n):
        await asyncio.sleep(0.001)
        yield i
def failing():
    yield 1
    yield 2
    raise ValueError("bad third")
def endless(mark=None):
    global produced
    try:
        while True:
            produced += 1
            yield produced
    finally:
        if mark:
            open(mark, "w").close()
def ticking(seconds):
    for i in range(1000000):
        time.sleep(seconds)
        yield i
def slow_second(seconds, mark):
    try:
        yield 1
        time.sleep(seconds)
        yield 2
    finally:
        open(mark, "w").close()
def deaf(seconds):
    import signal
    yield 1
    # No signal reaches this item: only the parent's backstop can end it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGINT})
    time.sleep(seconds)
    yield 2
def dies():
    yield 1
    os._exit(7)
def blobs():
    yield b"\x00\xff"
    yield bytearray(b"ab")
def points():
    for i in range(3):
        yield {"x": i, "label": "p%d" % i}
def plain():
    return 5
def answer_streams_as_calls():
    import gc
    worker = next(o for o in gc.get_objects() if type(o).__name__ == "ChildWorker")
    worker.op_stream = lambda request_id, *rest: worker._reply_value(request_id, 5)
def stubborn(seconds, mark, deaf=False):
    import signal
    try:
        while True:
            yield 1
    finally:
        try:
            if deaf:
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGINT})
            time.sleep(seconds)
        finally:
            open(mark, "w").close()
def nap(seconds):
    time.sleep(seconds)
    return seconds
def letters():
    return "abc"
"#;

fn runner() -> PyRunner {
    let runner = PyRunner::builder()
        .subprocess()
        .python(base_python())
        .build()
        .expect("the subprocess backend starts");
    runner.run_sync(DEFS).expect("the definitions run");
    runner
}

/// The next item, failing the test past ten seconds.
async fn read<T>(stream: &mut PyStream<T>) -> Option<Result<T, PyRunnerError>>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an item or the end within ten seconds")
}

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

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// Waits up to ten seconds for `path` to exist.
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

#[tokio::test]
async fn items_come_in_order_and_each_as_soon_as_it_is_made() {
    let runner = runner();
    let items: Vec<u64> = read_all(runner.call("count").arg(1000).returns::<u64>().stream())
        .await
        .into_iter()
        .map(|item| item.expect("an item"))
        .collect();
    assert_eq!(items, (0..1000).collect::<Vec<_>>());

    let started = Instant::now();
    let mut stream = runner.call("early").returns::<String>().stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), "first");
    let first = started.elapsed();
    assert!(
        first < Duration::from_millis(1500),
        "the first item waited for the second: {first:?}"
    );
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), "second");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(read(&mut stream).await.is_none());

    // Items made in a burst go out together, but none waits for a slow one.
    let started = Instant::now();
    let mut stream = runner.call("burst").args((40, 2)).returns::<i64>().stream();
    for expected in 0..40 {
        assert_eq!(read(&mut stream).await.unwrap().unwrap(), expected);
    }
    let burst = started.elapsed();
    assert!(
        burst < Duration::from_millis(1500),
        "the burst waited for the item after it: {burst:?}"
    );
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), -1);
}

#[tokio::test]
async fn an_async_generator_streams_its_items() {
    let runner = runner();
    let items: Vec<Value> = read_all(runner.call("acount").arg(20).stream())
        .await
        .into_iter()
        .map(|item| item.expect("an item"))
        .collect();
    assert_eq!(items, (0..20).map(Value::from).collect::<Vec<_>>());
}

#[tokio::test]
async fn any_iterable_streams_and_a_plain_result_says_to_await_it() {
    let runner = runner();
    let items: Vec<String> = read_all(runner.call("letters").returns::<String>().stream())
        .await
        .into_iter()
        .map(|item| item.expect("an item"))
        .collect();
    assert_eq!(items, ["a", "b", "c"]);
    let items = read_all(runner.call("plain").stream()).await;
    match &items[..] {
        [Err(PyRunnerError::Conversion(message))] => assert!(
            message.contains("not iterable") && message.contains(".await"),
            "{message}"
        ),
        other => panic!("expected one Conversion error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_exception_mid_stream_is_one_error_after_the_items_then_the_end() {
    let runner = runner();
    let mut stream = runner.call("failing").returns::<i64>().stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 1);
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 2);
    match read(&mut stream).await {
        Some(Err(PyRunnerError::Python { kind, message, .. })) => {
            assert_eq!(
                (kind.as_str(), message.as_str()),
                ("ValueError", "bad third")
            )
        }
        other => panic!("expected the ValueError, got {other:?}"),
    }
    assert!(read(&mut stream).await.is_none());
    assert_eq!(runner.eval("1 + 1").await.unwrap(), json!(2));
}

#[tokio::test]
async fn dropping_a_stream_closes_its_generator_and_it_runs_no_more() {
    let runner = runner();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("closed");
    let mut stream = runner
        .call("endless")
        .arg(text(&mark))
        .returns::<u64>()
        .stream();
    for expected in 1..=3 {
        assert_eq!(read(&mut stream).await.unwrap().unwrap(), expected);
    }
    drop(stream);
    assert!(appears(&mark).await, "the generator's finally never ran");
    let produced = runner.eval("produced").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(runner.eval("produced").await.unwrap(), produced);
}

#[tokio::test]
async fn a_slow_consumer_holds_an_endless_generator_to_the_window() {
    let runner = runner();
    let mut stream = runner.call("endless").returns::<u64>().stream();
    let mut consumed = 0;
    for round in 0..3 {
        let take = if round == 1 { 600 } else { 10 };
        for _ in 0..take {
            consumed += 1;
            assert_eq!(read(&mut stream).await.unwrap().unwrap(), consumed);
        }
        // Time enough for the child to run ahead if nothing held it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let produced = runner.eval("produced").await.unwrap().as_u64().unwrap();
        assert!(
            produced <= consumed + WINDOW + 2,
            "{produced} made for {consumed} consumed"
        );
        assert!(produced > consumed, "the generator waits for no consumer");
    }
}

#[tokio::test]
async fn other_commands_are_answered_between_items() {
    let runner = runner();
    let mut stream = runner.call("ticking").arg(0.02).returns::<u64>().stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 0);
    for round in 0..5 {
        let started = Instant::now();
        assert_eq!(
            runner.eval(&format!("{round} * 2")).await.unwrap(),
            json!(round * 2)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        read(&mut stream).await.unwrap().unwrap();
    }
    // Two streams on one runner at once, each in its own order.
    let mut other = runner.call("count").arg(500).returns::<u64>().stream();
    for expected in 0..500 {
        assert_eq!(read(&mut other).await.unwrap().unwrap(), expected);
        if expected % 100 == 0 {
            read(&mut stream).await.unwrap().unwrap();
        }
    }
    assert!(read(&mut other).await.is_none());
}

#[test]
fn blocking_iter_reads_a_stream_on_a_plain_thread() {
    let runner = runner();
    let items = std::thread::spawn(move || {
        runner
            .call("count")
            .arg(5)
            .returns::<u64>()
            .stream()
            .blocking_iter()
            .collect::<Result<Vec<_>, _>>()
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(items, [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn an_item_past_the_limit_ends_the_stream_with_a_timeout_and_the_runner_goes_on() {
    let runner = runner();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("closed");
    let started = Instant::now();
    let mut stream = runner
        .call("slow_second")
        .args((30, text(&mark)))
        .timeout(Duration::from_millis(300))
        .returns::<u64>()
        .stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 1);
    match read(&mut stream).await {
        Some(Err(PyRunnerError::Timeout(limit))) => {
            assert_eq!(limit, Duration::from_millis(300))
        }
        other => panic!("expected a Timeout, got {other:?}"),
    }
    assert!(read(&mut stream).await.is_none());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(appears(&mark).await, "the generator's finally never ran");
    assert_eq!(runner.eval("1 + 1").await.unwrap(), json!(2));
    // A limit long enough for each item is no limit on the whole stream.
    let items = read_all_of(
        runner
            .call("ticking")
            .arg(0.05)
            .timeout(Duration::from_millis(500))
            .returns::<u64>()
            .stream()
            .take(12),
    )
    .await;
    assert_eq!(items.len(), 12);
}

#[tokio::test]
async fn an_item_no_signal_can_stop_is_ended_by_the_backstop_and_the_child_replaced() {
    let runner = runner();
    let pid = runner.eval("os.getpid()").await.unwrap();
    let started = Instant::now();
    let mut stream = runner
        .call("deaf")
        .arg(60)
        .timeout(Duration::from_millis(300))
        .returns::<u64>()
        .stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 1);
    match read(&mut stream).await {
        Some(Err(PyRunnerError::Timeout(limit))) => {
            assert_eq!(limit, Duration::from_millis(300))
        }
        other => panic!("expected a Timeout, got {other:?}"),
    }
    assert!(read(&mut stream).await.is_none());
    // The limit, the 2 s backstop, and a margin; far from the item's 60 s.
    assert!(started.elapsed() < Duration::from_secs(8));
    runner.run(DEFS).await.unwrap();
    assert_ne!(runner.eval("os.getpid()").await.unwrap(), pid);
}

#[tokio::test]
async fn a_limited_stream_beside_a_long_call_keeps_its_child() {
    let runner = runner();
    let pid = runner.eval("os.getpid()").await.unwrap();
    // Each item is well within its limit; the call holds the child for
    // longer than the stream's backstop (the limit and 2 s).
    let mut stream = runner
        .call("ticking")
        .arg(0.05)
        .timeout(Duration::from_millis(500))
        .returns::<u64>()
        .stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 0);
    let napped = runner.call("nap").arg(4).returns::<u64>().await;
    assert_eq!(napped.unwrap(), 4);
    let mut items = Vec::new();
    for _ in 0..10 {
        items.push(read(&mut stream).await.unwrap().unwrap());
    }
    assert_eq!(items, (1..11).collect::<Vec<_>>());
    assert_eq!(runner.eval("os.getpid()").await.unwrap(), pid);
}

#[tokio::test]
async fn two_limited_streams_with_slow_items_keep_their_child() {
    let runner = runner();
    let pid = runner.eval("os.getpid()").await.unwrap();
    // A's items, each within its own limit, hold the child for longer than
    // B's backstop (its limit and 2 s) while B waits for its turn.
    let mut slow = runner
        .call("ticking")
        .arg(3.2)
        .timeout(Duration::from_secs(5))
        .returns::<u64>()
        .stream();
    let mut quick = runner
        .call("ticking")
        .arg(0.05)
        .timeout(Duration::from_millis(500))
        .returns::<u64>()
        .stream();
    let (slow_items, quick_items) = tokio::join!(
        async {
            let mut items = Vec::new();
            for _ in 0..2 {
                items.push(read(&mut slow).await.unwrap());
            }
            items
        },
        async {
            let mut items = Vec::new();
            for _ in 0..3 {
                items.push(read(&mut quick).await.unwrap());
            }
            items
        }
    );
    assert_eq!(slow_items, [Ok(0), Ok(1)]);
    assert_eq!(quick_items, [Ok(0), Ok(1), Ok(2)]);
    assert_eq!(runner.eval("os.getpid()").await.unwrap(), pid);
    assert_eq!(runner.eval("1 + 1").await.unwrap(), json!(2));
}

#[tokio::test]
async fn a_result_for_a_stream_that_never_opened_is_a_protocol_error() {
    let runner = runner();
    let pid = runner.eval("os.getpid()").await.unwrap();
    // A child that answers a stream request as a call (its replacement,
    // which replays the definitions, does not).
    runner.call("answer_streams_as_calls").await.unwrap();
    let items = read_all(runner.call("count").arg(3).returns::<u64>().stream()).await;
    assert!(
        matches!(&items[..], [Err(PyRunnerError::Protocol(message))] if message.contains("streaming")),
        "{items:?}"
    );
    assert_ne!(runner.eval("os.getpid()").await.unwrap(), pid);
    let items = read_all(runner.call("count").arg(3).returns::<u64>().stream()).await;
    assert_eq!(items, [Ok(0), Ok(1), Ok(2)]);
}

#[tokio::test]
async fn a_close_that_blocks_is_stopped_at_the_stream_s_limit() {
    let runner = runner();
    let pid = runner.eval("os.getpid()").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("closed");
    let mut stream = runner
        .call("stubborn")
        .args((60, text(&mark)))
        .timeout(Duration::from_millis(300))
        .returns::<u64>()
        .stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 1);
    drop(stream);
    assert!(appears(&mark).await, "the close ran on past its limit");
    assert_eq!(runner.eval("os.getpid()").await.unwrap(), pid);
}

#[tokio::test]
async fn a_close_no_signal_can_stop_is_ended_by_the_backstop() {
    let runner = runner();
    let pid = runner.eval("os.getpid()").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("closed");
    let mut stream = runner
        .call("stubborn")
        .args((60, text(&mark), true))
        .timeout(Duration::from_millis(300))
        .returns::<u64>()
        .stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 1);
    drop(stream);
    // Sent while the close holds the child: it goes to the fresh one.
    let after = tokio::time::timeout(Duration::from_secs(20), runner.eval("os.getpid()"))
        .await
        .expect("an answer once the backstop has replaced the child");
    assert_ne!(after.unwrap(), pid);
    assert_eq!(runner.eval("1 + 1").await.unwrap(), json!(2));
}

/// `read_all` for a stream that was cut short with `take`.
async fn read_all_of<S: futures_util::Stream + Unpin>(mut stream: S) -> Vec<S::Item> {
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

#[tokio::test]
async fn a_child_that_dies_mid_stream_ends_it_with_worker_died() {
    let runner = runner();
    let mut stream = runner.call("dies").returns::<u64>().stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 1);
    match read(&mut stream).await {
        Some(Err(PyRunnerError::WorkerDied { reason })) => {
            assert!(reason.contains('7'), "{reason}")
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert!(read(&mut stream).await.is_none());
    runner.run(DEFS).await.unwrap();
    assert_eq!(runner.eval("1 + 1").await.unwrap(), json!(2));

    // Killed from outside while its consumer waits for credit to be used.
    let pid = runner.eval("os.getpid()").await.unwrap().as_i64().unwrap();
    let mut stream = runner.call("endless").returns::<u64>().stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 1);
    // SAFETY: kill(2) takes no pointers; the pid is this runner's child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let rest = read_all(stream).await;
    assert!(
        matches!(rest.last(), Some(Err(PyRunnerError::WorkerDied { .. }))),
        "{:?}",
        rest.last()
    );
    assert_eq!(runner.eval("2 + 2").await.unwrap(), json!(4));
}

#[tokio::test]
async fn typed_items_keep_bytes_and_read_into_structs() {
    #[derive(Deserialize, Debug, PartialEq)]
    struct Point {
        x: u32,
        label: String,
    }
    let runner = runner();
    let blobs: Vec<ByteBuf> = read_all(runner.call("blobs").returns::<ByteBuf>().stream())
        .await
        .into_iter()
        .map(|item| item.expect("bytes"))
        .collect();
    assert_eq!(
        blobs,
        [ByteBuf::from(vec![0, 255]), ByteBuf::from(b"ab".to_vec())]
    );
    let plain: Vec<Value> = read_all(runner.call("blobs").stream())
        .await
        .into_iter()
        .map(|item| item.expect("a value"))
        .collect();
    assert_eq!(plain, [json!([0, 255]), json!([97, 98])]);
    let points: Vec<Point> = read_all(runner.call("points").returns::<Point>().stream())
        .await
        .into_iter()
        .map(|item| item.expect("a point"))
        .collect();
    assert_eq!(
        points[2],
        Point {
            x: 2,
            label: "p2".into()
        }
    );
    // An item that does not fit the type is that item's error.
    let mut wrong = runner.call("points").returns::<u64>().stream();
    assert!(matches!(
        read(&mut wrong).await,
        Some(Err(PyRunnerError::Conversion(_)))
    ));
}

#[tokio::test]
async fn stop_ends_open_streams() {
    let runner = runner();
    let mut stream = runner.call("endless").returns::<u64>().stream();
    assert_eq!(read(&mut stream).await.unwrap().unwrap(), 1);
    runner.stop().await.unwrap();
    let rest = read_all(stream).await;
    assert!(rest.len() <= WINDOW as usize + 1);
    // Whatever items came before, the stream ends with `Stopped`.
    assert!(
        matches!(rest.last(), Some(Err(PyRunnerError::Stopped))),
        "{:?}",
        rest.last()
    );
    assert!(rest[..rest.len() - 1].iter().all(Result::is_ok));
    let after = read_all(runner.call("count").arg(3).stream()).await;
    assert!(
        matches!(after[..], [Err(PyRunnerError::Stopped)]),
        "{after:?}"
    );
}
