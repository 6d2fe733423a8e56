//! Coroutines on one long-lived event loop per runner.
//!
//! Overlap is proven by dependency, not by the clock: a call that waits for
//! an event another call sets can only finish if both run at once.

use std::time::Duration;

use async_py::{PyRunner, PyRunnerError};
use serde_json::json;

const EVENTS: &str = r#"
import asyncio
gate = None
async def wait_at_gate():
    global gate
    gate = gate or asyncio.Event()
    await gate.wait()
    return "passed"
async def open_gate():
    global gate
    gate = gate or asyncio.Event()
    gate.set()
    return "opened"
"#;

pub async fn coroutines_overlap_at_await_points(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    let runner = runner.with_timeout(Duration::from_secs(10));
    runner.run(EVENTS).await.unwrap();
    let waiting = runner.call_async_function("wait_at_gate", vec![]);
    let opening = runner.call_async_function("open_gate", vec![]);
    let (waited, opened) = tokio::join!(waiting, opening);
    assert_eq!(waited.unwrap(), json!("passed"));
    assert_eq!(opened.unwrap(), json!("opened"));
}

pub async fn future_made_in_one_call_is_awaited_in_another(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    let runner = runner.with_timeout(Duration::from_secs(10));
    runner
        .run(
            "import asyncio\nasync def make_future():\n    global fut\n    fut = asyncio.get_running_loop().create_future()\n    return 'made'\n\
             async def await_future():\n    return await fut\n\
             async def resolve_future(v):\n    fut.set_result(v)\n    return 'resolved'\n",
        )
        .await
        .unwrap();
    assert_eq!(
        runner
            .call_async_function("make_future", vec![])
            .await
            .unwrap(),
        json!("made")
    );
    let awaiting = runner.call_async_function("await_future", vec![]);
    let resolving = runner.call_async_function("resolve_future", vec![json!({"v": [1, 2]})]);
    let (awaited, resolved) = tokio::join!(awaiting, resolving);
    assert_eq!(resolved.unwrap(), json!("resolved"));
    assert_eq!(awaited.unwrap(), json!({"v": [1, 2]}));
    // A lock made in one call still works in the next: same loop.
    runner
        .run("lock = None\nasync def locked(v):\n    global lock\n    lock = lock or asyncio.Lock()\n    async with lock:\n        await asyncio.sleep(0)\n        return v\n")
        .await
        .unwrap();
    for i in 0..3 {
        assert_eq!(
            runner
                .call_async_function("locked", vec![json!(i)])
                .await
                .unwrap(),
            json!(i)
        );
    }
}

pub async fn thousand_sleeping_coroutines_all_finish(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    runner
        .run("import asyncio\nasync def nap(i):\n    await asyncio.sleep(0.1)\n    return i * 2")
        .await
        .unwrap();
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let runner = runner.clone();
            tokio::spawn(
                async move { (i, runner.call_async_function("nap", vec![json!(i)]).await) },
            )
        })
        .collect();
    for call in calls {
        let (i, result) = call.await.unwrap();
        assert_eq!(result.unwrap(), json!(i * 2));
    }
}

pub async fn plain_commands_run_while_coroutines_wait(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    let runner = runner.with_timeout(Duration::from_secs(10));
    runner.run(EVENTS).await.unwrap();
    let waiting = tokio::spawn({
        let runner = runner.clone();
        async move { runner.call_async_function("wait_at_gate", vec![]).await }
    });
    // Give the coroutine a chance to start and block on the gate.
    for _ in 0..50 {
        if runner.eval("gate is not None").await.unwrap() == json!(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..100 {
        assert_eq!(
            runner.eval(&format!("{i} * 3")).await.unwrap(),
            json!(i * 3)
        );
    }
    assert!(
        !waiting.is_finished(),
        "the coroutine is still waiting at the gate"
    );
    runner.run("gate.set()").await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), json!("passed"));
}

pub async fn coroutine_exceptions_are_structured(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    runner
        .run("import asyncio\nasync def fail_later():\n    await asyncio.sleep(0)\n    raise LookupError('gone')")
        .await
        .unwrap();
    match runner.call_async_function("fail_later", vec![]).await {
        Err(PyRunnerError::Python {
            kind,
            message,
            traceback,
        }) => {
            assert_eq!(kind, "LookupError");
            assert_eq!(message, "gone");
            assert!(traceback.unwrap_or_default().contains("fail_later"));
        }
        other => panic!("expected LookupError, got {other:?}"),
    }
    match runner
        .call_async_function("no_such_coroutine", vec![])
        .await
    {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "NameError"),
        other => panic!("expected NameError, got {other:?}"),
    }
}

pub async fn non_awaitable_result_is_returned_as_is(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    runner.run("def plain(x):\n    return x + 1").await.unwrap();
    assert_eq!(
        runner
            .call_async_function("plain", vec![json!(1)])
            .await
            .unwrap(),
        json!(2)
    );
    // And the other way round: call_function on an async def gives the
    // unawaited coroutine as a string, as documented.
    runner.run("async def coro():\n    return 1").await.unwrap();
    let got = runner.call_function("coro", vec![]).await.unwrap();
    assert!(got.as_str().unwrap().contains("coroutine"), "{got}");
}

/// SystemExit and KeyboardInterrupt raised in a coroutine fail its own call
/// (asyncio lets these two out of the loop); the others go on.
pub async fn a_coroutine_that_exits_fails_only_its_own_call(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    runner
        .run(
            "import asyncio, sys\n\
             async def nap(tag):\n    await asyncio.sleep(0.2)\n    return tag\n\
             async def leave():\n    await asyncio.sleep(0.02)\n    sys.exit(7)\n\
             async def interrupt():\n    await asyncio.sleep(0.02)\n    raise KeyboardInterrupt('stop')",
        )
        .await
        .unwrap();
    for (raiser, kind) in [("leave", "SystemExit"), ("interrupt", "KeyboardInterrupt")] {
        let (raised, other) = tokio::join!(
            runner.call_async_function(raiser, vec![]),
            runner.call_async_function("nap", vec![json!(raiser)])
        );
        match raised {
            Err(PyRunnerError::Python { kind: got, .. }) => assert_eq!(got, kind),
            other => panic!("expected {kind}, got {other:?}"),
        }
        assert_eq!(other.unwrap(), json!(raiser), "the other call after {kind}");
    }
}

/// A task that a call left running (a 10 ms ticker) goes on while no command
/// is pending, as on a long-lived loop it should.
pub async fn background_tasks_run_between_commands(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    runner
        .run(
            r#"
import asyncio
ticks = 0
async def tick():
    global ticks
    while True:
        ticks += 1
        await asyncio.sleep(0.01)
async def start_ticking():
    global ticker
    ticker = asyncio.ensure_future(tick())
"#,
        )
        .await
        .unwrap();
    runner
        .call_async_function("start_ticking", vec![])
        .await
        .unwrap();
    let before = runner.read_variable("ticks").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = runner.read_variable("ticks").await.unwrap();
    let ticked = after.as_i64().unwrap() - before.as_i64().unwrap();
    // About 100 at full speed; a slow machine still gives many more than 10.
    assert!(
        ticked >= 10,
        "the ticker ran {ticked} times in 1 s with no command pending"
    );
}

/// An asyncio server started by a call answers a client while the runner
/// has no command to run.
pub async fn servers_answer_between_commands(runner: PyRunner) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    runner
        .run(
            r#"
import asyncio
async def echo(reader, writer):
    line = await reader.readline()
    writer.write(b"echo " + line)
    await writer.drain()
    writer.close()
async def serve():
    global server
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1]
"#,
        )
        .await
        .unwrap();
    let port = runner.call_async_function("serve", vec![]).await.unwrap();
    let port = u16::try_from(port.as_u64().unwrap()).unwrap();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream.write_all(b"hi\n").await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server answered within 10 s with no command pending");
    assert_eq!(answer, "echo hi\n");
    runner.run("server.close()").await.unwrap();
}
