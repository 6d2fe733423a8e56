//! `stop()`: later commands give `Stopped`, pending work is answered.

use std::time::Duration;

use async_py::{PyRunner, PyRunnerError};
use serde_json::json;

pub async fn stop_makes_later_commands_stopped(runner: PyRunner) {
    let clone = runner.clone();
    runner.run("x = 1").await.unwrap();
    runner.stop().await.unwrap();
    assert_eq!(clone.eval("x").await, Err(PyRunnerError::Stopped));
    assert_eq!(runner.run("x = 2").await, Err(PyRunnerError::Stopped));
    assert_eq!(
        runner.call_async_function("f", vec![]).await,
        Err(PyRunnerError::Stopped)
    );
    assert_eq!(clone.eval_sync("1"), Err(PyRunnerError::Stopped));
}

pub async fn stop_is_idempotent(runner: PyRunner) {
    runner.stop().await.unwrap();
    runner.stop().await.unwrap();
    runner.stop_sync().unwrap();
}

pub async fn stop_ends_pending_coroutines(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    runner
        .run("import asyncio\nasync def forever():\n    await asyncio.Event().wait()")
        .await
        .unwrap();
    let pending = tokio::spawn({
        let runner = runner.clone();
        async move { runner.call_async_function("forever", vec![]).await }
    });
    // Make sure the coroutine was started before stopping.
    assert_eq!(runner.eval("1").await.unwrap(), json!(1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    runner.stop().await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the pending call is answered")
        .unwrap();
    assert_eq!(outcome, Err(PyRunnerError::Stopped));
}
