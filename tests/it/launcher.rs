//! Launchers (`PyRunnerBuilder::launcher`): a child started through a
//! command that gives a Python elsewhere, only stdin and stdout between.

use crate::faults;

use std::time::Duration;

use async_py::{PyPool, PyRunner, PyRunnerError, Value};
use faults::within;

/// The interpreter the tests use, by its real path (the far side of a
/// launcher does not share this process's PATH).
fn python() -> String {
    let out = std::process::Command::new(faults::python())
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_plain_prefix_runs_the_worker_with_its_environment() {
    within(60, || {
        let runner = PyRunner::builder()
            .subprocess()
            .launcher(["/usr/bin/env", "VAR=1"])
            .python(python())
            .env("GIVEN", "over stdin")
            .build()
            .unwrap();
        assert_eq!(
            runner
                .eval_sync("[__import__('os').environ.get(k) for k in ('VAR', 'GIVEN', 'ASYNC_PY_LAUNCHED')]")
                .unwrap(),
            serde_json::json!(["1", "over stdin", null])
        );
        runner.run_sync("def add(a, b):\n    return a + b").unwrap();
        assert_eq!(
            runner
                .call_function_sync("add", vec![Value::from(2), Value::from(3)])
                .unwrap(),
            Value::from(5)
        );
        let items: Vec<i64> = runner
            .call("range")
            .arg(100_000)
            .returns::<i64>()
            .stream()
            .blocking_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(items.len(), 100_000);
        let pid = faults::child_pid(&runner);
        runner.stop_sync().unwrap();
        faults::eventually("the worker is gone", || faults::is_gone(pid));
    });
}

#[test]
fn a_command_past_its_limit_is_a_timeout_and_the_runner_recovers() {
    within(60, || {
        let runner = PyRunner::builder()
            .subprocess()
            .launcher(["/usr/bin/env", "VAR=1"])
            .python(python())
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        runner.run_sync("kept = 7").unwrap();
        match runner.run_sync("while True:\n    pass") {
            Err(PyRunnerError::Timeout(_)) => {}
            other => panic!("expected a Timeout, got {other:?}"),
        }
        assert_eq!(runner.eval_sync("kept").unwrap(), Value::from(7));
    });
}

#[test]
fn uv_run_gives_packages_on_the_fly() {
    within(180, || {
        let runner = PyRunner::builder()
            .subprocess()
            .launcher([
                "uv",
                "run",
                "--no-project",
                "--python",
                &python(),
                "--with",
                "six==1.16.0",
            ])
            .python("python")
            .start_timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        assert_eq!(
            runner.eval_sync("__import__('six').__version__").unwrap(),
            Value::from("1.16.0")
        );
    });
}

#[test]
fn a_pool_mixes_local_and_launched_workers() {
    within(60, || {
        let pool = PyPool::builder()
            .workers(1)
            .python(python())
            .add_workers(1, ["/usr/bin/env", "LAUNCHED_WORKER=yes"])
            .build()
            .unwrap();
        pool.run_sync("import os, time\ndef who(i):\n    time.sleep(0.05)\n    return os.environ.get('LAUNCHED_WORKER', 'local')").unwrap();
        let answers = pool.map_sync("who", (0..20).map(|i| vec![Value::from(i)]).collect());
        let mut seen = std::collections::BTreeSet::new();
        for answer in answers {
            seen.insert(answer.unwrap().as_str().unwrap().to_string());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["local", "yes"]);
    });
}
