//! Host functions through a child: a child that dies while a host function
//! runs fails the command with `WorkerDied`, the host function's result is
//! dropped, and the fresh child serves on, host functions included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_py::{HostCall, PyRunnerError, Value};
use serde_json::json;

use crate::conformance::host::within_10s;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_during_a_host_function_is_worker_died() {
    let finished = Arc::new(AtomicUsize::new(0));
    let count = finished.clone();
    let runner = crate::subprocess::builder()
        .host_function("slow", move |_| {
            std::thread::sleep(Duration::from_millis(600));
            count.fetch_add(1, Ordering::SeqCst);
            Ok(json!("late"))
        })
        .host_function("quick", |call: HostCall| Ok(call.args[0].clone()))
        .build()
        .unwrap();
    runner.run("import os, async_py").await.unwrap();
    let pid = runner.eval("os.getpid()").await.unwrap().as_u64().unwrap() as i32;
    let waiting = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.eval("async_py.host.slow()").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SAFETY: a plain kill(2) of the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let outcome = within_10s("a command whose child died", waiting)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Err(PyRunnerError::WorkerDied { .. })),
        "{outcome:?}"
    );
    // The fresh child answers its own commands, not the dead child's host call.
    let fresh = runner.eval("os.getpid()").await.unwrap();
    assert_ne!(fresh, json!(pid));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "the host function ran to its end"
    );
    assert_eq!(runner.eval("async_py.host.quick(5)").await.unwrap(), 5);
    assert_eq!(runner.eval("'still here'").await.unwrap(), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_command_that_kills_the_child_is_worker_died() {
    let runner = crate::subprocess::builder()
        .host_function("suicide", |call: HostCall| {
            let nested = call.runner().run_sync("os.kill(os.getpid(), 9)");
            // The nested command saw the death; the host function's own
            // answer has no child to go to.
            match nested {
                Err(PyRunnerError::WorkerDied { .. }) => Ok(json!("discarded")),
                other => Err(format!("expected WorkerDied, got {other:?}")),
            }
        })
        .build()
        .unwrap();
    runner.run("import os, async_py").await.unwrap();
    let outcome = within_10s(
        "a command whose nested command killed the child",
        runner.eval("async_py.host.suicide()"),
    )
    .await;
    assert!(
        matches!(outcome, Err(PyRunnerError::WorkerDied { .. })),
        "{outcome:?}"
    );
    assert_eq!(runner.eval("1 + 2").await.unwrap(), Value::from(3));
}
