#![cfg(feature = "pyo3")]
//! The conformance suite on the in-process CPython backend.

mod conformance;

fn make_runner() -> async_py::PyRunner {
    async_py::PyRunner::builder()
        .pyo3()
        .build()
        .expect("the pyo3 backend starts")
}

conformance_suite!();

use std::time::{Duration, Instant};

use async_py::{Backend, PyRunner, PyRunnerError};
use serde_json::json;

#[test]
fn new_and_builder_pick_the_pyo3_backend() {
    assert_eq!(PyRunner::new().backend(), Backend::PyO3);
    assert_eq!(
        PyRunner::builder().build().unwrap().backend(),
        Backend::PyO3
    );
    assert_eq!(make_runner().backend(), Backend::PyO3);
}

#[test]
fn startup_code_runs_before_the_first_command() {
    let runner = PyRunner::builder()
        .startup("import math\nready = 'yes'")
        .build()
        .unwrap();
    assert_eq!(runner.read_variable_sync("ready").unwrap(), json!("yes"));
    assert_eq!(runner.eval_sync("math.pi > 3").unwrap(), json!(true));
}

#[test]
fn failing_startup_code_is_a_startup_error() {
    match PyRunner::builder()
        .startup("raise RuntimeError('no config')")
        .build()
    {
        Err(PyRunnerError::Startup(message)) => assert!(message.contains("no config"), "{message}"),
        other => panic!("expected a Startup error, got {other:?}"),
    }
    match PyRunner::builder().venv("/no/such/venv").build() {
        Err(PyRunnerError::Startup(message)) => {
            assert!(message.contains("/no/such/venv"), "{message}")
        }
        other => panic!("expected a Startup error, got {other:?}"),
    }
}

#[test]
fn builder_timeout_applies_to_every_command() {
    let limit = Duration::from_millis(150);
    let runner = PyRunner::builder().timeout(limit).build().unwrap();
    assert_eq!(
        runner.run_sync("while True:\n    pass"),
        Err(PyRunnerError::Timeout(limit))
    );
    assert_eq!(
        runner.eval_sync("[i for i in iter(int, 1)]"),
        Err(PyRunnerError::Timeout(limit))
    );
    assert_eq!(runner.eval_sync("'next'").unwrap(), json!("next"));
}

#[test]
fn builder_venv_puts_site_packages_on_sys_path() {
    let _sys_path = conformance::sys_path_lock();
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let site_packages = conformance::make_venv(&conformance::base_python(), &venv);
    std::fs::write(
        site_packages.join("builder_venv_pkg.py"),
        "NAME = 'builder venv'\n",
    )
    .unwrap();
    let runner = PyRunner::builder().pyo3().venv(&venv).build().unwrap();
    runner.run_sync("import builder_venv_pkg").unwrap();
    assert_eq!(
        runner.read_variable_sync("builder_venv_pkg.NAME").unwrap(),
        json!("builder venv")
    );
}

/// Dropping the last handle ends the worker thread, which releases the
/// runner's globals: an object's `__del__` there proves it.
#[test]
fn dropping_the_last_handle_ends_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("released");
    let runner = make_runner();
    let clone = runner.clone();
    runner
        .run_sync(&format!(
            "class Sentinel:\n    def __del__(self):\n        open({:?}, 'w').write('released')\nsentinel = Sentinel()",
            marker.display().to_string()
        ))
        .unwrap();
    drop(runner);
    assert_eq!(
        clone.eval_sync("1").unwrap(),
        json!(1),
        "a clone keeps the runner alive"
    );
    assert!(!marker.exists());
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the runner's globals were never released"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
