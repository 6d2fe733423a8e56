#![cfg(feature = "subprocess")]
//! Frames over the limit and bytes that do not decode give `Protocol` and a
//! fresh child: never a panic, a huge allocation, or a hang.

mod faults;

use async_py::PyRunnerError;
use faults::*;
use serde_json::json;

fn protocol_error(outcome: Result<(), PyRunnerError>) -> String {
    match outcome {
        Err(PyRunnerError::Protocol(message)) => message,
        other => panic!("expected a Protocol error, got {other:?}"),
    }
}

#[test]
fn a_length_over_the_limit_is_refused_and_the_child_replaced() {
    let runner = runner();
    let first = child_pid(&runner);
    let message =
        protocol_error(runner.run_sync(&write_to_protocol("b'\\xff\\xff\\xff\\xff' + b'x' * 100")));
    assert!(message.contains("frame"), "{message}");
    assert_eq!(runner.eval_sync("'fresh'").unwrap(), json!("fresh"));
    assert_ne!(child_pid(&runner), first);
    assert!(is_gone(first));
}

#[test]
fn bytes_that_are_not_messagepack_are_refused_and_the_child_replaced() {
    let runner = runner();
    // A whole frame whose body is not MessagePack (0xc1 is never used).
    protocol_error(runner.run_sync(&write_to_protocol("b'\\x00\\x00\\x00\\x02\\xc1\\xc1'")));
    assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
    // A well-formed frame that answers no request.
    protocol_error(runner.run_sync(&write_to_protocol(
        "b'\\x00\\x00\\x00\\x04\\x93\\xcd\\x30\\x39'",
    )));
    assert_eq!(runner.eval_sync("2 + 2").unwrap(), json!(4));
}

#[test]
fn a_frame_cut_short_by_death_is_a_worker_death() {
    let runner = runner();
    let code = format!(
        "{}\nimport os\nos._exit(0)",
        write_to_protocol("b'\\x00\\x00\\x10\\x00partial'")
    );
    assert!(matches!(
        runner.run_sync(&code),
        Err(PyRunnerError::WorkerDied { .. })
    ));
    assert_eq!(runner.eval_sync("3").unwrap(), json!(3));
}
