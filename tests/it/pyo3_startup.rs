//! How the in-process backend starts CPython. CPython starts once per
//! process, so each test runs this test binary again as a child, with the
//! environment it needs, and reads what the child prints.

use std::process::{Command, Output};

use async_py::{PyRunner, PyRunnerError};

/// Set in the child: the test that sees it plays the child's part.
const PROBE: &str = "ASYNC_PY_START_PROBE";

fn in_child() -> bool {
    std::env::var_os(PROBE).is_some()
}

/// Runs `test` of this binary again, alone, with `env` set.
fn run_child(test: &str, env: &[(&str, &str)]) -> Output {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &crate::common::test_name(module_path!(), test),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE, "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child did not end normally ({}):\n{stdout}\n{stderr}",
        output.status
    );
    output
}

/// The line of the child's stdout that starts with `key=`.
fn reported<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("the child did not report {key}:\n{stdout}"))
}

#[test]
fn a_broken_python_home_is_a_startup_error_and_the_process_lives_on() {
    if in_child() {
        let first = PyRunner::builder().pyo3().build().map(drop);
        let again = PyRunner::builder().pyo3().build().map(drop);
        let from_new = PyRunner::new().eval_sync("1").map(drop);
        match &first {
            Err(PyRunnerError::Startup(why)) => println!("\nSTARTUP={why}"),
            other => println!("\nSTARTUP=not a Startup error: {other:?}"),
        }
        println!("AGAIN_SAME={}", again == first);
        println!("NEW_SAME={}", from_new == first);
        return;
    }
    let output = run_child(
        "a_broken_python_home_is_a_startup_error_and_the_process_lives_on",
        &[("PYTHONHOME", "/nonexistent")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let why = reported(&stdout, "STARTUP");
    // CPython's own words, from the status it returned.
    assert!(
        why.contains("failed to get the Python codec of the filesystem encoding"),
        "{why}"
    );
    assert!(why.contains("PYTHONHOME=/nonexistent"), "{why}");
    assert_eq!(reported(&stdout, "AGAIN_SAME"), "true", "{stdout}");
    assert_eq!(reported(&stdout, "NEW_SAME"), "true", "{stdout}");
}

#[test]
fn a_python_the_program_started_itself_is_used_as_it_is() {
    if in_child() {
        pyo3::Python::initialize();
        let runner = PyRunner::builder().pyo3().build().unwrap();
        let answer = runner.eval_sync("6 * 7").unwrap();
        println!("\nANSWER={answer}");
        return;
    }
    let output = run_child("a_python_the_program_started_itself_is_used_as_it_is", &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(reported(&stdout, "ANSWER"), "42");
}
