//! RustPython's cycle collector is one per process, so the backend runs it
//! itself, between commands, while a runner is the only one. The other
//! tests of this binary start runners of their own, so the test runs this
//! binary again, for itself alone, to have a process with one runner.

use std::process::Command;

use async_py::PyRunner;
use serde_json::Value;

/// Set in the rerun: the test that sees it plays the lone runner's part.
const PROBE: &str = "ASYNC_PY_CYCLES_PROBE";

#[test]
fn a_lone_runner_collects_cycles_between_commands() {
    if std::env::var_os(PROBE).is_none() {
        let test = crate::common::test_name(
            module_path!(),
            "a_lone_runner_collects_cycles_between_commands",
        );
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &test, "--test-threads=1"])
            .env(PROBE, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "the rerun ran it: {stdout}");
        return;
    }
    let runner = PyRunner::builder().rustpython().build().unwrap();
    runner
        .run_sync(
            "import weakref\n\
             class Node:\n    pass\n\
             refs, gone = [], []\n\
             def churn(n):\n\
             \x20   for _ in range(n):\n\
             \x20       a, b = Node(), Node()\n\
             \x20       a.b, b.a = b, a\n\
             \x20       refs.append(weakref.ref(a, lambda r: gone.append(1)))\n",
        )
        .unwrap();
    for _ in 0..20 {
        runner
            .call_function_sync("churn", vec![Value::from(500)])
            .unwrap();
    }
    let collected = runner.eval_sync("len(gone)").unwrap().as_u64().unwrap();
    assert!(collected > 0, "no cycle was collected");
}
