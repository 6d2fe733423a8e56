//! Host functions through a child: what only the subprocess backend can
//! meet (a child that dies while a host function runs, frames that lie,
//! host calls while a fresh child replays), and the wire's own rules.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_py::{HostCall, PyRunner, PyRunnerBuilder, PyRunnerError};
use serde_json::{json, Value};

use crate::faults::{builder, child_pid, eventually, is_gone, within};

fn text(call: &HostCall, index: usize) -> Result<String, String> {
    call.arg(index)
}

/// A runner with a few host functions: `add(a, b)`, `echo(*args,
/// **kwargs)`, `nest(code)` (evaluates `code` on the runner that called),
/// `nest_run(code)` and `fail(message)`.
fn host_builder() -> PyRunnerBuilder {
    builder()
        .host_function("add", |call| {
            Ok(json!(call.arg::<i64>(0)? + call.arg::<i64>(1)?))
        })
        .host_function("echo", |call| {
            Ok(json!({"args": call.args, "kwargs": call.kwargs}))
        })
        .host_function("nest", |call| {
            let code = text(&call, 0)?;
            call.runner()
                .eval_sync(&code)
                .map_err(|err| format!("nested eval: {err}"))
        })
        .host_function("nest_run", |call| {
            let code = text(&call, 0)?;
            call.runner()
                .run_sync(&code)
                .map(|()| Value::Null)
                .map_err(|err| format!("nested run: {err}"))
        })
        .host_function("fail", |call| Err(text(&call, 0)?))
}

#[test]
fn values_cross_both_ways_with_bytes_as_numbers() {
    within(60, || {
        let runner = host_builder().build().unwrap();
        runner.run_sync("import async_py").unwrap();
        assert_eq!(
            runner.eval_sync("async_py.host.add(2, 40)").unwrap(),
            json!(42)
        );
        assert_eq!(
            runner
                .eval_sync("async_py.host.echo(b'\\x00\\xff', [1.5, None], k={'x': 'é'})")
                .unwrap(),
            json!({"args": [[0, 255], [1.5, null]], "kwargs": {"k": {"x": "é"}}})
        );
        runner
            .run_sync(
                "try:\n    async_py.host.fail('no luck')\nexcept async_py.HostError as e:\n    caught = str(e)\n",
            )
            .unwrap();
        assert_eq!(runner.eval_sync("caught").unwrap(), json!("no luck"));
        match runner.eval_sync("async_py.host.nope()") {
            Err(PyRunnerError::Python { kind, message, .. }) => {
                assert_eq!(kind, "AttributeError");
                assert!(message.contains("nope"), "{message}");
            }
            other => panic!("expected AttributeError, got {other:?}"),
        }
    });
}

#[test]
fn a_nested_command_runs_while_its_caller_waits_and_a_nested_run_is_replayed() {
    within(60, || {
        let runner = host_builder().build().unwrap();
        runner
            .run_sync("import async_py\nx = 5\ndef twice(code):\n    return [async_py.host.nest(code), async_py.host.nest(code)]")
            .unwrap();
        assert_eq!(
            runner.eval_sync("async_py.host.nest('x * 2')").unwrap(),
            json!(10)
        );
        // Nested twice over: a host function's command calls a host function.
        assert_eq!(
            runner
                .eval_sync("async_py.host.nest(\"async_py.host.nest('x + 1')\")")
                .unwrap(),
            json!(6)
        );
        assert_eq!(
            runner.call("twice").arg("x - 1").wait().unwrap(),
            json!([4, 4])
        );
        runner
            .run_sync("async_py.host.nest_run('y = x * 3')")
            .unwrap();
        assert_eq!(runner.eval_sync("y").unwrap(), json!(15));
        // A fresh child replays the nested run as well as the one around it.
        let first = child_pid(&runner);
        let _ = runner.run_sync("import os\nos.kill(os.getpid(), 9)");
        assert_ne!(child_pid(&runner), first);
        assert_eq!(runner.eval_sync("y").unwrap(), json!(15));
    });
}
