//! PyPool timeouts: a call past its limit fails alone; its worker is replaced and the others go on.

use crate::faults;
use crate::pool;

use std::time::Duration;

use async_py::{PyRunnerError, Value};
use faults::eventually;
use pool::DEFS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_call_times_out_while_the_other_worker_keeps_answering() {
    let pool = pool::builder(2)
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    pool.run(DEFS).await.unwrap();
    pool.run("import time\ndef stuck():\n    time.sleep(30)\nMARK = 'replayed'")
        .await
        .unwrap();
    let stuck = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call_function("stuck", vec![]).await })
    };
    eventually("the stuck call is running", || {
        pool.stats().iter().any(|w| w.busy)
    });
    let stuck_pid = pool.stats().into_iter().find(|w| w.busy).unwrap().pid;
    // While it is stuck, calls keep being answered by the other worker.
    let mut answered = 0;
    while !stuck.is_finished() {
        let pid = pool.call_function("pid", vec![]).await.unwrap();
        assert_ne!(pid, Value::from(stuck_pid));
        answered += 1;
    }
    assert!(answered > 0);
    match stuck.await.unwrap() {
        Err(PyRunnerError::Timeout(limit)) => assert_eq!(limit, Duration::from_millis(400)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    eventually("the stuck worker was replaced", || {
        pool.stats().iter().map(|w| w.restarts).sum::<u64>() == 1
            && !pool.stats().iter().any(|w| w.pid == stuck_pid)
    });
    assert!(!faults::is_running(stuck_pid) || faults::is_gone(stuck_pid));
    let marks = pool.map("var", vec![vec!["MARK".into()]; 20]).await;
    assert!(marks.into_iter().all(|m| m.unwrap() == "replayed"));
}

/// A coroutine that holds its worker's event loop: it times out, and the
/// call queued behind it on that worker is not blamed for it; it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coroutine_that_holds_the_loop_fails_alone() {
    let limit = Duration::from_millis(400);
    let pool = pool::builder(1).timeout(limit).build().unwrap();
    pool.run(DEFS).await.unwrap();
    pool.run("async def hold():\n    while True:\n        pass")
        .await
        .unwrap();
    let first = pool.stats()[0].pid;
    let held = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call_async_function("hold", vec![]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.call_function("pid", vec![]).await }
    });
    assert_eq!(held.await.unwrap(), Err(PyRunnerError::Timeout(limit)));
    let answered = queued.await.unwrap().expect("the queued call runs");
    assert_ne!(answered, Value::from(first), "on the fresh child");
    assert_eq!(pool.stats()[0].restarts, 1);
}

/// The caller of a call that timed out hears at once, while its worker's
/// child is still being stopped: a call it makes next goes to the idle
/// worker, not to the one whose child is on its way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_after_a_timeout_goes_to_the_idle_worker() {
    let pool = pool::builder(2)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    pool.run(DEFS).await.unwrap();
    // Ignores the interrupt: its child is killed after the grace.
    pool.run("import time\ndef stubborn():\n    while True:\n        try:\n            time.sleep(30)\n        except BaseException:\n            pass")
        .await
        .unwrap();
    for _ in 0..3 {
        let before = pool.stats();
        let err = pool.call_function("stubborn", vec![]).await.unwrap_err();
        assert!(matches!(err, PyRunnerError::Timeout(_)), "{err:?}");
        let after_timeout = pool.stats();
        let stuck = (0..2)
            .find(|&i| after_timeout[i].calls == before[i].calls + 1)
            .expect("one worker counted the stuck call");
        let idle = 1 - stuck;
        let pid = pool.call_function("pid", vec![]).await.unwrap();
        assert_eq!(
            pid,
            Value::from(before[idle].pid),
            "answered by the idle worker"
        );
        let now = pool.stats();
        assert_eq!(
            now[idle].calls,
            before[idle].calls + 1,
            "sent to the idle worker"
        );
        assert_eq!(
            now[stuck].calls,
            before[stuck].calls + 1,
            "not to the stuck one"
        );
        eventually("the stuck worker has a fresh child", || {
            let stats = pool.stats();
            stats[stuck].pid != before[stuck].pid && !stats[stuck].busy
        });
    }
}

/// Limits of any size never panic on a pool: one past the clock is no
/// limit, zero times every command out without running it (`stop` aside).
#[test]
fn limits_of_any_size_never_panic() {
    pool::within(60, || {
        for limit in [Duration::MAX, Duration::from_secs(u64::MAX)] {
            let pool = pool::builder(2).timeout(limit).build().unwrap();
            pool.run_sync("def twice(x):\n    return 2 * x").unwrap();
            assert_eq!(
                pool.call_function_sync("twice", vec![Value::from(4)])
                    .unwrap(),
                Value::from(8)
            );
            let doubled = pool.map_sync("twice", vec![vec![Value::from(1)]; 10]);
            assert!(
                doubled.iter().all(|r| r == &Ok(Value::from(2))),
                "{doubled:?}"
            );
            pool.stop_sync().unwrap();
        }
        let pool = pool::builder(1).timeout(Duration::ZERO).build().unwrap();
        let timed_out = Err(PyRunnerError::Timeout(Duration::ZERO));
        assert_eq!(pool.eval_sync("1"), timed_out);
        assert_eq!(
            pool.call_function_sync("abs", vec![Value::from(-1)]),
            timed_out
        );
        assert_eq!(
            pool.call_async_function_sync("abs", vec![Value::from(-1)]),
            timed_out
        );
        assert_eq!(
            pool.map_sync("abs", vec![vec![Value::from(-1)]]),
            vec![timed_out.clone()]
        );
        pool.stop_sync().expect("stop is not limited");
    });
}

/// An argument nested 100 000 deep is a `Conversion` error on a pool too,
/// from a tokio task's 2 MiB stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_nested_past_any_stack_are_conversion_errors() {
    let pool = pool::pool(1);
    let mut deep = Value::from(1);
    for _ in 0..100_000 {
        deep = Value::Array(vec![deep]);
    }
    let outcome = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut inputs = vec![vec![Value::from(1)]; 3];
            inputs.push(vec![deep]);
            pool.map("abs", inputs).await
        })
    }
    .await
    .expect("the task did not overflow its stack");
    assert_eq!(outcome[0], Ok(Value::from(1)));
    assert!(
        matches!(&outcome[3], Err(PyRunnerError::Conversion(m)) if m.contains("nests deeper")),
        "{:?}",
        outcome[3]
    );
    assert_eq!(pool.eval("2 + 2").await.unwrap(), Value::from(4));
}

/// A call that ends just at its limit races the parent's SIGINT, which must
/// stop that call or nothing, never the call queued behind it on the same
/// worker (see the runner's test of it in `fault_timeout.rs`).
/// Every call has the pool's limit here; the one behind is quick, but on a
/// loaded machine it can itself run past 20 ms now and then: such a round
/// (its own `Timeout`, which may stop it before it records) is set aside,
/// and only a few of them may be.
#[test]
fn an_interrupt_for_a_call_that_ended_at_its_limit_never_lands_in_the_next() {
    const ROUNDS: usize = 400;
    const EDGE: Duration = Duration::from_millis(20);
    pool::within(120, || {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let pool = pool::builder(1).timeout(EDGE).build().unwrap();
        pool.run_sync(&faults::race_defs(&runs)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut seconds = EDGE.as_secs_f64();
        let (mut timed_out, mut failed_behind, mut slow_behind) = (0, Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (_, edge, behind) = rt.block_on(async {
                tokio::join!(
                    pool.call_function("busy", vec![Value::from(0.002)]),
                    faults::woken_slowly(pool.call_function("busy", vec![Value::from(seconds)])),
                    pool.call_function("record", vec![Value::from(round)]),
                )
            });
            match edge {
                Ok(_) => seconds += 20e-6,
                Err(PyRunnerError::Timeout(_)) => {
                    timed_out += 1;
                    seconds -= 20e-6;
                }
                Err(other) => panic!("round {round}: the edge call gave {other:?}"),
            }
            match behind {
                Ok(_) => {}
                Err(PyRunnerError::Timeout(_)) => slow_behind.push(round),
                Err(err) => failed_behind.push((round, err)),
            }
        }
        let not_once: Vec<_> = faults::rounds_not_run_once(&runs, ROUNDS)
            .into_iter()
            .filter(|round| !slow_behind.contains(round))
            .collect();
        assert!(
            failed_behind.is_empty() && not_once.is_empty() && slow_behind.len() <= ROUNDS / 20,
            "{ROUNDS} rounds, {timed_out} timed out; the call behind failed in {}: \
             {failed_behind:?}; rounds whose call behind did not run exactly once: \
             {not_once:?}; rounds whose call behind ran past its own limit: {slow_behind:?}",
            failed_behind.len(),
        );
    });
}
