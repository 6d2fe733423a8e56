//! Dropped futures: one not yet sent never runs; one that is running lets
//! the command finish, its reply is discarded, and every later reply still
//! reaches the right caller.

use crate::faults;

use std::time::Duration;

use faults::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_dropped_mid_call_leaves_the_protocol_in_sync() {
    let runner = runner();
    runner
        .run("import time\nfinished = []\ndef slow(tag):\n    time.sleep(0.2)\n    finished.append(tag)\n    return tag")
        .await
        .unwrap();
    for round in 0..5 {
        let abandoned = tokio::time::timeout(
            Duration::from_millis(20),
            runner.call_function("slow", vec![json!(format!("dropped {round}"))]),
        )
        .await;
        assert!(
            abandoned.is_err(),
            "the call was still running when dropped"
        );
        // The next replies belong to the next calls, not to the dropped one.
        for i in 0..10 {
            assert_eq!(
                runner.eval(&format!("{round} * 100 + {i}")).await.unwrap(),
                json!(round * 100 + i)
            );
        }
    }
    let finished = runner.read_variable("finished").await.unwrap();
    assert_eq!(
        finished.as_array().unwrap().len(),
        5,
        "the dropped calls ran to the end: {finished}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_dropped_while_queued_never_run() {
    let runner = runner();
    runner.run("import time\nran = []").await.unwrap();
    let blocker = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run("time.sleep(0.3)").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Sent (polled once) while the child is busy, then dropped.
    for i in 0..5 {
        let dropped = tokio::time::timeout(
            Duration::from_millis(1),
            runner.run(&format!("ran.append({i})")),
        )
        .await;
        assert!(dropped.is_err());
    }
    blocker.await.unwrap().unwrap();
    assert_eq!(
        runner.eval("ran").await.unwrap(),
        json!([]),
        "abandoned commands were skipped"
    );
}
