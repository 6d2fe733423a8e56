//! Host functions where the in-process CPython backend differs: runners
//! share one interpreter (each sees its own functions), Python threads,
//! loops other than the runner's, nested commands served on the runner's
//! thread, and the interpreter left free while a host function runs.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_py::{HostCall, PyRunner, PyRunnerBuilder, PyRunnerError, Value};
use serde_json::json;

use crate::conformance::host::{wait_for, within_10s, SetOnDrop};

fn builder() -> PyRunnerBuilder {
    PyRunner::builder().pyo3()
}

fn err_text(err: PyRunnerError) -> String {
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_in_one_process_each_see_their_own_functions() {
    let first = builder()
        .host_function("first_only", |_| Ok(json!(1)))
        .build()
        .unwrap();
    let second = builder()
        .host_function("second_only", |_| Ok(json!(2)))
        .host_async_function("second_async", |_| async { Ok(json!(22)) })
        .build()
        .unwrap();
    let neither = builder().build().unwrap();
    let names = "import async_py\nnames = sorted(vars(async_py.host))";
    for runner in [&first, &second, &neither] {
        runner.run(names).await.unwrap();
    }
    assert_eq!(first.eval("names").await.unwrap(), json!(["first_only"]));
    assert_eq!(
        second.eval("names").await.unwrap(),
        json!(["second_async", "second_only"])
    );
    assert_eq!(neither.eval("names").await.unwrap(), json!([]));
    assert_eq!(first.eval("async_py.host.first_only()").await.unwrap(), 1);
    assert_eq!(second.eval("async_py.host.second_only()").await.unwrap(), 2);
    let err = first.eval("async_py.host.second_only()").await.unwrap_err();
    assert!(
        matches!(&err, PyRunnerError::Python { kind, .. } if kind == "AttributeError"),
        "{err:?}"
    );
    // One module for the interpreter, one HostError class.
    first
        .run("import sys\nsys.async_py_error = async_py.HostError")
        .await
        .unwrap();
    assert_eq!(
        second
            .eval("__import__('sys').async_py_error is async_py.HostError")
            .await
            .unwrap(),
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_of_asyncio_to_thread_call_host_functions() {
    let runner = builder()
        .host_function("ask", |call: HostCall| {
            // Not on the runner's thread: the command queues, and the
            // runner, whose coroutine awaits the thread, serves it.
            call.runner().eval_sync("base * 2").map_err(err_text)
        })
        .host_async_function("later", |call: HostCall| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(call.args.first().cloned().unwrap_or(Value::Null))
        })
        .build()
        .unwrap();
    runner
        .run(
            r#"
import asyncio, async_py
base = 21

async def sync_in_thread():
    return await asyncio.to_thread(lambda: async_py.host.ask())

async def async_in_thread():
    # A loop of the thread's own awaits the async host function.
    return await asyncio.to_thread(asyncio.run, async_py.host.later("there"))
"#,
        )
        .await
        .unwrap();
    let asked = within_10s(
        "a host function in a thread, with a command",
        runner.call("sync_in_thread").into_future(),
    )
    .await;
    assert_eq!(asked.unwrap(), 42);
    let later = within_10s(
        "an async host function on a thread's loop",
        runner.call("async_in_thread").into_future(),
    )
    .await;
    assert_eq!(later.unwrap(), "there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_run_inside_a_command_awaits_an_async_host_function() {
    let runner = builder()
        .host_async_function("later", |call: HostCall| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(json!([call.args, "done"]))
        })
        .host_async_function("fails", |_| async { Err("no luck".to_string()) })
        .build()
        .unwrap();
    runner
        .run("import asyncio, async_py\nr = asyncio.run(async_py.host.later(1))")
        .await
        .unwrap();
    assert_eq!(runner.eval("r").await.unwrap(), json!([[1], "done"]));
    let code = r#"
async def catch():
    try:
        await async_py.host.fails()
    except async_py.HostError as e:
        return str(e)
loop = asyncio.new_event_loop()
caught = loop.run_until_complete(catch())
loop.close()
"#;
    within_10s("run_until_complete in a command", runner.run(code))
        .await
        .unwrap();
    assert_eq!(runner.eval("caught").await.unwrap(), "no luck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_thread_sees_no_functions_unless_handed_them() {
    let runner = builder()
        .host_function("hello", |_| Ok(json!("hi")))
        .build()
        .unwrap();
    runner
        .run(
            r#"
import threading, async_py
seen = {}
host = async_py.host

def look():
    seen["own"] = sorted(vars(async_py.host))
    seen["handed"] = host.hello()

t = threading.Thread(target=look)
t.start()
t.join()
"#,
        )
        .await
        .unwrap();
    assert_eq!(
        runner.eval("seen").await.unwrap(),
        json!({"own": [], "handed": "hi"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coroutines_and_streams_see_the_functions() {
    let runner = builder()
        .host_function("twice", |call: HostCall| {
            let x: i64 = call.arg(0)?;
            Ok(json!(2 * x))
        })
        .build()
        .unwrap();
    runner
        .run(
            r#"
import asyncio, async_py

async def coro(x):
    await asyncio.sleep(0)
    task = asyncio.ensure_future(asyncio.sleep(0, async_py.host.twice(x)))
    return await task + async_py.host.twice(1)

def items(n):
    for i in range(n):
        yield async_py.host.twice(i)
"#,
        )
        .await
        .unwrap();
    assert_eq!(runner.call("coro").arg(5).await.unwrap(), 12);
    let items: Vec<i64> = runner
        .call("items")
        .arg(4)
        .returns::<i64>()
        .stream()
        .blocking_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(items, [0, 2, 4, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_commands_that_need_the_worker_are_unsupported() {
    let runner = builder()
        .host_function("try_all", |call: HostCall| {
            let runner = call.runner();
            let mut outcomes = Vec::new();
            let mut note = |outcome: Result<Value, PyRunnerError>| {
                outcomes.push(match outcome {
                    Err(PyRunnerError::Unsupported(why)) => {
                        assert!(why.contains("host function"), "{why}");
                        json!("unsupported")
                    }
                    Ok(value) => value,
                    Err(other) => json!(format!("{other:?}")),
                });
            };
            note(runner.call_async_function_sync("coro", vec![]));
            note(runner.call("coro").wait());
            note(runner.stop_sync().map(|()| Value::Null));
            let first = runner.call("gen").stream().blocking_iter().next();
            note(first.unwrap_or(Ok(Value::Null)));
            // What needs only the namespace still runs.
            note(runner.eval_sync("'plain'"));
            let captured = runner
                .call("say")
                .capture_output()
                .wait()
                .map_err(err_text)?;
            outcomes.push(json!([captured.value, captured.stdout]));
            Ok(Value::Array(outcomes))
        })
        .build()
        .unwrap();
    runner
        .run(
            r#"
import async_py
async def coro():
    return 1
def gen():
    yield 1
def say():
    print("said")
    return 5
"#,
        )
        .await
        .unwrap();
    let outcomes = within_10s("nested commands", runner.eval("async_py.host.try_all()")).await;
    assert_eq!(
        outcomes.unwrap(),
        json!([
            "unsupported",
            "unsupported",
            "unsupported",
            "unsupported",
            "plain",
            [5, "said\n"]
        ])
    );
    // The runner was not stopped, and awaits as before.
    assert_eq!(runner.call("coro").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_command_runs_under_the_limit_of_the_command_that_called() {
    let runner = builder()
        .host_function("spin_nested", |call: HostCall| {
            call.runner()
                .run_sync("while True: pass")
                .map(|()| Value::Null)
                .map_err(err_text)
        })
        .build()
        .unwrap();
    runner.run("import async_py").await.unwrap();
    let started = Instant::now();
    let outcome = within_10s(
        "a nested command past the caller's limit",
        runner
            .clone()
            .with_timeout(Duration::from_millis(300))
            .run("async_py.host.spin_nested()\nafter = True"),
    )
    .await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Timeout(_))),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(runner.eval("'after' in globals()").await.unwrap(), false);
    assert_eq!(runner.eval("1 + 1").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_limit_ends_when_its_host_function_returns() {
    // The nested command runs Python after the limit passed: it takes the
    // interrupt, and the command that called must still end.
    let runner = builder()
        .host_function("late", |call: HostCall| {
            std::thread::sleep(Duration::from_millis(600));
            let nested = call.runner().run_sync("nested = True");
            Ok(json!(format!("{nested:?}")))
        })
        .build()
        .unwrap();
    runner.run("import async_py").await.unwrap();
    let outcome = within_10s(
        "a host function past the limit",
        runner
            .clone()
            .with_timeout(Duration::from_millis(200))
            .run("r = async_py.host.late()\nafter = True"),
    )
    .await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Timeout(_))),
        "{outcome:?}"
    );
    // Wait for the host function to return.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        runner
            .eval("'r' in globals(), 'after' in globals()")
            .await
            .unwrap(),
        json!([false, false])
    );
    assert_eq!(runner.eval("async_py.host.late()").await.unwrap(), "Ok(())");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_runners_go_on_while_a_host_function_blocks() {
    let blocking = builder()
        .host_function("block", |_| {
            std::thread::sleep(Duration::from_millis(600));
            Ok(Value::Null)
        })
        .build()
        .unwrap();
    let other = builder().build().unwrap();
    blocking.run("import async_py").await.unwrap();
    other.run("x = 1").await.unwrap();
    let (blocked, quick) = tokio::join!(blocking.eval("async_py.host.block()"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        other.eval("x + 1").await.unwrap();
        started.elapsed()
    });
    blocked.unwrap();
    assert!(quick < Duration::from_millis(300), "{quick:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_handed_to_another_runner_queues_its_commands() {
    // Runner `owner`'s function, called on `caller`'s thread: its command to
    // `owner` is not nested (owner waits for nothing) and queues as usual.
    let owner = builder()
        .host_function("ask_owner", |call: HostCall| {
            call.runner().eval_sync("who").map_err(err_text)
        })
        .build()
        .unwrap();
    let caller = builder().build().unwrap();
    owner
        .run(
            "import sys, async_py\nwho = 'owner'\nsys.async_py_ask_owner = async_py.host.ask_owner",
        )
        .await
        .unwrap();
    caller.run("who = 'caller'").await.unwrap();
    let asked = within_10s(
        "another runner's host function",
        caller.eval("__import__('sys').async_py_ask_owner()"),
    )
    .await;
    assert_eq!(asked.unwrap(), "owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_drops_the_futures_of_pending_async_calls() {
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
    runner
        .run(
            "import asyncio, async_py\nasync def wait():\n    return await async_py.host.forever()",
        )
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let runner = runner.clone();
        async move { runner.call("wait").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    within_10s("stop", runner.stop()).await.unwrap();
    let waited = waiting.await.unwrap();
    assert!(waited.is_err(), "{waited:?}");
    wait_for(&dropped, "not dropped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_function_that_retries_after_the_limit_ends() {
    let tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = tries.clone();
    let runner = builder()
        .host_function("retry", move |call: HostCall| {
            std::thread::sleep(Duration::from_millis(400));
            // Past the limit now: every nested command is refused, so a
            // loop that retries until one succeeds ends.
            for _ in 0..1_000_000 {
                counted.fetch_add(1, Ordering::SeqCst);
                if call.runner().eval_sync("1").is_ok() {
                    return Ok(json!("a nested command ran past the limit"));
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
    // The runner is free again once the host function gave up.
    let after = within_10s("a command after the retries", runner.eval("2")).await;
    assert_eq!(after.unwrap(), 2);
    assert_eq!(tries.load(Ordering::SeqCst), 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_awaited_by_a_command_s_own_run_until_complete_gets_its_result() {
    let runner = builder()
        .host_async_function("later", |call: HostCall| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(call.args[0].clone())
        })
        .build()
        .unwrap();
    runner
        .run("import asyncio, async_py\nasync def start():\n    global task\n    task = asyncio.ensure_future(async_py.host.later(5))")
        .await
        .unwrap();
    // The task starts on the runner's loop in a turn, and is awaited by a
    // sync command that runs the loop itself.
    runner.call("start").await.unwrap();
    let value = within_10s(
        "run_until_complete of a task awaiting a host function",
        runner.eval("asyncio.get_event_loop().run_until_complete(task)"),
    )
    .await;
    assert_eq!(value.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_of_another_loop_is_failed_at_stop() {
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
import asyncio, sys, threading, async_py
# Held by the thread itself: the runner's globals are cleared at stop.
def in_thread(fn, outcome):
    async def main():
        try:
            await fn()
        except Exception as e:
            outcome.append(type(e).__name__ + ": " + str(e))
    asyncio.run(main())
sys.async_py_test_outcome = []
threading.Thread(target=in_thread, args=(async_py.host.forever, sys.async_py_test_outcome)).start()
"#,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    runner.stop().await.unwrap();
    // Another runner of the same interpreter reads what the thread saw.
    let reader = builder().build().unwrap();
    let started = Instant::now();
    loop {
        let outcome = reader
            .eval("__import__('sys').async_py_test_outcome")
            .await
            .unwrap();
        if outcome != json!([]) {
            assert_eq!(outcome, json!(["HostError: the runner stopped"]));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the thread still waits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
