#![cfg(feature = "rustpython")]
//! RustPython's cycle collector is one per process, so the backend runs it
//! itself, between commands, while a runner is the only one. This file has
//! one test, so its process has one runner.

use async_py::PyRunner;
use serde_json::Value;

#[test]
fn a_lone_runner_collects_cycles_between_commands() {
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
