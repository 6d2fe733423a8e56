//! A command past its limit returns `Timeout`; the child gets SIGINT (its
//! `finally` blocks run), then SIGKILL, and is replaced.

use crate::faults;

use std::time::Duration;

use async_py::PyRunnerError;
use faults::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_millis(300);

#[test]
fn finally_blocks_run_before_the_child_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("cleaned");
    let runner = builder().timeout(LIMIT).build().unwrap();
    let first = child_pid(&runner);
    let code = format!(
        "try:\n    while True:\n        pass\nfinally:\n    open({:?}, 'w').write('cleaned up')",
        marker.display().to_string()
    );
    assert_eq!(runner.run_sync(&code), Err(PyRunnerError::Timeout(LIMIT)));
    assert_ne!(child_pid(&runner), first, "replaced");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "cleaned up");
    eventually("the old child is reaped", || is_gone(first));
}

/// Definitions outlive a timeout: the fresh child replays the runs that
/// succeeded, not the one that ran past its limit (it would time out again
/// on every fresh child).
#[test]
fn definitions_survive_a_timeout_and_the_run_that_timed_out_is_not_replayed() {
    within(60, || {
        let runner = builder().timeout(LIMIT).build().unwrap();
        runner
            .run_sync("keep = 41\ndef more():\n    return keep + 1")
            .unwrap();
        let first = child_pid(&runner);
        assert_eq!(
            runner.run_sync("keep = 0\nwhile True:\n    pass"),
            Err(PyRunnerError::Timeout(LIMIT))
        );
        assert_eq!(
            runner.call_function_sync("more", vec![]).unwrap(),
            json!(42)
        );
        let second = child_pid(&runner);
        assert_ne!(second, first, "replaced");
        assert_eq!(runner.read_variable_sync("keep").unwrap(), json!(41));
        assert_eq!(child_pid(&runner), second, "no replay timed out since");
    });
}

#[test]
fn a_child_that_ignores_sigint_is_killed_after_the_grace() {
    let runner = builder().timeout(LIMIT).build().unwrap();
    let first = child_pid(&runner);
    let code = "while True:\n    try:\n        while True:\n            pass\n    except KeyboardInterrupt:\n        pass";
    assert_eq!(runner.run_sync(code), Err(PyRunnerError::Timeout(LIMIT)));
    assert_eq!(runner.eval_sync("'next'").unwrap(), json!("next"));
    assert!(is_gone(first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_queued_behind_a_timeout_run_on_the_fresh_child() {
    let runner = builder().timeout(LIMIT).build().unwrap();
    runner.run("import time").await.unwrap();
    let stuck = runner.run("while True:\n    pass");
    let after: Vec<_> = (0..4).map(|i| runner.eval_owned(i)).collect();
    let (stuck, after) = tokio::join!(stuck, futures_join(after));
    assert_eq!(stuck, Err(PyRunnerError::Timeout(LIMIT)));
    for (i, outcome) in after.into_iter().enumerate() {
        assert_eq!(outcome.unwrap(), json!(i + 100), "queued command {i}");
    }
}

/// `runner.eval` borrows the runner; give each queued command its own clone.
trait EvalOwned {
    fn eval_owned(
        &self,
        i: usize,
    ) -> tokio::task::JoinHandle<Result<serde_json::Value, PyRunnerError>>;
}

impl EvalOwned for async_py::PyRunner {
    fn eval_owned(
        &self,
        i: usize,
    ) -> tokio::task::JoinHandle<Result<serde_json::Value, PyRunnerError>> {
        let runner = self.clone();
        tokio::spawn(async move {
            // Sent after the stuck command, which was polled first by join!.
            tokio::time::sleep(Duration::from_millis(50)).await;
            runner.eval(&format!("{} + 100", i)).await
        })
    }
}

async fn futures_join(
    handles: Vec<tokio::task::JoinHandle<Result<serde_json::Value, PyRunnerError>>>,
) -> Vec<Result<serde_json::Value, PyRunnerError>> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coroutine_past_its_limit_is_cancelled_in_the_child_which_lives_on() {
    let runner = builder().timeout(LIMIT).build().unwrap();
    runner
        .run("import asyncio\ncancelled = []\nasync def slow():\n    try:\n        await asyncio.sleep(30)\n    finally:\n        cancelled.append(1)")
        .await
        .unwrap();
    let pid = child_pid(&runner);
    assert_eq!(
        runner.call_async_function("slow", vec![]).await,
        Err(PyRunnerError::Timeout(LIMIT))
    );
    assert_eq!(runner.eval("len(cancelled)").await.unwrap(), json!(1));
    assert_eq!(child_pid(&runner), pid, "only the coroutine was cancelled");
}

/// A coroutine that never yields holds the child's event loop, so the child
/// cannot cancel it, nor read what comes next. The child is killed at the
/// backstop (2 s past the limit) and the holder's caller gets `Timeout`. A
/// coroutine the child had started fails with it; the commands sent behind
/// the holder, which never started (sync ones and a coroutine alike), run
/// on the fresh child, and no command's limit is blamed on the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coroutine_that_holds_the_loop_times_out_and_what_waited_behind_it_runs() {
    let defs = "import asyncio\n\
                async def hold():\n    while True:\n        pass\n\
                async def nap(seconds):\n    await asyncio.sleep(seconds)\n    return 'napped'";
    let runner = builder().startup(defs).build().unwrap();
    let first = child_pid(&runner);
    let limited = runner.clone().with_timeout(LIMIT);
    let started = tokio::spawn({
        let runner = runner.clone();
        async move { runner.call_async_function("nap", vec![json!(30)]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = tokio::spawn({
        let limited = limited.clone();
        async move { limited.call_async_function("hold", vec![]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Behind the held loop: a command without a limit, one with, a coroutine.
    let plain = tokio::spawn({
        let runner = runner.clone();
        async move { runner.eval("6 * 7").await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let timed = tokio::spawn({
        let limited = limited.clone();
        async move { limited.eval("'not blamed'").await }
    });
    let later = tokio::spawn({
        let runner = runner.clone();
        async move { runner.call_async_function("nap", vec![json!(0.05)]).await }
    });
    assert_eq!(held.await.unwrap(), Err(PyRunnerError::Timeout(LIMIT)));
    match started.await.unwrap() {
        Err(PyRunnerError::WorkerDied { reason }) => {
            assert!(reason.contains("ran on past its limit"), "{reason}")
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(plain.await.unwrap().unwrap(), json!(42));
    assert_eq!(timed.await.unwrap().unwrap(), json!("not blamed"));
    assert_eq!(later.await.unwrap().unwrap(), json!("napped"));
    assert_ne!(child_pid(&runner), first);
    assert!(!is_running(first));
}

/// The call that makes a coroutine is part of it: a function given to
/// `call_async_function` that blocks before it returns anything to await
/// is judged by the coroutine's limit. It times out once (it is not sent
/// again to the fresh child), and a command with a limit of its own that
/// waited behind it is not blamed: it runs on the fresh child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_blocks_before_its_coroutine_times_out_once() {
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let runner = runner();
    runner
        .run(&format!(
            "import time\n\
             def blocker():\n\
             \x20   with open({:?}, 'a') as marks:\n\
             \x20       marks.write('x')\n\
             \x20   time.sleep(60)",
            marks.display().to_string()
        ))
        .await
        .unwrap();
    let first = child_pid(&runner);
    let limited = runner.clone().with_timeout(LIMIT);
    let blocked = tokio::spawn({
        let limited = limited.clone();
        async move { limited.call_async_function("blocker", vec![]).await }
    });
    eventually("the blocking call started", || marks.exists());
    assert_eq!(limited.eval("40 + 2").await.unwrap(), json!(42));
    assert_eq!(blocked.await.unwrap(), Err(PyRunnerError::Timeout(LIMIT)));
    assert_ne!(child_pid(&runner), first);
    // Sent again, it would have marked the file on the fresh child at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "x");
}

/// A command that ends just at its limit races the parent's SIGINT: the
/// signal must stop that command or nothing, never the command queued
/// behind it. Each round sends a command that busy-waits about as long as
/// its limit with an unlimited one right behind it (both behind a short
/// one, so they reach the child together); the busy-wait is nudged
/// towards the limit's edge round by round, so most rounds sit on it, and
/// the edge command's caller is woken slowly, which widens the race. The
/// unlimited command must answer every time and run exactly once.
#[test]
fn an_interrupt_for_a_command_that_ended_at_its_limit_never_lands_in_the_next() {
    const ROUNDS: usize = 300;
    const EDGE: Duration = Duration::from_millis(20);
    within(120, || {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let runner = runner();
        runner.run_sync(&race_defs(&runs)).unwrap();
        let limited = runner.clone().with_timeout(EDGE);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut seconds = EDGE.as_secs_f64();
        let (mut timed_out, mut failed_behind) = (0, Vec::new());
        for round in 0..ROUNDS {
            let (_, edge, behind) = rt.block_on(async {
                tokio::join!(
                    runner.eval("busy(0.002)"),
                    woken_slowly(limited.call_function("busy", vec![json!(seconds)])),
                    runner.call_function("record", vec![json!(round)]),
                )
            });
            match edge {
                Ok(_) => seconds += 20e-6,
                Err(PyRunnerError::Timeout(_)) => {
                    timed_out += 1;
                    seconds -= 20e-6;
                }
                Err(other) => panic!("round {round}: the edge command gave {other:?}"),
            }
            if let Err(err) = behind {
                failed_behind.push((round, err));
            }
        }
        let not_once = rounds_not_run_once(&runs, ROUNDS);
        assert!(
            failed_behind.is_empty() && not_once.is_empty(),
            "{ROUNDS} rounds, {timed_out} timed out; the command behind failed in {}: \
             {failed_behind:?}; rounds whose command behind did not run exactly once: \
             {not_once:?}",
            failed_behind.len(),
        );
    });
}
