//! Tests that hold for every in-process backend (PyO3, RustPython), each
//! given a builder that already names its backend.

use std::time::{Duration, Instant};

use async_py::{PyRunnerBuilder, PyRunnerError};
use serde_json::json;

pub fn startup_code_runs_before_the_first_command(builder: PyRunnerBuilder) {
    let runner = builder
        .startup("import math\nready = 'yes'")
        .build()
        .unwrap();
    assert_eq!(runner.read_variable_sync("ready").unwrap(), json!("yes"));
    assert_eq!(runner.eval_sync("math.pi > 3").unwrap(), json!(true));
}

pub fn failing_startup_code_is_a_startup_error(builder: PyRunnerBuilder) {
    match builder
        .clone()
        .startup("raise RuntimeError('no config')")
        .build()
    {
        Err(PyRunnerError::Startup(message)) => assert!(message.contains("no config"), "{message}"),
        other => panic!("expected a Startup error, got {other:?}"),
    }
    match builder.venv("/no/such/venv").build() {
        Err(PyRunnerError::Startup(message)) => {
            assert!(message.contains("/no/such/venv"), "{message}")
        }
        other => panic!("expected a Startup error, got {other:?}"),
    }
}

pub fn builder_timeout_applies_to_every_command(builder: PyRunnerBuilder) {
    let limit = Duration::from_millis(150);
    let runner = builder.timeout(limit).build().unwrap();
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

pub fn builder_venv_puts_site_packages_on_sys_path(builder: PyRunnerBuilder) {
    let _sys_path = super::sys_path_lock();
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let site_packages = super::make_venv(&super::base_python(), &venv);
    std::fs::write(
        site_packages.join("builder_venv_pkg.py"),
        "NAME = 'builder venv'\n",
    )
    .unwrap();
    let runner = builder.venv(&venv).build().unwrap();
    runner.run_sync("import builder_venv_pkg").unwrap();
    assert_eq!(
        runner.read_variable_sync("builder_venv_pkg.NAME").unwrap(),
        json!("builder venv")
    );
}

/// Dropping the last handle ends the worker thread, which releases the
/// runner's globals: an object's `__del__` there proves it.
pub fn dropping_the_last_handle_ends_the_runner(builder: PyRunnerBuilder) {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("released");
    let runner = builder.build().unwrap();
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
