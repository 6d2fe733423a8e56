//! PyPool: workers whose children die right after they start, or never
//! start, fail in bounded time and without a restart loop.

use crate::faults;
use crate::pool;

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

/// A pool whose interpreter never says hello fails `build` once its one
/// start timeout has passed (not once for the zygote and again for the
/// workers), naming it.
#[test]
fn a_pool_whose_interpreter_never_says_hello_fails_build_at_the_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fake = faults::fake_python(dir.path(), "exec sleep 600");
    let built = pool::within(10, move || {
        async_py::PyPool::builder()
            .workers(2)
            .python(&fake)
            .start_timeout(Duration::from_secs(1))
            .build()
            .map(drop)
    });
    faults::assert_start_timed_out(built);
}

/// The same when the zygote fails at once and the workers start their
/// children themselves: they share what is left of the one start timeout.
#[test]
fn workers_started_without_a_zygote_share_the_pool_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fake = faults::fake_python(
        dir.path(),
        // The zygote's own argument comes last.
        "for last; do :; done\n[ \"$last\" = --zygote ] && exit 1\nexec sleep 600",
    );
    let built = pool::within(10, move || {
        async_py::PyPool::builder()
            .workers(2)
            .python(&fake)
            .start_timeout(Duration::from_secs(1))
            .build()
            .map(drop)
    });
    faults::assert_start_timed_out(built);
}
