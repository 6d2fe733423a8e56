//! `call(..).stream()`: a generator's items as a Rust stream, on every backend.

use std::time::{Duration, Instant};

use async_py::{Backend, PyRunner, PyRunnerError};
use futures_util::StreamExt;
use serde_json::{json, Value};

const GENERATORS: &str = r#"
import time

def count(n):
    for i in range(n):
        yield i

def slow_start():
    yield "first"
    time.sleep(2)
    yield "second"

def fails_after(n):
    for i in range(n):
        yield i
    raise ValueError("no more after %d" % n)

made = 0
closed = False

def endless():
    global made, closed
    try:
        while True:
            made += 1
            yield made
    finally:
        closed = True

def sleepy():
    while True:
        time.sleep(0.2)
        yield "tick"

def spins_after_one():
    yield 1
    while True:
        pass

def sleeps_after_one():
    yield 1
    time.sleep(3)
    yield 2

def slow_to_start():
    time.sleep(0.5)
    return endless()

def paced(n):
    for i in range(n):
        time.sleep(0.02)
        yield i

def words():
    return ["a", "b", "c"]

def chunks():
    yield b"\x00\x01"
    yield bytearray(b"\xff")

def not_iterable():
    return 42

class Countdown:
    def __init__(self, n):
        self.n = n
    def __iter__(self):
        return self
    def __next__(self):
        if self.n == 0:
            raise StopIteration
        self.n -= 1
        return self.n
"#;

const ASYNC_GENERATORS: &str = r#"
import asyncio

async_closed = False

async def ticks(n):
    global async_closed
    try:
        for i in range(n):
            await asyncio.sleep(0.01)
            yield i
    finally:
        async_closed = True

fast_made = 0
fast_closed = False

async def fast():
    global fast_made, fast_closed
    try:
        while True:
            fast_made += 1
            await asyncio.sleep(0)
            yield fast_made
    finally:
        fast_closed = True

async def stuck_after_one():
    yield 1
    await asyncio.sleep(30)
    yield 2

async def ten_steps():
    for _ in range(10):
        await asyncio.sleep(0.01)
    return "done"

class Later:
    def __init__(self, n):
        self.n = n
    def __aiter__(self):
        return self
    async def __anext__(self):
        if self.n == 0:
            raise StopAsyncIteration
        self.n -= 1
        await asyncio.sleep(0)
        return self.n
"#;

async fn define(runner: &PyRunner) {
    runner
        .run(GENERATORS)
        .await
        .expect("the generators are defined");
}

/// Every item of a stream, errors included, in order.
async fn collect<R>(stream: async_py::PyStream<R>) -> Vec<Result<R, PyRunnerError>>
where
    R: serde::de::DeserializeOwned + Send + 'static,
{
    stream.collect().await
}

pub async fn items_arrive_in_order(runner: PyRunner) {
    define(&runner).await;
    let items = collect(runner.call("count").arg(5).returns::<i64>().stream()).await;
    let items: Vec<i64> = items.into_iter().map(|item| item.unwrap()).collect();
    assert_eq!(items, vec![0, 1, 2, 3, 4]);
    // Iterators and iterables that are not generators stream too.
    let items = collect(runner.call("Countdown").arg(3).stream()).await;
    let items: Vec<Value> = items.into_iter().map(|item| item.unwrap()).collect();
    assert_eq!(items, vec![json!(2), json!(1), json!(0)]);
    let items = collect(runner.call("words").returns::<String>().stream()).await;
    let items: Vec<String> = items.into_iter().map(|item| item.unwrap()).collect();
    assert_eq!(items, ["a", "b", "c"]);
}

pub async fn the_first_item_comes_before_the_generator_finishes(runner: PyRunner) {
    define(&runner).await;
    let started = Instant::now();
    let mut stream = runner.call("slow_start").returns::<String>().stream();
    let first = stream.next().await.expect("a first item").unwrap();
    let first_after = started.elapsed();
    assert_eq!(first, "first");
    assert!(
        first_after < Duration::from_millis(1500),
        "the first item took {first_after:?}: it waited for the generator's sleep"
    );
    let second = stream.next().await.expect("a second item").unwrap();
    assert_eq!(second, "second");
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert!(stream.next().await.is_none());
}

pub async fn an_exception_ends_the_stream_with_one_error(runner: PyRunner) {
    define(&runner).await;
    let mut items = collect(runner.call("fails_after").arg(2).returns::<i64>().stream()).await;
    assert_eq!(items.len(), 3, "two items, then the error: {items:?}");
    let err = items.pop().unwrap().unwrap_err();
    match err {
        PyRunnerError::Python { kind, message, .. } => {
            assert_eq!(kind, "ValueError");
            assert!(message.contains("no more after 2"), "{message}");
        }
        other => panic!("expected the generator's ValueError, got {other:?}"),
    }
    assert_eq!(
        items.into_iter().map(|i| i.unwrap()).collect::<Vec<_>>(),
        [0, 1]
    );
    // The runner goes on.
    assert_eq!(runner.eval("1 + 1").await.unwrap(), json!(2));
}

pub async fn dropping_a_stream_closes_its_generator(runner: PyRunner) {
    define(&runner).await;
    let mut stream = runner.call("endless").returns::<u64>().stream();
    for expected in 1..=3 {
        assert_eq!(stream.next().await.unwrap().unwrap(), expected);
    }
    drop(stream);
    // The close goes out before this command: its `finally` has run.
    assert_eq!(runner.eval("closed").await.unwrap(), json!(true));
    let made = runner.eval("made").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        runner.eval("made").await.unwrap(),
        made,
        "the generator ran on after its stream was dropped"
    );
}

pub async fn python_runs_only_a_window_ahead_of_a_slow_consumer(runner: PyRunner) {
    define(&runner).await;
    let mut stream = runner.call("endless").returns::<u64>().stream();
    assert_eq!(stream.next().await.unwrap().unwrap(), 1);
    // The consumer stops: Python fills the window and waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let made = runner.eval("made").await.unwrap().as_u64().unwrap();
    assert!(
        (2..=1 + 256 + 1).contains(&made),
        "Python made {made} items for a consumer that took 1"
    );
    // It goes on as the consumer takes items, never further ahead.
    for expected in 2..=1000u64 {
        assert_eq!(stream.next().await.unwrap().unwrap(), expected);
    }
    let made = runner.eval("made").await.unwrap().as_u64().unwrap();
    assert!(
        (1000..=1000 + 256 + 1).contains(&made),
        "Python made {made} items for a consumer that took 1000"
    );
    drop(stream);
    assert_eq!(runner.eval("closed").await.unwrap(), json!(true));
}

pub async fn other_commands_run_between_items(runner: PyRunner) {
    define(&runner).await;
    let mut ticks = runner.call("sleepy").returns::<String>().stream();
    assert_eq!(ticks.next().await.unwrap().unwrap(), "tick");
    // The generator sleeps between items; commands run in between.
    for i in 0..3 {
        let answered =
            tokio::time::timeout(Duration::from_secs(5), runner.eval(&format!("{i} * 2")))
                .await
                .expect("a command answered while a stream is open");
        assert_eq!(answered.unwrap(), json!(i * 2));
    }
    assert_eq!(ticks.next().await.unwrap().unwrap(), "tick");
    // An endless generator whose window is full does not hold the runner.
    let mut endless = runner.call("endless").returns::<u64>().stream();
    assert_eq!(endless.next().await.unwrap().unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        runner.eval("'still here'").await.unwrap(),
        json!("still here")
    );
}

pub async fn items_are_read_into_their_type(runner: PyRunner) {
    define(&runner).await;
    let chunks = collect(
        runner
            .call("chunks")
            .returns::<serde_bytes::ByteBuf>()
            .stream(),
    )
    .await;
    let chunks: Vec<Vec<u8>> = chunks.into_iter().map(|c| c.unwrap().into_vec()).collect();
    assert_eq!(chunks, vec![vec![0, 1], vec![255]]);
    // An item that does not fit ends the stream with a Conversion error.
    let items = collect(runner.call("words").returns::<u32>().stream()).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(&items[0], Err(PyRunnerError::Conversion(why)) if why.contains("expected u32")),
        "{items:?}"
    );
}

pub async fn a_result_that_is_not_iterable_is_a_conversion_error(runner: PyRunner) {
    define(&runner).await;
    let items = collect(runner.call("not_iterable").stream()).await;
    assert_eq!(items.len(), 1, "{items:?}");
    match &items[0] {
        Err(PyRunnerError::Conversion(why)) => {
            assert!(
                why.contains("not iterable") && why.contains(".await"),
                "{why}"
            )
        }
        other => panic!("expected a Conversion error, got {other:?}"),
    }
    // A call that raises is the stream's one error.
    let items = collect(runner.call("no_such_function").stream()).await;
    assert!(
        matches!(&items[..], [Err(PyRunnerError::Python { kind, .. })] if kind == "NameError"),
        "{items:?}"
    );
}

pub async fn each_item_has_the_call_s_limit(runner: PyRunner) {
    define(&runner).await;
    let mut stream = runner
        .call("spins_after_one")
        .timeout(Duration::from_secs(1))
        .returns::<i64>()
        .stream();
    assert_eq!(stream.next().await.unwrap().unwrap(), 1);
    let started = Instant::now();
    let second = stream
        .next()
        .await
        .expect("the timeout is the stream's last item");
    assert!(
        matches!(second, Err(PyRunnerError::Timeout(_))),
        "expected a Timeout, got {second:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(stream.next().await.is_none());
    // The runner answers after it.
    let answered = tokio::time::timeout(Duration::from_secs(10), runner.eval("40 + 2")).await;
    assert_eq!(answered.expect("the runner answers").unwrap(), json!(42));
    // An item held up in a blocking call is a timeout too, even though the
    // call itself raises nothing when it returns.
    let mut stream = runner
        .call("sleeps_after_one")
        .timeout(Duration::from_secs(1))
        .returns::<i64>()
        .stream();
    assert_eq!(stream.next().await.unwrap().unwrap(), 1);
    let second = stream
        .next()
        .await
        .expect("the timeout is the stream's last item");
    assert!(
        matches!(second, Err(PyRunnerError::Timeout(_))),
        "expected a Timeout, got {second:?}"
    );
    assert!(stream.next().await.is_none());
    assert_eq!(runner.eval("'after'").await.unwrap(), json!("after"));
}

pub async fn async_generators_stream_on_the_runner_s_loop(runner: PyRunner) {
    define(&runner).await;
    if runner.backend() == Backend::RustPython {
        // No event loop there: an async generator is Unsupported.
        let err = runner.run(ASYNC_GENERATORS).await;
        if err.is_ok() {
            let items = collect(runner.call("ticks").arg(3).stream()).await;
            assert!(
                matches!(&items[..], [Err(PyRunnerError::Unsupported(_))]),
                "{items:?}"
            );
        }
        return;
    }
    runner.run(ASYNC_GENERATORS).await.unwrap();
    let items = collect(runner.call("ticks").arg(4).returns::<i64>().stream()).await;
    let items: Vec<i64> = items.into_iter().map(|item| item.unwrap()).collect();
    assert_eq!(items, [0, 1, 2, 3]);
    assert_eq!(runner.eval("async_closed").await.unwrap(), json!(true));
    let items = collect(runner.call("Later").arg(3).returns::<i64>().stream()).await;
    let items: Vec<i64> = items.into_iter().map(|item| item.unwrap()).collect();
    assert_eq!(items, [2, 1, 0]);
    // Dropped early, an async generator is closed: its `finally` runs.
    runner.run("async_closed = False").await.unwrap();
    let mut stream = runner.call("ticks").arg(1000).returns::<i64>().stream();
    assert_eq!(stream.next().await.unwrap().unwrap(), 0);
    drop(stream);
    wait_for_true(&runner, "async_closed").await;
    // One whose window is full has no pull pending: it is closed with aclose().
    let mut stream = runner.call("fast").returns::<i64>().stream();
    assert_eq!(stream.next().await.unwrap().unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let made = runner.eval("fast_made").await.unwrap().as_u64().unwrap();
    assert!(
        (2..=1 + 256 + 1).contains(&made),
        "made {made} ahead of one taken"
    );
    drop(stream);
    wait_for_true(&runner, "fast_closed").await;
    // Each item has the call's limit.
    let mut stream = runner
        .call("stuck_after_one")
        .timeout(Duration::from_secs(1))
        .returns::<i64>()
        .stream();
    assert_eq!(stream.next().await.unwrap().unwrap(), 1);
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the item's limit ends the stream");
    assert!(
        matches!(second, Some(Err(PyRunnerError::Timeout(_)))),
        "{second:?}"
    );
}

/// Polls a Python global until it is `True` (5 s at most).
async fn wait_for_true(runner: &PyRunner, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while runner.eval(name).await.unwrap() != json!(true) {
        assert!(Instant::now() < deadline, "{name} never became True");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn coroutines_go_on_while_a_stream_makes_items(runner: PyRunner) {
    if runner.backend() == Backend::RustPython {
        return; // no coroutines there
    }
    define(&runner).await;
    runner.run(ASYNC_GENERATORS).await.unwrap();
    // 100 items, 20 ms each, read as they come by another task.
    let stream = runner.call("paced").arg(100).returns::<i64>().stream();
    let reader = tokio::spawn(async move { stream.collect::<Vec<_>>().await.len() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let done = runner.call("ten_steps").returns::<String>().await.unwrap();
    let took = started.elapsed();
    assert_eq!(done, "done");
    assert!(
        took < Duration::from_millis(1500),
        "a coroutine of ten 10 ms steps took {took:?} beside a stream"
    );
    assert_eq!(reader.await.unwrap(), 100);
}

pub async fn a_stream_dropped_before_it_opened_never_runs(runner: PyRunner) {
    define(&runner).await;
    let mut stream = runner.call("slow_to_start").returns::<u64>().stream();
    // Sent, and its function is running (it sleeps before it returns).
    assert!(
        tokio::time::timeout(Duration::from_millis(100), stream.next())
            .await
            .is_err()
    );
    drop(stream);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(runner.eval("made").await.unwrap(), json!(0));
    assert_eq!(runner.eval("'working'").await.unwrap(), json!("working"));
}

pub async fn stop_ends_open_streams(runner: PyRunner) {
    define(&runner).await;
    let mut stream = runner.call("endless").returns::<u64>().stream();
    assert_eq!(stream.next().await.unwrap().unwrap(), 1);
    runner.stop().await.unwrap();
    // What was made before may still come; then the end, never a hang.
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut last = None;
        while let Some(item) = stream.next().await {
            last = Some(item);
        }
        last
    })
    .await
    .expect("the stream ends when its runner stops");
    // An endless generator did not finish: its stream ends with `Stopped`.
    assert!(
        matches!(rest, Some(Err(PyRunnerError::Stopped))),
        "{rest:?}"
    );
}

/// `blocking_iter` on a plain thread, outside any runtime.
pub fn blocking_iter_reads_from_a_plain_thread(runner: PyRunner) {
    runner.run_sync(GENERATORS).unwrap();
    let worker = std::thread::spawn(move || {
        runner
            .call("count")
            .arg(1000)
            .returns::<u32>()
            .stream()
            .blocking_iter()
            .map(|item| item.unwrap())
            .collect::<Vec<u32>>()
    });
    let items = worker.join().unwrap();
    assert_eq!(items, (0..1000).collect::<Vec<u32>>());
}
