//! The conformance suite on the RustPython backend, and what is its own:
//! no event loop, an interpreter per runner, recursion that never crashes.

pub fn make_runner() -> async_py::PyRunner {
    async_py::PyRunner::builder()
        .rustpython()
        .build()
        .expect("the rustpython backend starts")
}

crate::conformance_suite!(crate::rustpython::make_runner);

pub fn builder() -> async_py::PyRunnerBuilder {
    async_py::PyRunner::builder().rustpython()
}

crate::output_suite!(crate::rustpython::builder);
// RustPython runs no coroutines of a runner's: the async host functions'
// tests do not apply.
crate::host_suite!(crate::rustpython::builder:
    sync_functions_take_args_and_kwargs results_cross_by_the_value_table
    errors_and_panics_raise_host_error an_unknown_name_is_an_attribute_error
    a_runner_without_host_functions_has_the_module progress_arrives_in_order
    nested_commands_run_before_the_host_function_returns
    commands_from_other_clones_wait_for_the_command_that_runs a_timeout_counts_host_time
    startup_code_may_call_host_functions_that_send_commands
);

use std::time::{Duration, Instant};

use async_py::{Backend, PyRunner, PyRunnerError};
use serde_json::json;

#[test]
fn the_builder_picks_rustpython_at_run_time() {
    let runner = make_runner();
    assert_eq!(runner.backend(), Backend::RustPython);
    runner.run_sync("import sys").unwrap();
    let version = runner.eval_sync("sys.version").unwrap();
    assert!(
        version.as_str().unwrap().contains("RustPython"),
        "{version}"
    );
}

#[test]
fn coroutines_are_unsupported_and_say_where_they_run() {
    let runner = make_runner();
    runner.run_sync("async def later():\n    return 1").unwrap();
    for reply in [
        runner.call_async_function_sync("later", vec![]),
        runner.call_async_function_sync("no_such_function", vec![]),
    ] {
        match reply {
            Err(PyRunnerError::Unsupported(message)) => {
                assert!(message.contains("RustPython"), "{message}");
                assert!(message.contains("pyo3"), "{message}");
                assert!(message.contains("subprocess"), "{message}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
    assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
}

/// Even with the recursion limit lifted, deep recursion ends in
/// `RecursionError` (the interpreter watches its native stack), and the
/// runner goes on.
#[test]
fn recursion_past_a_lifted_limit_is_a_recursion_error() {
    let runner = make_runner();
    runner
        .run_sync(
            "import sys\nsys.setrecursionlimit(10 ** 7)\n\
             def down(n):\n    return 0 if n == 0 else 1 + down(n - 1)",
        )
        .unwrap();
    match runner.call_function_sync("down", vec![json!(10_000_000)]) {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "RecursionError"),
        other => panic!("expected RecursionError, got {other:?}"),
    }
    assert_eq!(
        runner.call_function_sync("down", vec![json!(50)]).unwrap(),
        json!(50)
    );
}

/// Data nested more than 5000 deep, given to `json`, ends in
/// `RecursionError` (RustPython's native parser overflowed the stack and
/// aborted the process at about 190 000 levels), and `json` still works
/// after: brackets inside strings, escaped quotes and documents with many
/// shallow containers parse as before.
#[test]
fn json_nested_too_deep_is_a_recursion_error() {
    let runner = make_runner();
    runner.run_sync("import json").unwrap();
    for code in [
        "json.loads('[' * 200_000 + ']' * 200_000)",
        "json.loads('{\"a\": ' * 200_000 + '1' + '}' * 200_000)",
        "json.loads('[' * 5_001 + ']' * 5_001)",
        // Far more brackets in strings than outside: the depth still counts.
        "json.loads('[\"' + ']' * 9_000 + '\", ' * 3 + '[' * 6_000 + ']' * 6_001)",
    ] {
        match runner.run_sync(code) {
            Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "RecursionError", "{code}"),
            other => panic!("expected RecursionError from {code}, got {other:?}"),
        }
    }
    runner
        .run_sync(
            "text = json.dumps(['[' * 50, '\\\\\"{' * 30, [[1, 'x]'], {'k': [2]}]] * 300)\n\
             parsed = json.loads(text)\n\
             deep = json.loads('[' * 5_000 + ']' * 5_000)\n\
             quoted = json.loads('[\"' + '[' * 9_000 + '\"]')",
        )
        .unwrap();
    assert_eq!(runner.eval_sync("len(parsed)").unwrap(), json!(900));
    assert_eq!(
        runner.eval_sync("parsed[:3]").unwrap(),
        json!(["[".repeat(50), "\\\"{".repeat(30), [[1, "x]"], {"k": [2]}]])
    );
    assert_eq!(runner.eval_sync("len(quoted[0])").unwrap(), json!(9000));
    assert_eq!(runner.eval_sync("len(deep)").unwrap(), json!(1));
    // A subclass of str cannot hide the brackets from the guard.
    runner
        .run_sync("class Text(str):\n    def count(self, *args):\n        return 0")
        .unwrap();
    match runner.run_sync("json.loads(Text('[' * 200_000 + ']' * 200_000))") {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "RecursionError"),
        other => panic!("expected RecursionError, got {other:?}"),
    }
    // A thread of its own has a smaller stack (2 MiB): less depth is let through.
    runner
        .run_sync(
            "import threading\n\
             def parse_in_thread(depth):\n\
             \x20   out = []\n\
             \x20   def parse():\n\
             \x20       try:\n\
             \x20           out.append(len(json.loads('[' * depth + ']' * depth)))\n\
             \x20       except RecursionError as err:\n\
             \x20           out.append(type(err).__name__)\n\
             \x20   thread = threading.Thread(target=parse)\n\
             \x20   thread.start()\n\
             \x20   thread.join()\n\
             \x20   return out",
        )
        .unwrap();
    assert_eq!(
        runner
            .call_function_sync("parse_in_thread", vec![json!(500)])
            .unwrap(),
        json!([1])
    );
    assert_eq!(
        runner
            .call_function_sync("parse_in_thread", vec![json!(200_000)])
            .unwrap(),
        json!(["RecursionError"])
    );
}

/// Each runner has an interpreter of its own: unlike in-process CPython,
/// `sys.path` and imported modules are not shared.
#[test]
fn runners_have_their_own_sys_path_and_modules() {
    let one = make_runner();
    let two = make_runner();
    one.run_sync("import sys\nsys.path.insert(0, '/only/in/one')\nsys.modules['only_one'] = sys")
        .unwrap();
    two.run_sync("import sys").unwrap();
    assert_eq!(
        two.eval_sync("'/only/in/one' in sys.path").unwrap(),
        json!(false)
    );
    assert_eq!(
        two.eval_sync("'only_one' in sys.modules").unwrap(),
        json!(false)
    );
    assert_eq!(
        one.eval_sync("'/only/in/one' in sys.path").unwrap(),
        json!(true)
    );
}

/// Timeouts in two runners at once: each interrupt reaches its own
/// interpreter, though RustPython keeps one pending-signal flag per process.
#[test]
fn two_runners_time_out_at_once_and_both_recover() {
    let limit = Duration::from_millis(200);
    let runners: Vec<PyRunner> = (0..2)
        .map(|_| {
            PyRunner::builder()
                .rustpython()
                .timeout(limit)
                .build()
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = runners
        .iter()
        .cloned()
        .map(|runner| std::thread::spawn(move || runner.run_sync("while True:\n    pass")))
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), Err(PyRunnerError::Timeout(limit)));
    }
    for runner in &runners {
        let started = Instant::now();
        assert_eq!(runner.eval_sync("'next'").unwrap(), json!("next"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the runaway loop was stopped"
        );
    }
}

crate::in_process_suite!(rustpython);
