//! PyPool: stop() and dropping the last handle end and reap every worker.

mod faults;
mod pool;

use async_py::PyRunnerError;
use faults::{eventually, is_gone};

#[test]
fn dropping_the_last_handle_reaps_every_worker() {
    let pool = pool::pool(3);
    let clone = pool.clone();
    let pids = pool::pids(&pool);
    assert_eq!(pids.len(), 3);
    drop(pool);
    assert!(
        pids.iter().all(|pid| faults::is_running(*pid)),
        "a clone keeps them"
    );
    drop(clone);
    for pid in pids {
        eventually("a worker is reaped", || is_gone(pid));
    }
}

#[test]
fn stop_reaps_every_worker_and_refuses_later_calls() {
    let pool = pool::pool(2);
    pool.run_sync("def one():\n    return 1").unwrap();
    let pids = pool::pids(&pool);
    pool.stop_sync().unwrap();
    for pid in pids {
        eventually("a stopped worker is reaped", || is_gone(pid));
    }
    assert!(matches!(
        pool.call_function_sync("one", vec![]),
        Err(PyRunnerError::Stopped)
    ));
    assert!(matches!(pool.eval_sync("1"), Err(PyRunnerError::Stopped)));
    assert!(matches!(
        pool.run_sync("x = 1"),
        Err(PyRunnerError::Stopped)
    ));
    pool.stop_sync().unwrap();
}

#[test]
fn a_pool_that_cannot_start_says_why_and_leaves_nothing_behind() {
    let err = pool::builder(3)
        .startup("raise RuntimeError('no config')")
        .build()
        .unwrap_err();
    match err {
        PyRunnerError::Startup(why) => assert!(why.contains("no config"), "{why}"),
        other => panic!("expected Startup, got {other:?}"),
    }
    let missing = async_py::PyPool::builder()
        .python("/no/such/python")
        .build()
        .unwrap_err();
    assert!(matches!(missing, PyRunnerError::Startup(ref why) if why.contains("/no/such/python")));
}
