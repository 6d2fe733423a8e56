#![cfg(feature = "subprocess")]
//! PyPool: workers whose children die right after they start, or never
//! start, fail in bounded time and without a restart loop.

mod faults;
mod pool;

use std::time::Duration;

use async_py::PyRunnerError;
use faults::{count_starts, counting_startup, cpu_seconds};

/// A pool whose children die right after each good start restarts them a
/// few times, backing off, not in a loop; a call then hears of the loop,
/// or gets a fresh child that answers in time.
#[test]
fn children_that_die_soon_after_every_start_are_not_restarted_in_a_loop() {
    pool::within(60, || {
        let dir = tempfile::tempdir().unwrap();
        let starts = dir.path().join("starts");
        let startup = counting_startup(
            &starts,
            "import os, threading\nthreading.Timer(0.05, os._exit, [1]).start()",
        );
        let cpu = cpu_seconds();
        let pool = pool::builder(2).startup(startup).build().unwrap();
        std::thread::sleep(Duration::from_secs(5));
        let count = count_starts(&starts);
        assert!(count <= 12, "{count} starts of two workers in 5 s of idle");
        match pool.eval_sync("1") {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("within 1 s of starting"), "{message}")
            }
            Ok(one) => assert_eq!(one, 1),
            other => panic!("expected a Startup error or 1, got {other:?}"),
        }
        let spent = cpu_seconds() - cpu;
        assert!(spent < 2.0, "{spent:.2} s of CPU while idle");
    });
}
