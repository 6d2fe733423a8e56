//! Sync commands while coroutines are pending, and batches of requests in
//! one child: limits still hold, large requests still go out, every request
//! runs once, and a child that dies while idle is replaced before it is needed.

use crate::faults;

use std::future::Future;
use std::time::Duration;

use async_py::PyRunnerError;
use faults::*;
use serde_json::json;

const PENDING: &str = "import asyncio\nasync def forever():\n    await asyncio.sleep(1000)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_holds_while_a_coroutine_is_pending() {
    let runner = runner();
    runner.run(PENDING).await.unwrap();
    let pending = tokio::spawn({
        let runner = runner.clone();
        async move { runner.call_async_function("forever", vec![]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let limit = Duration::from_millis(300);
    let limited = runner.clone().with_timeout(limit);
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        limited.run("while True:\n    pass"),
    )
    .await;
    assert_eq!(
        outcome.expect("the limit was enforced"),
        Err(PyRunnerError::Timeout(limit))
    );
    assert!(matches!(
        pending.await.unwrap(),
        Err(PyRunnerError::WorkerDied { .. })
    ));
    assert_eq!(runner.eval("'after'").await.unwrap(), json!("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_goes_out_while_a_coroutine_is_pending() {
    let runner = runner();
    runner.run(PENDING).await.unwrap();
    let _pending = tokio::spawn({
        let runner = runner.clone();
        async move { runner.call_async_function("forever", vec![]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let code = format!("big = '{}'\nsize = len(big)", "x".repeat(4 << 20));
    let sent = tokio::time::timeout(Duration::from_secs(20), runner.run(&code)).await;
    sent.expect("the whole request was written").unwrap();
    assert_eq!(runner.read_variable("size").await.unwrap(), json!(4 << 20));
}

/// Requests that reach the child together are answered one by one, so a
/// crash or a limit is pinned on the request that caused it and nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sent_together_run_once_and_faults_land_on_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let runner = runner();
    runner
        .run(&format!(
            "import os, time\ndef note(tag):\n    open({:?}, 'a').write(tag)",
            log.display().to_string()
        ))
        .await
        .unwrap();
    let blocker = runner.run("time.sleep(0.2)");
    let first = runner.run("note('1')");
    let crash = runner.run("note('2')\nos._exit(7)");
    let (blocker, first, crash) = tokio::join!(blocker, first, crash);
    blocker.unwrap();
    first.unwrap();
    assert!(
        matches!(crash, Err(PyRunnerError::WorkerDied { .. })),
        "{crash:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "12",
        "each request ran exactly once"
    );

    let limit = Duration::from_millis(500);
    let limited = runner.clone().with_timeout(limit);
    let quick = limited.eval("1 + 1");
    let slow = limited.run("while True:\n    pass");
    let (quick, slow) = tokio::join!(quick, slow);
    assert_eq!(quick.unwrap(), json!(2), "the quick request is not blamed");
    assert_eq!(slow, Err(PyRunnerError::Timeout(limit)));
}

#[test]
fn a_child_that_dies_while_idle_is_replaced_before_the_next_command() {
    let runner = runner();
    let pid = child_pid(&runner);
    kill(pid, 9);
    eventually("the dead idle child is reaped", || is_gone(pid));
    assert_eq!(
        runner.eval_sync("1 + 1").unwrap(),
        json!(2),
        "the next command just runs"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_polled_once_and_left_does_not_hold_up_the_next() {
    // The first call is sent and then not polled again while the task awaits
    // another call (as in a `select!`): the second must still be answered.
    let runner = runner();
    runner
        .run("import time\ndef slow():\n    time.sleep(0.05)\n    return 1")
        .await
        .unwrap();
    let first = runner.call_function("slow", vec![]);
    tokio::pin!(first);
    std::future::poll_fn(|cx| {
        assert!(first.as_mut().poll(cx).is_pending());
        std::task::Poll::Ready(())
    })
    .await;
    let second = tokio::time::timeout(Duration::from_secs(20), runner.eval("1 + 1"))
        .await
        .expect("the second call was answered");
    assert_eq!(second.unwrap(), json!(2));
    assert_eq!(first.await.unwrap(), json!(1));
}

#[test]
fn threads_calling_at_once_are_all_answered() {
    let runner = runner();
    let (done, finished) = std::sync::mpsc::channel();
    for thread in 0..3 {
        let runner = runner.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 0..500 {
                let got = runner.eval_sync(&format!("{thread} * 1000 + {i}")).unwrap();
                assert_eq!(got, json!(thread * 1000 + i));
            }
            done.send(()).unwrap();
        });
    }
    for _ in 0..3 {
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("every thread got all its replies");
    }
}
