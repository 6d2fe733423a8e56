//! The reply ring: replies cross shared memory, whatever their size and
//! however long they take, and a child that declines the ring is served
//! over its pipe.

use crate::faults;

use std::time::{Duration, Instant};

use faults::*;
use serde_json::{json, Value};

const HAS_RING: &str =
    "any(type(o).__name__ == 'ReplyRing' for o in __import__('gc').get_objects())";

#[test]
fn replies_take_the_ring_unless_the_child_declines() {
    let with_ring = runner();
    assert_eq!(with_ring.eval_sync(HAS_RING).unwrap(), json!(true));
    let without = builder().env("ASYNC_PY_REPLY_RING", "0").build().unwrap();
    assert_eq!(without.eval_sync(HAS_RING).unwrap(), json!(false));
    for runner in [&with_ring, &without] {
        runner.run_sync("def add(a, b):\n    return a + b").unwrap();
        for i in 0..200 {
            let got = runner
                .call_function_sync("add", vec![json!(i), json!(1)])
                .unwrap();
            assert_eq!(got, json!(i + 1));
        }
    }
}

#[test]
fn replies_larger_than_the_ring_cross_in_pieces() {
    let runner = runner();
    runner.run_sync("def echo(x):\n    return x").unwrap();
    // 3 MiB of text and about 2 MiB of ints: several times the 1 MiB ring.
    let text = "ring ".repeat(600_000);
    let back = runner
        .call_function_sync("echo", vec![json!(text)])
        .unwrap();
    assert_eq!(back, json!(text));
    let ints: Vec<Value> = (0..400_000u64).map(|i| json!(i * 1000)).collect();
    let back = runner
        .call_function_sync("echo", vec![Value::Array(ints.clone())])
        .unwrap();
    assert_eq!(back, Value::Array(ints));
    // Small replies after the big ones still line up.
    assert_eq!(runner.eval_sync("'after'").unwrap(), json!("after"));
}

/// A reply that comes while the parent sleeps must wake it (the doorbell),
/// including replies that land around the moment it goes to sleep.
#[test]
fn slow_replies_wake_a_sleeping_parent() {
    let runner = runner();
    runner
        .run_sync("import time\ndef nap(s):\n    time.sleep(s)\n    return s")
        .unwrap();
    let naps = [
        0.0001, 0.00015, 0.0002, 0.00025, 0.0003, 0.001, 0.005, 0.05, 0.3,
    ];
    for round in 0..20 {
        for nap in naps {
            let start = Instant::now();
            let got = runner.call_function_sync("nap", vec![json!(nap)]).unwrap();
            assert_eq!(got, json!(nap));
            // A deadline for a lost wake-up (which would wait for ever), not
            // a timing assertion.
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "round {round}: a {nap} s call took {:?}",
                start.elapsed()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_the_ring() {
    let runner = runner();
    runner
        .run("def mul(a, b):\n    return [a * b] * (a % 7)")
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let runner = runner.clone();
            tokio::spawn(async move {
                for i in 0..500u64 {
                    let got = runner
                        .call_function("mul", vec![json!(t), json!(i)])
                        .await
                        .unwrap();
                    assert_eq!(got, json!(vec![t * i; (t % 7) as usize]));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}
