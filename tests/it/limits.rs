//! Memory limits: `memory_limit` on a child and on every worker of a pool,
//! `max_memory_per_worker` recycling, and the in-process backends' refusal.

use crate::faults;
use crate::pool;

use std::time::{Duration, Instant};

use async_py::{PyRunner, PyRunnerError, Value};
use faults::{child_pid, within};

const LIMIT: u64 = 512 << 20;

/// `limits()`: the worker's pid and its `RLIMIT_DATA`, soft and hard.
const LIMITS: &str = "
import os, resource
def limits():
    return [os.getpid(), *resource.getrlimit(resource.RLIMIT_DATA)]
";

/// `crash()`: what a C extension that does not check its allocation does,
/// a write through the null pointer `malloc` gave back past the limit.
const CRASH: &str = "
import ctypes
def crash():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    block = libc.malloc(3 * 1024**3)
    ctypes.memset(block or 0, 1, 3 * 1024**3)
";

#[test]
fn an_allocation_past_the_limit_raises_memory_error_and_the_child_goes_on() {
    within(60, || {
        let runner = faults::builder().memory_limit(LIMIT).build().unwrap();
        let pid = child_pid(&runner);
        match runner.eval_sync("len(bytearray(3 * 1024**3))") {
            Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "MemoryError"),
            other => panic!("expected MemoryError, got {other:?}"),
        }
        assert_eq!(runner.eval_sync("1 + 1").unwrap(), Value::from(2));
        assert_eq!(child_pid(&runner), pid, "the same child answers");
    });
}

#[test]
fn a_crash_for_want_of_memory_is_worker_died_and_a_fresh_child_has_the_limit() {
    within(60, || {
        let runner = faults::builder().memory_limit(LIMIT).build().unwrap();
        runner.run_sync(CRASH).unwrap();
        runner.run_sync(LIMITS).unwrap();
        // An eval is not replayed: only the child that ran it holds `MARK`.
        runner
            .eval_sync("globals().__setitem__('MARK', 1)")
            .unwrap();
        match runner.call_function_sync("crash", Vec::new()) {
            Err(PyRunnerError::WorkerDied { .. }) => {}
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        let fresh = runner.eval_sync("'MARK' not in globals()").unwrap();
        assert_eq!(fresh, Value::from(true), "a fresh child answers");
        let limits = runner.call_function_sync("limits", Vec::new()).unwrap();
        assert_eq!(limits[1], Value::from(LIMIT));
        assert_eq!(limits[2], Value::from(LIMIT));
    });
}

#[test]
fn every_worker_of_a_pool_and_each_replacement_has_the_limit() {
    within(90, || {
        let pool = pool::builder(2).memory_limit(LIMIT).build().unwrap();
        pool.run_sync(LIMITS).unwrap();
        pool.run_sync(pool::DEFS).unwrap();
        let check_all = |pool: &async_py::PyPool| {
            // Pids as the workers see them: those of `stats` may be stand-ins'.
            let mut seen = std::collections::BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while seen.len() < pool.workers() {
                assert!(
                    Instant::now() < deadline,
                    "workers never answered: {seen:?}"
                );
                for limits in pool.map_sync("limits", vec![Vec::new(); 8]) {
                    let limits = limits.unwrap();
                    assert_eq!(limits[1], Value::from(LIMIT), "{limits:?}");
                    assert_eq!(limits[2], Value::from(LIMIT), "{limits:?}");
                    seen.insert(limits[0].as_u64().unwrap() as u32);
                }
            }
        };
        check_all(&pool);
        match pool.eval_sync("__import__('os')._exit(3)") {
            Err(PyRunnerError::WorkerDied { .. }) => {}
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        faults::eventually("the lost worker is replaced", || {
            pool.stats().iter().map(|w| w.restarts).sum::<u64>() == 1
        });
        check_all(&pool);
        match pool.eval_sync("len(bytearray(3 * 1024**3))") {
            Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "MemoryError"),
            other => panic!("expected MemoryError, got {other:?}"),
        }
    });
}

#[test]
fn a_worker_over_max_memory_is_recycled_and_no_call_fails() {
    within(90, || {
        let pool = pool::builder(1)
            .max_memory_per_worker(200 << 20)
            .build()
            .unwrap();
        pool.run_sync(pool::DEFS).unwrap();
        pool.run_sync(
            "KEPT = None\n\
             def keep(mib):\n\
             \x20   global KEPT\n\
             \x20   KEPT = b'\\x01' * (mib << 20)",
        )
        .unwrap();
        let first = pool::pids(&pool);
        for _ in 0..5 {
            pool.call_function_sync("pid", Vec::new()).unwrap();
        }
        assert_eq!(pool::pids(&pool), first, "a small worker is kept");
        pool.call_function_sync("keep", vec![300.into()]).unwrap();
        faults::eventually("the worker is recycled", || {
            // Calls go on meanwhile; each may be the one after which it is looked at.
            pool.call_function_sync("pid", Vec::new()).unwrap();
            pool::pids(&pool) != first
        });
        assert_eq!(pool.stats()[0].restarts, 1, "{:?}", pool.stats());
        assert_eq!(
            pool.call_function_sync("var", vec!["KEPT".into()]).unwrap(),
            Value::Null,
            "the fresh child holds none of it"
        );
    });
}

#[cfg(feature = "pyo3")]
#[test]
fn pyo3_refuses_a_memory_limit() {
    assert_refused(PyRunner::builder().pyo3().memory_limit(LIMIT).build());
}

#[cfg(feature = "rustpython")]
#[test]
fn rustpython_refuses_a_memory_limit() {
    assert_refused(PyRunner::builder().rustpython().memory_limit(LIMIT).build());
}

#[allow(dead_code)]
fn assert_refused(built: Result<PyRunner, PyRunnerError>) {
    match built {
        Err(PyRunnerError::Unsupported(why)) => assert!(why.contains("Subprocess"), "{why}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}
