//! Host functions on the RustPython backend, beyond the shared suite: the
//! runner runs no event loop of its own, so async host functions are
//! awaited by a loop that the command's Python code runs (`asyncio.run`);
//! nested commands from places only this backend has; what a stopped
//! runner lets go.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_py::{HostCall, PyRunner, PyRunnerBuilder, PyRunnerError, Value};
use serde_json::json;

use crate::conformance::host::{wait_for, within_10s, SetOnDrop};

fn builder() -> PyRunnerBuilder {
    PyRunner::builder().rustpython()
}

const ASYNC_CODE: &str = r#"
import asyncio, async_py

async def many(n):
    return await asyncio.gather(*(async_py.host.slow(i) for i in range(n)))

def catch(name):
    async def go():
        try:
            await getattr(async_py.host, name)()
        except async_py.HostError as e:
            return str(e)
        return "no error"
    return asyncio.run(go())
"#;

fn with_async_functions(builder: PyRunnerBuilder) -> PyRunnerBuilder {
    builder
        .host_async_function("slow", |call: HostCall| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(call.args.first().cloned().unwrap_or(Value::Null))
        })
        .host_async_function("fails", |_| async { Err("async failure".to_string()) })
        .host_async_function("panics", |_| async {
            tokio::task::yield_now().await;
            panic!("async kaboom")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_host_functions_are_awaited_by_the_loop_the_command_runs() {
    let runner = with_async_functions(builder()).build().unwrap();
    runner.run(ASYNC_CODE).await.unwrap();
    let one = within_10s(
        "an async host call",
        runner.eval("asyncio.run(async_py.host.slow('x'))"),
    )
    .await;
    assert_eq!(one.unwrap(), "x");
    assert_eq!(
        runner
            .eval("asyncio.iscoroutinefunction(async_py.host.slow)")
            .await
            .unwrap(),
        true
    );
    assert_eq!(
        runner.call("catch").arg("fails").await.unwrap(),
        "async failure"
    );
    let panicked = runner.call("catch").arg("panics").await.unwrap();
    let panicked = panicked.as_str().unwrap();
    assert!(
        panicked.contains("panicked") && panicked.contains("async kaboom"),
        "{panicked}"
    );
    // The runner's own coroutine calls are still not this backend's.
    runner
        .run("async def one():\n    return await async_py.host.slow(1)")
        .await
        .unwrap();
    assert!(matches!(
        runner.call_async_function("one", vec![]).await,
        Err(PyRunnerError::Unsupported(_))
    ));
    // A loop of its own each time: the next `asyncio.run` is woken too.
    assert_eq!(
        runner
            .eval("[asyncio.run(async_py.host.slow(i)) for i in range(3)]")
            .await
            .unwrap(),
        json!([0, 1, 2])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_async_host_calls_overlap() {
    // How many of the calls' futures run at once, whatever the machine's
    // speed: one after another, never more than one.
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (running.clone(), most.clone());
    let runner = builder()
        .host_async_function("counted", move |call: HostCall| {
            let (now, peak) = (now.clone(), peak.clone());
            async move {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(at_once, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(call.args[0].clone())
            }
        })
        .build()
        .unwrap();
    runner
        .run("import asyncio, async_py\nasync def many(n):\n    return await asyncio.gather(*(async_py.host.counted(i) for i in range(n)))")
        .await
        .unwrap();
    let started = Instant::now();
    let all = within_10s("20 async host calls", runner.eval("asyncio.run(many(20))")).await;
    assert_eq!(all.unwrap(), json!((0..20).collect::<Vec<_>>()));
    let at_once = most.load(Ordering::SeqCst);
    assert!(
        at_once >= 5,
        "at most {at_once} of the 20 calls ran at once"
    );
    eprintln!(
        "20 async host calls of 100 ms, awaited together: {:?}, {at_once} at once",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_commands_from_an_async_host_function() {
    let runner = builder()
        .host_async_function("lookup", |call: HostCall| async move {
            let runner = call.runner().clone();
            let base = runner
                .eval("base + 1")
                .await
                .map_err(|err| err.to_string())?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            let doubled = runner
                .call("double")
                .arg(base.clone())
                .await
                .map_err(|err| err.to_string())?;
            Ok(json!([base, doubled]))
        })
        .host_async_function("blocking", |call: HostCall| async move {
            // A `_sync` twin from the future is served the same way.
            call.runner()
                .eval_sync("base * 3")
                .map_err(|err| err.to_string())
        })
        .build()
        .unwrap();
    runner
        .run("import asyncio, async_py\nbase = 20\ndef double(x):\n    return 2 * x")
        .await
        .unwrap();
    let answer = within_10s(
        "a nested command from an async host function",
        runner.eval("asyncio.run(async_py.host.lookup())"),
    )
    .await;
    assert_eq!(answer.unwrap(), json!([21, 42]));
    let answer = within_10s(
        "a blocking nested command from an async host function",
        runner.eval("asyncio.run(async_py.host.blocking())"),
    )
    .await;
    assert_eq!(answer.unwrap(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_drops_an_async_host_future_and_wakes_the_loop() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let runner = with_async_functions(builder())
        .host_async_function("forever", move |_| {
            let guard = SetOnDrop(flag.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    runner.run(ASYNC_CODE).await.unwrap();
    let started = Instant::now();
    let outcome = within_10s(
        "an async host call past its limit",
        runner
            .clone()
            .with_timeout(Duration::from_millis(300))
            .eval("asyncio.run(async_py.host.forever())"),
    )
    .await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Timeout(_))),
        "{outcome:?}"
    );
    wait_for(&dropped, "the host function's future was not dropped").await;
    // The loop, asleep with nothing else to do, was woken to see the
    // limit: the runner is free long before the future's 60 s.
    let next = within_10s("a command after the timeout", runner.eval("3")).await;
    assert_eq!(next.unwrap(), 3);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        within_10s(
            "async host calls after a timeout",
            runner.eval("asyncio.run(many(3))")
        )
        .await
        .unwrap(),
        json!([0, 1, 2])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_await_drops_the_host_future() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let runner = builder()
        .host_async_function("forever", move |_| {
            let guard = SetOnDrop(flag.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    let answer = within_10s(
        "asyncio.wait_for around an async host call",
        runner.run(
            r#"
import asyncio, async_py

async def main():
    try:
        await asyncio.wait_for(async_py.host.forever(), 0.05)
    except asyncio.TimeoutError:
        return "timed out"

outcome = asyncio.run(main())
"#,
        ),
    )
    .await;
    answer.unwrap();
    assert_eq!(runner.eval("outcome").await.unwrap(), "timed out");
    wait_for(&dropped, "the cancelled call's future was not dropped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_stream_or_stop_is_unsupported() {
    let runner = builder()
        .host_function("nested_stream", |call: HostCall| {
            let mut items = call.runner().call("range").arg(3).stream().blocking_iter();
            match items.next() {
                Some(Err(PyRunnerError::Unsupported(why))) => Ok(json!(why)),
                other => Err(format!("expected Unsupported, got {other:?}")),
            }
        })
        .host_function("nested_stop", |call: HostCall| {
            match call.runner().stop_sync() {
                Err(PyRunnerError::Unsupported(why)) => Ok(json!(why)),
                other => Err(format!("expected Unsupported, got {other:?}")),
            }
        })
        .build()
        .unwrap();
    runner.run("import async_py").await.unwrap();
    let why = within_10s(
        "a nested stream",
        runner.eval("async_py.host.nested_stream()"),
    )
    .await
    .unwrap();
    assert!(why.as_str().unwrap().contains("stream"), "{why}");
    let why = within_10s("a nested stop", runner.eval("async_py.host.nested_stop()"))
        .await
        .unwrap();
    assert!(why.as_str().unwrap().contains("stop"), "{why}");
    // Not stopped: it serves on.
    assert_eq!(runner.eval("1 + 1").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generator_calls_a_host_function_that_nests() {
    let runner = builder()
        .host_function("scaled", |call: HostCall| {
            let x: i64 = call.arg(0)?;
            let factor = call
                .runner()
                .eval_sync("factor")
                .map_err(|err| err.to_string())?;
            Ok(json!(x * factor.as_i64().unwrap_or(0)))
        })
        .build()
        .unwrap();
    runner
        .run("import async_py\nfactor = 10\ndef items(n):\n    for i in range(n):\n        yield async_py.host.scaled(i)")
        .await
        .unwrap();
    let runner_for_stream = runner.clone();
    let items = within_10s(
        "a stream whose generator nests commands",
        tokio::task::spawn_blocking(move || {
            runner_for_stream
                .call("items")
                .arg(4)
                .stream()
                .blocking_iter()
                .collect::<Result<Vec<Value>, _>>()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(items, vec![json!(0), json!(10), json!(20), json!(30)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_command_past_the_outer_limit_is_a_timeout() {
    let seen: Arc<Mutex<Option<Result<(), PyRunnerError>>>> = Arc::default();
    let record = seen.clone();
    let runner = builder()
        .host_function("spin", move |call: HostCall| {
            let nested = call.runner().run_sync("while True:\n    pass");
            *record.lock().unwrap() = Some(nested);
            Ok(Value::Null)
        })
        .build()
        .unwrap();
    runner.run("import async_py").await.unwrap();
    let outcome = within_10s(
        "a nested command under the outer limit",
        runner
            .call("async_py.host.spin")
            .timeout(Duration::from_millis(300))
            .into_future(),
    )
    .await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Timeout(_))),
        "{outcome:?}"
    );
    // The outer command's limit interrupted the nested one, which was
    // told `Timeout` with that limit.
    let started = Instant::now();
    while seen.lock().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the nested command never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let nested = seen.lock().unwrap().take().unwrap();
    assert!(
        matches!(nested, Err(PyRunnerError::Timeout(limit)) if limit == Duration::from_millis(300)),
        "{nested:?}"
    );
    assert_eq!(runner.eval("2 + 2").await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_runner_lets_its_host_functions_go() {
    let released = Arc::new(AtomicBool::new(false));
    let guard = SetOnDrop(released.clone());
    let runner = builder()
        .host_function("hold", move |_| {
            let _held = &guard;
            Ok(Value::Null)
        })
        .build()
        .unwrap();
    runner
        .run("import async_py\nf = async_py.host.hold\nf()")
        .await
        .unwrap();
    runner.stop().await.unwrap();
    wait_for(&released, "the host function was kept after stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_capture_keeps_its_own_output() {
    let runner = builder()
        .host_function("inner", |call: HostCall| {
            let captured = call
                .runner()
                .exec("print('inner')")
                .capture_output()
                .wait()
                .map_err(|err| err.to_string())?;
            Ok(json!(captured.stdout))
        })
        .build()
        .unwrap();
    runner
        .run("import async_py\ndef outer():\n    print('before')\n    got = async_py.host.inner()\n    print('after')\n    return got")
        .await
        .unwrap();
    let captured = within_10s(
        "a captured nested command inside a captured call",
        runner.call("outer").capture_output().into_future(),
    )
    .await
    .unwrap();
    assert_eq!(captured.value, "inner\n");
    assert_eq!(captured.stdout, "before\nafter\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_of_a_closed_loop_does_not_keep_the_others_pending() {
    let runner = with_async_functions(builder()).build().unwrap();
    runner.run(ASYNC_CODE).await.unwrap();
    // Two loops kept from one command to the next, each awaiting a call:
    // one is closed before its call finishes, the other stays open.
    runner
        .run(
            r#"
import time

closed = asyncio.new_event_loop()
closed_task = closed.create_task(async_py.host.slow("closed"))
closed.run_until_complete(asyncio.sleep(0))
closed.close()
kept = asyncio.new_event_loop()
kept_task = kept.create_task(async_py.host.slow("kept"))
kept.run_until_complete(asyncio.sleep(0))

async def busy_then_gather():
    tasks = [asyncio.ensure_future(async_py.host.slow(i)) for i in range(3)]
    await asyncio.sleep(0)
    time.sleep(0.3)
    return await asyncio.gather(*tasks)
"#,
        )
        .await
        .unwrap();
    // The loop that runs next is busy while every call finishes, so that
    // one drain finds all their results, the closed loop's first.
    let answer = within_10s(
        "calls finishing with one of a closed loop",
        runner.eval("asyncio.run(busy_then_gather())"),
    )
    .await;
    assert_eq!(answer.unwrap(), json!([0, 1, 2]));
    // The open loop's future was handed to it, and is settled when it runs.
    let kept = within_10s(
        "the kept loop's call",
        runner.eval("kept.run_until_complete(kept_task)"),
    )
    .await;
    assert_eq!(kept.unwrap(), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_function_may_send_commands_before_its_first_await_under_asyncio_run() {
    let runner = builder()
        .host_async_function("early", |call: HostCall| {
            // Made on a runtime thread while the runner's thread runs the
            // loop that awaits it: a blocking command to that runner.
            let seen = call.runner().eval_sync("base");
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                seen.map_err(|err| err.to_string())
            }
        })
        .build()
        .unwrap();
    runner
        .run("import asyncio, async_py\nbase = 7")
        .await
        .unwrap();
    let answer = within_10s(
        "a command sent as an async host function is made",
        runner.eval("asyncio.run(async_py.host.early())"),
    )
    .await;
    assert_eq!(answer.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_function_that_retries_after_the_limit_ends() {
    const TRIES: usize = 20_000;
    let tries = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let (counted, succeeded) = (tries.clone(), ran.clone());
    let runner = builder()
        .host_function("retry", move |call: HostCall| {
            std::thread::sleep(Duration::from_millis(400));
            // Past the limit now: every nested command is refused, so a
            // loop that retries until one succeeds ends.
            for _ in 0..TRIES {
                counted.fetch_add(1, Ordering::SeqCst);
                match call.runner().eval_sync("1") {
                    Ok(_) => {
                        succeeded.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(PyRunnerError::Timeout(limit)) if limit == Duration::from_millis(150) => {}
                    Err(err) => return Err(format!("not the outer limit: {err}")),
                }
            }
            Err("gave up".into())
        })
        .build()
        .unwrap();
    runner.run("import async_py").await.unwrap();
    let limited = runner.clone().with_timeout(Duration::from_millis(150));
    let outcome = within_10s(
        "a host function that retries",
        limited.eval("async_py.host.retry()"),
    )
    .await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Timeout(_))),
        "{outcome:?}"
    );
    let after = within_10s("a command after the retries", runner.eval("2")).await;
    assert_eq!(after.unwrap(), 2);
    assert_eq!(tries.load(Ordering::SeqCst), TRIES);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "nested commands ran past the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_future_that_sends_commands_in_a_loop_ends_after_its_call() {
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    let runner = builder()
        .host_async_function("hammer", move |call: HostCall| {
            let flag = flag.clone();
            async move {
                // Blocking commands, with no await in between (an abort
                // cannot end this loop): it ends once 50 are refused, which
                // takes no time only if refusals come at once.
                let mut refused = 0;
                while refused < 50 {
                    if call.runner().eval_sync("1").is_err() {
                        refused += 1;
                    }
                }
                flag.store(true, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    // Awaited by a loop kept from one command to the next, which a command
    // past its limit runs: the call is dropped, and no loop runs after.
    runner
        .run(
            r#"
import asyncio, async_py
kept = asyncio.new_event_loop()
task = kept.create_task(async_py.host.hammer())
"#,
        )
        .await
        .unwrap();
    let outcome = within_10s(
        "a loop serving a host function's commands past its limit",
        runner
            .clone()
            .with_timeout(Duration::from_millis(300))
            .eval("kept.run_until_complete(asyncio.sleep(30))"),
    )
    .await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Timeout(_))),
        "{outcome:?}"
    );
    wait_for(
        &ended,
        "the host future blocked on its commands after its call",
    )
    .await;
    assert_eq!(runner.eval("2 + 2").await.unwrap(), 4);
    within_10s("stop", runner.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_item_past_its_limit_drops_the_host_future() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let runner = builder()
        .host_async_function("forever", move |_| {
            let guard = SetOnDrop(flag.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    // The call is awaited by a loop the generator keeps: nothing cancels
    // it when the second item runs past its limit.
    runner
        .run(
            r#"
import asyncio, async_py

def items():
    kept = asyncio.new_event_loop()
    task = kept.create_task(async_py.host.forever())
    kept.run_until_complete(asyncio.sleep(0))
    yield 1
    kept.run_until_complete(asyncio.sleep(30))
    yield 2
"#,
        )
        .await
        .unwrap();
    let streaming = runner.clone();
    let items = within_10s(
        "a stream whose item awaits a host function past its limit",
        tokio::task::spawn_blocking(move || {
            streaming
                .call("items")
                .timeout(Duration::from_millis(300))
                .stream()
                .blocking_iter()
                .collect::<Vec<Result<Value, _>>>()
        }),
    )
    .await
    .unwrap();
    assert!(matches!(items[0], Ok(ref one) if one == 1), "{items:?}");
    assert!(
        matches!(items.last(), Some(Err(PyRunnerError::Timeout(_)))),
        "{items:?}"
    );
    wait_for(&dropped, "the stream item's host future was not dropped").await;
    assert_eq!(runner.eval("2 + 2").await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_command_at_a_stream_s_start_is_told_the_stream_s_limit() {
    let seen: Arc<Mutex<Option<Result<(), PyRunnerError>>>> = Arc::default();
    let record = seen.clone();
    let runner = builder()
        .host_function("spin", move |call: HostCall| {
            let nested = call.runner().run_sync("while True:\n    pass");
            *record.lock().unwrap() = Some(nested);
            Ok(Value::Null)
        })
        .build()
        .unwrap();
    runner
        .run("import async_py\ndef items():\n    async_py.host.spin()\n    return iter([1])")
        .await
        .unwrap();
    let streaming = runner.clone();
    let items = within_10s(
        "a stream whose start nests a command past its limit",
        tokio::task::spawn_blocking(move || {
            streaming
                .call("items")
                .timeout(Duration::from_millis(300))
                .stream()
                .blocking_iter()
                .collect::<Vec<Result<Value, _>>>()
        }),
    )
    .await
    .unwrap();
    assert!(
        matches!(items.last(), Some(Err(PyRunnerError::Timeout(_)))),
        "{items:?}"
    );
    let started = Instant::now();
    while seen.lock().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the nested command never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let nested = seen.lock().unwrap().take().unwrap();
    assert!(
        matches!(nested, Err(PyRunnerError::Timeout(limit)) if limit == Duration::from_millis(300)),
        "{nested:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_kept_past_a_timeout_sees_its_host_call_fail() {
    let runner = builder()
        .host_async_function("forever", |_| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(Value::Null)
        })
        .build()
        .unwrap();
    runner
        .run(
            r#"
import asyncio, async_py
kept = asyncio.new_event_loop()
task = kept.create_task(async_py.host.forever())

async def outcome():
    try:
        await task
    except async_py.HostError as e:
        return str(e)
    return "no error"
"#,
        )
        .await
        .unwrap();
    let timed_out = within_10s(
        "a kept loop past its limit",
        runner
            .clone()
            .with_timeout(Duration::from_millis(300))
            .eval("kept.run_until_complete(asyncio.sleep(30))"),
    )
    .await;
    assert!(
        matches!(timed_out, Err(PyRunnerError::Timeout(_))),
        "{timed_out:?}"
    );
    let message = within_10s(
        "the kept loop's task after the timeout",
        runner.eval("kept.run_until_complete(outcome())"),
    )
    .await
    .unwrap();
    assert!(
        message.as_str().unwrap().contains("past its limit"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_on_a_thread_and_on_the_runner_s_thread_both_get_their_results() {
    let runner = with_async_functions(builder()).build().unwrap();
    runner.run(ASYNC_CODE).await.unwrap();
    runner
        .run(
            r#"
import threading

def both(rounds):
    out = []
    for _ in range(rounds):
        box = {}
        def other():
            box["thread"] = asyncio.run(many(10))
        t = threading.Thread(target=other)
        t.start()
        mine = asyncio.run(many(10))
        t.join(10)
        out.append([mine == list(range(10)), box.get("thread") == list(range(10))])
    return out
"#,
        )
        .await
        .unwrap();
    let answer = within_10s(
        "a loop on a Python thread and one on the runner's",
        runner.call("both").arg(5).into_future(),
    )
    .await;
    assert_eq!(answer.unwrap(), json!(vec![[true, true]; 5]));
}
