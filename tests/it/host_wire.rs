//! Host functions through a child: what only the subprocess backend can
//! meet (a child that dies while a host function runs, frames that lie,
//! host calls while a fresh child replays), and the wire's own rules.

use std::time::Duration;

use async_py::{HostCall, PyRunnerBuilder, PyRunnerError};
use serde_json::{json, Value};

use crate::faults::{builder, child_pid, within};

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
fn a_nested_command_runs_while_its_caller_waits_and_is_replayed_by_its_caller() {
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
            .run_sync("async_py.host.nest_run('y = x * 3; runs = globals().get(\"runs\", 0) + 1')")
            .unwrap();
        assert_eq!(runner.eval_sync("[y, runs]").unwrap(), json!([15, 1]));
        // A fresh child replays the run around the nested one, which runs
        // the nested one again: it is not replayed on its own as well.
        let first = child_pid(&runner);
        let _ = runner.run_sync("import os\nos.kill(os.getpid(), 9)");
        assert_ne!(child_pid(&runner), first);
        assert_eq!(runner.eval_sync("[y, runs]").unwrap(), json!([15, 1]));
    });
}

#[test]
fn a_late_result_for_a_dead_child_never_reaches_the_fresh_one() {
    within(60, || {
        let runner = builder()
            .host_function("kill_me_and_wait", |call| {
                let pid: i32 = call.arg(0)?;
                // SAFETY: a plain kill(2) of the child that called.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(300));
                Ok(json!("late"))
            })
            .host_function("slow", |_| {
                std::thread::sleep(Duration::from_millis(600));
                Ok(json!("fresh"))
            })
            .build()
            .unwrap();
        runner.run_sync("import os, async_py").unwrap();
        let outcome = runner.eval_sync("async_py.host.kill_me_and_wait(os.getpid())");
        assert!(
            matches!(outcome, Err(PyRunnerError::WorkerDied { .. })),
            "{outcome:?}"
        );
        // The fresh child's first host call has the dead child's call id;
        // the dead call's result comes while it waits, and is dropped.
        assert_eq!(
            runner.eval_sync("async_py.host.slow()").unwrap(),
            json!("fresh")
        );
    });
}

/// Python that writes one frame of `payload` (Python bytes of MessagePack)
/// straight to the parent, behind the worker's back, through the reply
/// ring or the pipe, whichever the worker uses.
fn write_frame(payload: &str) -> String {
    format!(
        "import gc, struct\n\
         worker = next(o for o in gc.get_objects() if type(o).__name__ == 'ChildWorker')\n\
         payload = {payload}\n\
         worker._send(payload)\n\
         worker._flush()\n"
    )
}

#[test]
fn a_malformed_host_frame_is_a_protocol_error_and_the_child_is_replaced() {
    within(60, || {
        let runner = host_builder().build().unwrap();
        let first = child_pid(&runner);
        for payload in [
            // No arguments.
            "worker.pack_data(['host', 1, 'add'])",
            // Arguments that are not an array.
            "worker.pack_data(['host', 1, 'add', 3, {}])",
            // No call id.
            "worker.pack_data(['host', 'x', 'add', [], {}])",
            "worker.pack_data(['host_cancel'])",
        ] {
            match runner.run_sync(&write_frame(payload)) {
                Err(PyRunnerError::Protocol(message)) => {
                    assert!(message.contains("host"), "{message}")
                }
                other => panic!("expected a Protocol error for {payload}, got {other:?}"),
            }
            assert_ne!(child_pid(&runner), first);
        }
        // A name the child was not given: an error raised in Python, as the
        // honest child's own namespace would.
        let unknown = "import async_py\n\
                       worker = next(o for o in __import__('gc').get_objects() \
                       if type(o).__name__ == 'ChildWorker')\n\
                       worker.call_host('nope', (), {})";
        match runner.run_sync(unknown) {
            Err(PyRunnerError::Python { kind, message, .. }) => {
                assert_eq!(kind, "HostError");
                assert!(
                    message.contains("no host function named \"nope\""),
                    "{message}"
                );
            }
            other => panic!("expected HostError, got {other:?}"),
        }
        assert_eq!(
            runner.eval_sync("async_py.host.add(1, 2)").unwrap(),
            json!(3)
        );
    });
}

#[test]
fn startup_code_and_replays_may_call_host_functions_and_nest_commands() {
    within(60, || {
        let runner = host_builder()
            .startup("import async_py\nbase = async_py.host.add(1, 1)")
            .build()
            .unwrap();
        assert_eq!(runner.eval_sync("base").unwrap(), json!(2));
        // A run that calls a host function whose nested command defines a
        // name: a fresh child replays it, host call and nested command.
        runner
            .run_sync("z = async_py.host.nest('base * 10') + 1")
            .unwrap();
        assert_eq!(runner.eval_sync("z").unwrap(), json!(21));
        let first = child_pid(&runner);
        let _ = runner.run_sync("import os\nos.kill(os.getpid(), 9)");
        assert_ne!(child_pid(&runner), first);
        assert_eq!(runner.eval_sync("[base, z]").unwrap(), json!([2, 21]));
    });
}

#[test]
fn host_calls_take_the_pipe_as_well_as_the_ring() {
    within(60, || {
        let runner = host_builder()
            .env("ASYNC_PY_REPLY_RING", "0")
            .build()
            .unwrap();
        runner.run_sync("import async_py\nx = 4").unwrap();
        assert_eq!(
            runner
                .eval_sync("[async_py.host.add(i, 1) for i in range(100)][-1]")
                .unwrap(),
            json!(100)
        );
        assert_eq!(
            runner.eval_sync("async_py.host.nest('x * x')").unwrap(),
            json!(16)
        );
    });
}

#[test]
fn a_sync_host_function_past_the_limit_times_out_its_command_through_a_nested_one() {
    within(60, || {
        let runner = builder()
            .timeout(Duration::from_millis(500))
            .host_function("nest", |call| {
                let code: String = call.arg(0)?;
                call.runner()
                    .clone()
                    .with_timeout(Duration::from_secs(30))
                    .run_sync(&code)
                    .map(|()| Value::Null)
                    .map_err(|err| err.to_string())
            })
            .build()
            .unwrap();
        runner.run_sync("import async_py, time").unwrap();
        // The limit passes while the nested command runs: the command that
        // waits for the host function is the one that times out.
        let started = std::time::Instant::now();
        let outcome = runner.run_sync("async_py.host.nest('time.sleep(5)')");
        assert!(
            matches!(outcome, Err(PyRunnerError::Timeout(_))),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
    });
}

/// Runs `code` on a clone of `runner` on a thread of its own.
fn run_on_thread(
    runner: &async_py::PyRunner,
    code: &str,
) -> std::thread::JoinHandle<Result<(), PyRunnerError>> {
    let runner = runner.clone();
    let code = code.to_owned();
    std::thread::spawn(move || runner.run_sync(&code))
}

#[test]
fn requests_queued_behind_one_that_waits_for_a_host_function_run_after_it() {
    within(60, || {
        let runner = builder()
            .host_function("slow", |_| {
                std::thread::sleep(Duration::from_millis(300));
                Ok(Value::Null)
            })
            .build()
            .unwrap();
        runner
            .run_sync("import async_py, time\norder = []")
            .unwrap();
        // A and B wait while P runs, and go out together in one write.
        let p = run_on_thread(&runner, "time.sleep(0.4)");
        std::thread::sleep(Duration::from_millis(100));
        let a = run_on_thread(
            &runner,
            "order.append('A0'); async_py.host.slow(); order.append('A1')",
        );
        std::thread::sleep(Duration::from_millis(50));
        let b = run_on_thread(&runner, "order.append('B')");
        for handle in [p, a, b] {
            handle.join().unwrap().unwrap();
        }
        assert_eq!(runner.eval_sync("order").unwrap(), json!(["A0", "A1", "B"]));
    });
}

#[test]
fn a_stop_queued_behind_one_that_waits_for_a_host_function_comes_after_it() {
    within(60, || {
        let runner = builder()
            .host_function("slow", |_| {
                std::thread::sleep(Duration::from_millis(300));
                Ok(json!("done"))
            })
            .build()
            .unwrap();
        runner.run_sync("import async_py, time").unwrap();
        let p = run_on_thread(&runner, "time.sleep(0.4)");
        std::thread::sleep(Duration::from_millis(100));
        let a = {
            let runner = runner.clone();
            std::thread::spawn(move || runner.eval_sync("async_py.host.slow()"))
        };
        std::thread::sleep(Duration::from_millis(50));
        let stop = {
            let runner = runner.clone();
            std::thread::spawn(move || runner.stop_sync())
        };
        p.join().unwrap().unwrap();
        assert_eq!(a.join().unwrap().unwrap(), json!("done"));
        stop.join().unwrap().unwrap();
    });
}

/// A runner whose host function `nest(kind)` sends one command of `kind`
/// to the runner that called, and returns what it heard, as text.
fn nesting_runner() -> async_py::PyRunner {
    builder()
        .host_function("nest", |call| {
            let kind: String = call.arg(0)?;
            let runner = call.runner();
            let outcome = match kind.as_str() {
                "coroutine" => runner.call_async_function_sync("coro", vec![]).map(drop),
                "awaitable" => runner.call("coro").wait().map(drop),
                "stream" => match runner.call("gen").stream().blocking_iter().next() {
                    Some(Err(err)) => Err(err),
                    _ => Ok(()),
                },
                "stop" => runner.stop_sync(),
                _ => runner.eval_sync(&kind).map(drop),
            };
            Ok(json!(match outcome {
                Ok(()) => "ok".to_owned(),
                Err(err) => format!("{err:?}"),
            }))
        })
        .build()
        .unwrap()
}

#[test]
fn nested_commands_that_need_the_loop_or_the_stream_pump_are_refused() {
    within(60, || {
        let runner = nesting_runner();
        runner
            .run_sync(
                "import async_py\n\
                 async def coro():\n    return 1\n\
                 def gen():\n    yield 1\n",
            )
            .unwrap();
        for kind in ["coroutine", "stream", "stop"] {
            let heard = runner
                .eval_sync(&format!("async_py.host.nest({kind:?})"))
                .unwrap();
            let heard = heard.as_str().unwrap();
            assert!(heard.starts_with("Unsupported("), "{kind}: {heard}");
        }
        let heard = runner.eval_sync("async_py.host.nest('awaitable')").unwrap();
        let heard = heard.as_str().unwrap();
        assert!(
            heard.contains("RuntimeError") && heard.contains("awaitable"),
            "{heard}"
        );
        // The runner goes on, the same child, the coroutine never left running.
        let pid = child_pid(&runner);
        assert_eq!(
            runner.eval_sync("async_py.host.nest('1 + 1')").unwrap(),
            json!("ok")
        );
        assert_eq!(
            runner.call_async_function_sync("coro", vec![]).unwrap(),
            json!(1)
        );
        assert_eq!(child_pid(&runner), pid);
    });
}

#[test]
fn dropping_a_stream_whose_item_waits_for_a_host_function_closes_it_cleanly() {
    within(60, || {
        let runner = builder()
            .host_function("slow", |call| {
                std::thread::sleep(Duration::from_millis(200));
                Ok(call.args[0].clone())
            })
            .build()
            .unwrap();
        runner
            .run_sync(
                "import async_py\nclosed = []\n\
                 def gen():\n    try:\n        for i in range(10):\n            \
                 yield async_py.host.slow(i)\n    finally:\n        closed.append(True)\n",
            )
            .unwrap();
        let pid = child_pid(&runner);
        let mut items = runner.call("gen").stream().blocking_iter();
        assert_eq!(items.next().unwrap().unwrap(), json!(0));
        // The generator is inside its next host call: the close waits for it.
        drop(items);
        assert_eq!(runner.eval_sync("closed").unwrap(), json!([true]));
        assert_eq!(child_pid(&runner), pid);
        assert_eq!(runner.eval_sync("async_py.host.slow(7)").unwrap(), json!(7));
    });
}

#[test]
fn a_limited_stream_item_whose_host_function_nests_commands_keeps_the_wire_whole() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    within(60, || {
        let failures = Arc::new(AtomicUsize::new(0));
        let failed = failures.clone();
        let runner = builder()
            .host_function("busy", move |call| {
                let millis: u64 = call.arg(0)?;
                let until = std::time::Instant::now() + Duration::from_millis(millis);
                let mut answered = 0;
                while std::time::Instant::now() < until {
                    match call
                        .runner()
                        .eval_sync("(__import__('time').sleep(0.01), sum(range(100)))[1]")
                    {
                        Ok(value) if value == json!(4950) => answered += 1,
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                Ok(json!(answered))
            })
            .build()
            .unwrap();
        runner
            .run_sync(
                "import async_py\n\
                 def gen(millis):\n    for _ in range(3):\n        yield async_py.host.busy(millis)\n",
            )
            .unwrap();
        let pid = child_pid(&runner);
        // Within the limit: every item comes, each after many nested commands.
        let items: Vec<Value> = runner
            .call("gen")
            .arg(100)
            .timeout(Duration::from_secs(5))
            .stream()
            .blocking_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(items.len(), 3);
        assert!(items.iter().all(|n| n.as_u64().unwrap() > 0), "{items:?}");
        // Past it: the item stops with Timeout while its host function goes on.
        let mut items = runner
            .call("gen")
            .arg(600)
            .timeout(Duration::from_millis(150))
            .stream()
            .blocking_iter();
        let first = items.next().unwrap();
        assert!(
            matches!(first, Err(PyRunnerError::Timeout { .. })),
            "{first:?}"
        );
        drop(items);
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(failures.load(Ordering::SeqCst), 0);
        assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
        assert_eq!(child_pid(&runner), pid);
    });
}

#[test]
fn an_async_host_function_awaited_on_a_loop_of_the_commands_own_answers() {
    within(60, || {
        let runner = builder()
            .host_async_function("later", |call| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(call.args[0].clone())
            })
            .build()
            .unwrap();
        runner
            .run_sync(
                "import async_py, asyncio\n\
                 async def main():\n    return await asyncio.gather(*(async_py.host.later(i) for i in range(3)))\n",
            )
            .unwrap();
        assert_eq!(
            runner.eval_sync("asyncio.run(main())").unwrap(),
            json!([0, 1, 2])
        );
        // The worker's own loop still awaits them concurrently.
        assert_eq!(runner.call("main").wait().unwrap(), json!([0, 1, 2]));
    });
}

#[test]
fn a_captured_command_nested_in_a_captured_one_keeps_its_own_output() {
    within(60, || {
        let runner = builder()
            .host_function("inner", |call| {
                let code: String = call.arg(0)?;
                let captured = call
                    .runner()
                    .exec(&code)
                    .capture_output()
                    .wait()
                    .map_err(|err| err.to_string())?;
                Ok(json!([captured.stdout, captured.stderr]))
            })
            .build()
            .unwrap();
        runner.run_sync("import async_py, os, sys").unwrap();
        let outer = runner
            .exec(
                "print('outer 1')\n\
                 heard = async_py.host.inner(\"print('inner'); os.write(2, b'inner fd\\\\n')\")\n\
                 print('outer 2', file=sys.stderr)\n\
                 os.write(1, b'outer fd\\n')\n",
            )
            .capture_output()
            .wait()
            .unwrap();
        assert_eq!(outer.stdout, "outer 1\nouter fd\n");
        assert_eq!(outer.stderr, "outer 2\n");
        assert_eq!(
            runner.eval_sync("heard").unwrap(),
            json!(["inner\n", "inner fd\n"])
        );
        // The files are clean for the next command.
        let next = runner
            .exec("print('next')")
            .capture_output()
            .wait()
            .unwrap();
        assert_eq!(next.stdout, "next\n");
    });
}

#[test]
fn a_command_sent_by_a_host_function_after_its_child_died_is_worker_died() {
    use std::sync::{Arc, Mutex};
    within(60, || {
        let heard = Arc::new(Mutex::new(None));
        let hear = heard.clone();
        let runner = builder()
            .host_function("kill_then_nest", move |call| {
                let pid: i32 = call.arg(0)?;
                // SAFETY: a plain kill(2) of the child that called.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(300));
                *hear.lock().unwrap() = Some(call.runner().run_sync("leak = 1"));
                Ok(Value::Null)
            })
            .build()
            .unwrap();
        runner.run_sync("import os, async_py").unwrap();
        let outcome = runner.run_sync("async_py.host.kill_then_nest(os.getpid())");
        assert!(
            matches!(outcome, Err(PyRunnerError::WorkerDied { .. })),
            "{outcome:?}"
        );
        // The fresh child serves on; the late command never reached it.
        assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
        std::thread::sleep(Duration::from_millis(500));
        let nested = heard.lock().unwrap().take();
        assert!(
            matches!(nested, Some(Err(PyRunnerError::WorkerDied { .. }))),
            "{nested:?}"
        );
        assert_eq!(
            runner.eval_sync("'leak' in globals()").unwrap(),
            json!(false)
        );
    });
}

#[test]
fn a_nested_command_of_a_failed_replay_does_not_judge_the_next_child() {
    within(60, || {
        let flag =
            std::env::temp_dir().join(format!("async_py_replay_kill_{}", std::process::id()));
        let _ = std::fs::remove_file(&flag);
        let runner = builder()
            .timeout(Duration::from_millis(600))
            .host_function("nest", |call| {
                let code: String = call.arg(0)?;
                call.runner()
                    .run_sync(&code)
                    .map(|()| Value::Null)
                    .map_err(|err| err.to_string())
            })
            .build()
            .unwrap();
        runner
            .run_sync(&format!(
                "import async_py, os, time\nFLAG = {:?}",
                flag.display().to_string()
            ))
            .unwrap();
        // Remembered: a fresh child runs it again, nested command and all.
        runner
            .run_sync("async_py.host.nest('if os.path.exists(FLAG): os.kill(os.getpid(), 9)')")
            .unwrap();
        std::fs::write(&flag, b"").unwrap();
        // Its child dies; the next one dies in the replay's nested command.
        let _ = runner.run_sync("os.kill(os.getpid(), 9)");
        let _ = runner.eval_sync("1");
        std::fs::remove_file(&flag).unwrap();
        let pid = child_pid(&runner);
        // Past the failed replay's nested command's limit: the fresh
        // child's command is not taken for it.
        assert_eq!(runner.eval_sync("time.sleep(0.4) or 1").unwrap(), json!(1));
        assert_eq!(runner.eval_sync("time.sleep(0.4) or 2").unwrap(), json!(2));
        assert_eq!(child_pid(&runner), pid);
    });
}

#[test]
fn a_nested_command_past_its_own_limit_times_out_alone() {
    within(60, || {
        let runner = builder()
            .host_function("nest", |call| {
                let code: String = call.arg(0)?;
                let heard = call
                    .runner()
                    .clone()
                    .with_timeout(Duration::from_millis(200))
                    .run_sync(&code);
                Ok(json!(format!("{heard:?}")))
            })
            .build()
            .unwrap();
        runner.run_sync("import async_py, time").unwrap();
        let pid = child_pid(&runner);
        let started = std::time::Instant::now();
        runner
            .run_sync("heard = async_py.host.nest('time.sleep(5)')\nafter = 'went on'")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        let heard = runner.eval_sync("[heard, after]").unwrap();
        assert!(
            heard[0].as_str().unwrap().starts_with("Err(Timeout("),
            "{heard}"
        );
        assert_eq!(heard[1], json!("went on"));
        assert_eq!(child_pid(&runner), pid);
    });
}

/// How many threads of this process carry `name` (as the kernel keeps it:
/// its first 15 bytes).
fn threads_named(name: &str) -> usize {
    let short = &name[..name.len().min(15)];
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == short)
        .count()
}

#[test]
fn surplus_host_threads_end_after_idling() {
    within(60, || {
        let runner = host_builder().build().unwrap();
        runner.run_sync("import async_py").unwrap();
        // Three calls nested in one another: a thread for each.
        assert_eq!(
            runner
                .eval_sync("async_py.host.nest(\"async_py.host.nest('async_py.host.add(1, 2)')\")")
                .unwrap(),
            json!(3)
        );
        assert!(threads_named("async_py-host-calls") >= 3);
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(threads_named("async_py-host-calls"), 1);
        // The one left serves on, and more start when calls nest again.
        assert_eq!(
            runner.eval_sync("async_py.host.add(2, 2)").unwrap(),
            json!(4)
        );
        assert_eq!(
            runner
                .eval_sync("async_py.host.nest('async_py.host.add(3, 3)')")
                .unwrap(),
            json!(6)
        );
    });
}
