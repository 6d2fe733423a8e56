//! What user code does to its own process: a fork that comes back into the
//! worker, and SIGINT raised by the code itself. Neither may answer for the
//! worker or cost it its globals.

use crate::faults;

use std::time::Duration;

use async_py::{PyRunner, PyRunnerError};
use faults::*;
use serde_json::json;

#[test]
fn a_forked_copy_that_returns_into_the_worker_exits_without_answering() {
    // With replies in the ring and on the pipe: the copy shares both.
    for ring in ["1", "0"] {
        let runner = builder().env("ASYNC_PY_REPLY_RING", ring).build().unwrap();
        runner.run_sync("import os\nG = 'kept'").unwrap();
        let worker = child_pid(&runner);
        // The worker's answer is the copy's pid; the copy's own (0) never comes.
        for _ in 0..3 {
            let copy = runner.eval_sync("os.fork()").unwrap();
            let copy = copy.as_u64().expect("the copy's pid, from the worker") as u32;
            assert!(copy != 0 && copy != worker, "ring {ring}: {copy}");
            eventually("the copy exits", || {
                runner.eval_sync(&copy_has_ended(copy)).unwrap() == json!(true)
            });
            let copy = runner
                .call_function_sync("os.fork", vec![])
                .unwrap()
                .as_u64()
                .expect("the copy's pid") as u32;
            assert!(copy != 0 && copy != worker, "ring {ring}: {copy}");
            eventually("the copy exits", || {
                runner.eval_sync(&copy_has_ended(copy)).unwrap() == json!(true)
            });
            assert_eq!(
                runner.eval_sync("(os.getpid(), G)").unwrap(),
                json!([worker, "kept"]),
                "ring {ring}"
            );
        }
        // A copy ends as a script ending that way would: its exit status.
        for (ending, status) in [
            ("raise SystemExit(3)", 3 << 8),
            ("raise ValueError('in the copy')", 1 << 8),
            ("pass", 0),
        ] {
            runner
                .run_sync(&format!("copy = os.fork()\nif copy == 0:\n    {ending}"))
                .unwrap();
            assert_eq!(
                runner.eval_sync("os.waitpid(copy, 0)[1]").unwrap(),
                json!(status),
                "ring {ring}: {ending}"
            );
        }
        // Reap the copies, which are the worker's own children.
        runner
            .run_sync("while True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        break")
            .unwrap();
    }
}

#[test]
fn sigint_raised_by_the_code_itself_is_a_keyboard_interrupt_and_nothing_more() {
    let runner = runner();
    runner
        .run_sync("import os, signal, time, _thread\nG = 'kept'")
        .unwrap();
    let worker = child_pid(&runner);
    let caught = "try:\n    _thread.interrupt_main()\n    time.sleep(0.2)\nexcept KeyboardInterrupt:\n    caught = True";
    runner.run_sync(caught).unwrap();
    assert_eq!(runner.eval_sync("caught").unwrap(), json!(true));
    for raise in [
        "signal.raise_signal(signal.SIGINT)",
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(1)",
        "_thread.interrupt_main(); time.sleep(1)",
    ] {
        match runner.run_sync(raise) {
            Err(PyRunnerError::Python { kind, .. }) => {
                assert_eq!(kind, "KeyboardInterrupt", "{raise}")
            }
            other => panic!("{raise}: expected a KeyboardInterrupt, got {other:?}"),
        }
        assert_eq!(
            runner.eval_sync("(os.getpid(), G)").unwrap(),
            json!([worker, "kept"]),
            "{raise}"
        );
    }
    // The parent's own SIGINT, for a limit, still ends the command and the child.
    let quick = runner.clone().with_timeout(Duration::from_millis(300));
    match quick.run_sync("while True:\n    pass") {
        Err(PyRunnerError::Timeout(limit)) => assert_eq!(limit, Duration::from_millis(300)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    eventually("the timed-out child is gone", || !is_running(worker));
    assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
    assert_ne!(child_pid(&runner), worker);
}

/// Python that says whether the worker's forked copy `copy` (its pid as the
/// worker sees it: the worker may run in a pid namespace of its own) has
/// ended, leaving it for the worker to reap.
fn copy_has_ended(copy: u32) -> String {
    format!("os.waitid(os.P_PID, {copy}, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None")
}

/// Defines `fork_then_wait`, a coroutine that forks after a turn of the
/// loop; the copy runs `in_copy` and the worker returns the copy's pid.
async fn define_fork_then_wait(runner: &PyRunner, in_copy: &str) {
    runner
        .run(&format!(
            "import asyncio, os\n\
             async def fork_then_wait():\n\
             \x20   await asyncio.sleep(0.05)\n\
             \x20   never = asyncio.get_running_loop().create_future()\n\
             \x20   copy = os.fork()\n\
             \x20   if copy == 0:\n\
             \x20       {in_copy}\n\
             \x20   return copy"
        ))
        .await
        .unwrap();
}

/// The pid of the copy that `fork_then_wait` made.
async fn fork_in_a_coroutine(runner: &PyRunner) -> u32 {
    runner
        .call_async_function("fork_then_wait", vec![])
        .await
        .unwrap()
        .as_u64()
        .expect("the copy's pid, from the worker") as u32
}

/// A fork inside a coroutine: the copy shares the worker's event loop and
/// request pipe, and must leave both to the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_inside_a_coroutine_leaves_the_requests_to_the_worker() {
    let runner = runner();
    define_fork_then_wait(&runner, "await asyncio.sleep(1)").await;
    let worker = child_pid(&runner);
    for _ in 0..3 {
        let copy = fork_in_a_coroutine(&runner).await;
        for i in 0..20 {
            let sum = runner.eval(&format!("{i} + 1")).await.unwrap();
            assert_eq!(sum, json!(i + 1));
        }
        let status = runner
            .eval(&format!("os.waitpid({copy}, 0)[1]"))
            .await
            .unwrap();
        assert_eq!(status, json!(0), "the copy left after its loop turn");
    }
    assert_eq!(child_pid(&runner), worker);
}

/// The copy's loop turn ends after the fork even when nothing would end it
/// otherwise: the worker waited in its loop, no request comes, and the
/// copy's own call waits on a future that never completes. (It awaits one
/// made before the fork: asyncio's own functions raise in a forked
/// process, which would end the call, and the turn with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_forked_in_a_coroutine_leaves_without_a_request_to_wake_it() {
    let runner = runner();
    define_fork_then_wait(&runner, "await never").await;
    let copy = fork_in_a_coroutine(&runner).await;
    let mut left = false;
    for _ in 0..2000 {
        left = runner.eval(&copy_has_ended(copy)).await.unwrap() == json!(true);
        if left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(left, "the copy left");
    let status = runner.eval(&format!("os.waitpid({copy}, 0)[1]")).await;
    assert_eq!(status.unwrap(), json!(0));
}
