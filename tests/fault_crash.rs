#![cfg(feature = "subprocess")]
//! A child that exits or is killed fails the command it ran with
//! `WorkerDied`, and the commands queued behind it run on a fresh child.

mod faults;

use std::time::Duration;

use async_py::PyRunnerError;
use faults::*;
use serde_json::json;

fn died(outcome: Result<serde_json::Value, PyRunnerError>) -> String {
    match outcome {
        Err(PyRunnerError::WorkerDied { reason }) => reason,
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

#[test]
fn exit_codes_and_last_stderr_lines_are_in_the_reason() {
    let runner = runner();
    let first = child_pid(&runner);
    let reason = died(
        runner
            .run_sync("import os, sys\nprint('dying words', file=sys.stderr)\nsys.stderr.flush()\nos._exit(7)")
            .map(|_| json!(null)),
    );
    assert!(reason.contains("exited with status 7"), "{reason}");
    assert!(reason.contains("dying words"), "{reason}");
    let second = child_pid(&runner);
    assert_ne!(first, second, "a fresh child took over");
    assert!(is_gone(first), "the dead child was reaped");
}

#[test]
fn a_segfault_in_c_code_is_a_worker_death_not_ours() {
    let runner = runner();
    let reason = died(runner.eval_sync("__import__('ctypes').string_at(0)"));
    assert!(
        reason.contains("signal 11") && reason.contains("SIGSEGV"),
        "{reason}"
    );
    assert_eq!(runner.eval_sync("'alive'").unwrap(), json!("alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_from_outside_mid_call_fails_only_that_call() {
    let runner = runner();
    runner.run("import time").await.unwrap();
    let pid = child_pid(&runner);
    let stuck = tokio::spawn({
        let runner = runner.clone();
        async move { runner.call_function("time.sleep", vec![json!(30)]).await }
    });
    // Commands queued behind the call that will die.
    let queued: Vec<_> = (0..5)
        .map(|i| {
            let runner = runner.clone();
            tokio::spawn(async move { runner.eval(&format!("{i} * 10")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    kill(pid, 9);
    let reason = died(stuck.await.unwrap());
    assert!(
        reason.contains("signal 9") && reason.contains("SIGKILL"),
        "{reason}"
    );
    for (i, call) in queued.into_iter().enumerate() {
        assert_eq!(
            call.await.unwrap().unwrap(),
            json!(i * 10),
            "queued command {i} ran on the fresh child"
        );
    }
    assert_ne!(child_pid(&runner), pid);
}

#[test]
fn startup_code_runs_again_in_every_fresh_child() {
    let runner = builder()
        .startup("import os\nboot_pid = os.getpid()")
        .build()
        .unwrap();
    for _ in 0..3 {
        let pid = child_pid(&runner);
        assert_eq!(runner.read_variable_sync("boot_pid").unwrap(), json!(pid));
        died(
            runner
                .run_sync("import os\nos._exit(1)")
                .map(|_| json!(null)),
        );
    }
    assert!(runner.read_variable_sync("boot_pid").is_ok());
}

#[test]
fn globals_of_a_dead_child_are_gone_and_say_so() {
    let runner = runner();
    runner.run_sync("kept = 1").unwrap();
    died(
        runner
            .run_sync("import os\nos._exit(0)")
            .map(|_| json!(null)),
    );
    match runner.read_variable_sync("kept") {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "NameError"),
        other => panic!("a fresh child starts with fresh globals: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coroutines_in_flight_fail_with_the_child_and_later_ones_run() {
    let runner = runner();
    runner
        .run("import asyncio\nasync def nap(s):\n    await asyncio.sleep(s)\n    return s")
        .await
        .unwrap();
    let napping: Vec<_> = (0..10)
        .map(|_| {
            let runner = runner.clone();
            tokio::spawn(async move { runner.call_async_function("nap", vec![json!(30)]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    kill(child_pid(&runner), 9);
    for call in napping {
        assert!(matches!(
            call.await.unwrap(),
            Err(PyRunnerError::WorkerDied { .. })
        ));
    }
    runner
        .run("import asyncio\nasync def nap(s):\n    await asyncio.sleep(s)\n    return s")
        .await
        .unwrap();
    assert_eq!(
        runner
            .call_async_function("nap", vec![json!(0.01)])
            .await
            .unwrap(),
        json!(0.01)
    );
}

#[test]
fn a_stderr_line_without_end_is_held_in_pieces_not_whole() {
    // 4 MiB on stderr with no newline, then death: the parent keeps only
    // the last pieces of it, and the runner goes on.
    let runner = runner();
    runner
        .run_sync("import os, sys\ndef flood():\n    sys.stderr.write('x' * (4 << 20))\n    sys.stderr.flush()\n    os._exit(5)")
        .unwrap();
    let reason = died(runner.call_function_sync("flood", vec![]));
    assert!(
        reason.contains("xxxx"),
        "the tail is quoted: {}",
        &reason[..80.min(reason.len())]
    );
    assert!(
        reason.len() < 2 << 20,
        "a {}-byte reason holds the whole line",
        reason.len()
    );
    assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
}
