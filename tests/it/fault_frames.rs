//! Frames over the limit and bytes that do not decode give `Protocol` and a
//! fresh child: never a panic, a huge allocation, or a hang.

use crate::faults;

use async_py::{PyRunner, PyRunnerError};
use faults::*;
use serde_json::json;

fn protocol_error(outcome: Result<(), PyRunnerError>) -> String {
    match outcome {
        Err(PyRunnerError::Protocol(message)) => message,
        other => panic!("expected a Protocol error, got {other:?}"),
    }
}

/// A runner whose child declines the reply ring: replies take the pipe.
fn pipe_runner() -> PyRunner {
    builder()
        .env("ASYNC_PY_REPLY_RING", "0")
        .build()
        .expect("the subprocess backend starts")
}

/// Python that copies raw bytes into the reply ring, behind the worker's back.
fn write_to_ring(bytes: &str) -> String {
    format!(
        "import gc\n\
         ring = next(o for o in gc.get_objects() if type(o).__name__ == 'ReplyRing')\n\
         ring.put({bytes}, lambda: True)\n"
    )
}

/// How raw bytes reach the parent behind the worker's back: the pipe (with
/// a runner whose child declined the ring) or the reply ring.
type Writer = fn(&str) -> String;

fn over_the_limit_is_refused_and_the_child_replaced(runner: PyRunner, write: Writer) {
    let first = child_pid(&runner);
    let message = protocol_error(runner.run_sync(&write("b'\\xff\\xff\\xff\\xff' + b'x' * 100")));
    assert!(message.contains("frame"), "{message}");
    assert_eq!(runner.eval_sync("'fresh'").unwrap(), json!("fresh"));
    assert_ne!(child_pid(&runner), first);
    assert!(is_gone(first));
}

fn not_messagepack_is_refused(runner: PyRunner, write: Writer) {
    // A whole frame whose body is not MessagePack (0xc1 is never used).
    protocol_error(runner.run_sync(&write("b'\\x00\\x00\\x00\\x02\\xc1\\xc1'")));
    assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
    // A well-formed frame that answers no request.
    protocol_error(runner.run_sync(&write("b'\\x00\\x00\\x00\\x04\\x93\\xcd\\x30\\x39'")));
    assert_eq!(runner.eval_sync("2 + 2").unwrap(), json!(4));
}

fn a_frame_cut_short_by_death_is_a_worker_death(runner: PyRunner, write: Writer) {
    let code = format!(
        "{}\nimport os\nos._exit(0)",
        write("b'\\x00\\x00\\x10\\x00partial'")
    );
    assert!(matches!(
        runner.run_sync(&code),
        Err(PyRunnerError::WorkerDied { .. })
    ));
    assert_eq!(runner.eval_sync("3").unwrap(), json!(3));
}

#[test]
fn a_length_over_the_limit_is_refused_and_the_child_replaced() {
    over_the_limit_is_refused_and_the_child_replaced(pipe_runner(), write_to_protocol);
}

#[test]
fn a_length_over_the_limit_in_the_ring_is_refused_and_the_child_replaced() {
    over_the_limit_is_refused_and_the_child_replaced(runner(), write_to_ring);
}

#[test]
fn bytes_that_are_not_messagepack_are_refused_and_the_child_replaced() {
    not_messagepack_is_refused(pipe_runner(), write_to_protocol);
}

#[test]
fn bytes_in_the_ring_that_are_not_messagepack_are_refused() {
    not_messagepack_is_refused(runner(), write_to_ring);
}

#[test]
fn a_frame_cut_short_on_the_pipe_by_death_is_a_worker_death() {
    a_frame_cut_short_by_death_is_a_worker_death(pipe_runner(), write_to_protocol);
}

#[test]
fn a_frame_cut_short_in_the_ring_by_death_is_a_worker_death() {
    a_frame_cut_short_by_death_is_a_worker_death(runner(), write_to_ring);
}

/// What a child published in the ring just before it died reaches the
/// parent: here a frame that answers nothing, so the run fails with
/// `Protocol` for it instead of with the child's death.
#[test]
fn what_a_dying_child_published_is_still_read() {
    let runner = runner();
    let code = format!(
        "{}\nimport os\nos._exit(0)",
        write_to_ring("b'\\x00\\x00\\x00\\x04\\x93\\xcd\\x30\\x39'")
    );
    protocol_error(runner.run_sync(&code));
    assert_eq!(runner.eval_sync("5").unwrap(), json!(5));
}

#[test]
fn a_count_past_the_ring_is_refused_not_read() {
    let runner = runner();
    let first = child_pid(&runner);
    let code = "import gc\n\
                ring = next(o for o in gc.get_objects() if type(o).__name__ == 'ReplyRing')\n\
                ring.published += 1 << 40\n\
                ring.counters[0] = ring.published\n";
    let message = protocol_error(runner.run_sync(code));
    assert!(message.contains("ring"), "{message}");
    assert_eq!(runner.eval_sync("3 * 3").unwrap(), json!(9));
    assert_ne!(child_pid(&runner), first);
}

/// With a ring, the child's stdout carries only doorbells. What else comes
/// there is seen when the thread next reads it: at the latest while it
/// waits for a slow reply, which then fails with the child.
#[test]
fn stray_bytes_on_the_pipe_beside_a_ring_are_refused() {
    let runner = runner();
    let first = child_pid(&runner);
    let stray = write_to_protocol("b'\\x00\\x00\\x00\\x01\\xc0'");
    let code = format!("{stray}\nimport time\ntime.sleep(0.3)\n");
    let message = protocol_error(runner.run_sync(&code));
    assert!(message.contains("doorbell"), "{message}");
    assert_eq!(runner.eval_sync("4 + 4").unwrap(), json!(8));
    assert_ne!(child_pid(&runner), first);
}

/// A child that floods its stdout with zeros (valid doorbells) cannot keep
/// the parent reading them: the clock still runs and the runner recovers.
#[test]
fn a_flood_of_doorbells_does_not_stop_the_clock() {
    let runner = builder()
        .timeout(std::time::Duration::from_millis(500))
        .build()
        .unwrap();
    // Finds the protocol fd (writing nothing) and leaves it in `fd`.
    runner.run_sync(&write_to_protocol("b''")).unwrap();
    let flood = "import threading, time\n\
                 def flood():\n\
                 \x20   while True:\n\
                 \x20       try:\n\
                 \x20           os.write(fd, bytes(65536))\n\
                 \x20       except BlockingIOError:\n\
                 \x20           pass\n\
                 threading.Thread(target=flood, daemon=True).start()\n\
                 time.sleep(5)\n";
    let started = std::time::Instant::now();
    assert!(matches!(
        runner.run_sync(flood),
        Err(PyRunnerError::Timeout(_))
    ));
    // A deadline for a hang, not a timing assertion.
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert_eq!(runner.eval_sync("2 + 2").unwrap(), json!(4));
}
