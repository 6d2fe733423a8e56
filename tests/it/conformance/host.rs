//! Host functions: Python calls Rust (`async_py.host.NAME(...)`), on every
//! backend; each backend's module invokes `host_suite!` with its builder.
//! A command that could deadlock runs under [`within_10s`].

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_py::{HostCall, PyRunnerBuilder, PyRunnerError, Value};
use serde_json::json;

/// Fails the test, rather than hanging it, if `future` is not done in 10 s.
pub async fn within_10s<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 10 s (a deadlock?)"))
}

/// Sets its flag when dropped: tells when a host function's future, or
/// the closure itself, was let go.
pub struct SetOnDrop(pub Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Fails the test with `what` unless `flag` is set within 5 s.
pub async fn wait_for(flag: &AtomicBool, what: &str) {
    let started = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Python error's class name, or a panic naming what came instead.
fn python_kind(result: Result<Value, PyRunnerError>) -> (String, String) {
    match result {
        Err(PyRunnerError::Python { kind, message, .. }) => (kind, message),
        other => panic!("expected a Python error, got {other:?}"),
    }
}

/// What a host function was called with: its arguments and keyword arguments.
type Calls = Arc<Mutex<Vec<(Vec<Value>, Value)>>>;

pub async fn sync_functions_take_args_and_kwargs(builder: PyRunnerBuilder) {
    let seen: Calls = Arc::default();
    let record = seen.clone();
    let runner = builder
        .host_function("echo", move |call: HostCall| {
            let kwargs = Value::Object(call.kwargs.clone());
            record
                .lock()
                .unwrap()
                .push((call.args.clone(), kwargs.clone()));
            Ok(json!([call.args, kwargs]))
        })
        .host_function("add", |call: HostCall| {
            let a: i64 = call.arg(0)?;
            let b: i64 = call.arg(1)?;
            let scale: i64 = call.kwarg("scale")?.unwrap_or(1);
            Ok(json!((a + b) * scale))
        })
        .build()
        .unwrap();
    runner.run("import async_py").await.unwrap();
    let echoed = runner
        .eval(r#"async_py.host.echo(1, "é", [1.5, None], {"k": True}, b"\x00\xff", flag=False, n=-3)"#)
        .await
        .unwrap();
    let args = json!([1, "é", [1.5, null], {"k": true}, [0, 255]]);
    let kwargs = json!({"flag": false, "n": -3});
    assert_eq!(echoed, json!([args, kwargs]));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[(args.as_array().unwrap().clone(), kwargs)]
    );
    assert_eq!(runner.eval("async_py.host.add(2, 3)").await.unwrap(), 5);
    assert_eq!(
        runner
            .eval("async_py.host.add(2, 3, scale=10)")
            .await
            .unwrap(),
        50
    );
    // A plain Python function: it can be passed around and called later.
    runner
        .run("import async_py\nf = async_py.host.add\nresults = [f(i, i) for i in range(3)]")
        .await
        .unwrap();
    assert_eq!(runner.eval("results").await.unwrap(), json!([0, 2, 4]));
    // An argument of the wrong type is the host function's own error.
    let (kind, message) = python_kind(runner.eval("async_py.host.add('a', 1)").await);
    assert_eq!(kind, "HostError");
    assert!(message.contains("add() argument 0"), "{message}");
}

pub async fn results_cross_by_the_value_table(builder: PyRunnerBuilder) {
    let runner = builder
        .host_function("make", |_| {
            Ok(json!({"list": [1, 2.5, null, true, "x"], "big": u64::MAX, "nested": {"a": []}}))
        })
        .build()
        .unwrap();
    runner
        .run("import async_py\nr = async_py.host.make()\nkinds = [type(v).__name__ for v in r['list']]")
        .await
        .unwrap();
    assert_eq!(
        runner.eval("kinds").await.unwrap(),
        json!(["int", "float", "NoneType", "bool", "str"])
    );
    assert_eq!(
        runner
            .eval("r['big'] == 2**64 - 1 and r['nested'] == {'a': []}")
            .await
            .unwrap(),
        true
    );
}

pub async fn errors_and_panics_raise_host_error(builder: PyRunnerBuilder) {
    let runner = builder
        .host_function("fail", |call: HostCall| {
            Err(format!("bad input: {}", call.args[0]))
        })
        .host_function("boom", |_| panic!("kaboom"))
        .build()
        .unwrap();
    runner
        .run(
            r#"
import async_py

def catch(name):
    try:
        getattr(async_py.host, name)(3)
    except async_py.HostError as e:
        return [type(e).__name__, str(e), isinstance(e, Exception)]
    return "no error"
"#,
        )
        .await
        .unwrap();
    assert_eq!(
        runner.call("catch").arg("fail").await.unwrap(),
        json!(["HostError", "bad input: 3", true])
    );
    let caught = runner.call("catch").arg("boom").await.unwrap();
    assert_eq!(caught[0], "HostError");
    let message = caught[1].as_str().unwrap();
    assert!(
        message.contains("boom") && message.contains("panicked") && message.contains("kaboom"),
        "{message}"
    );
    // Not caught in Python, it reaches Rust as a Python error.
    let (kind, message) = python_kind(runner.eval("async_py.host.fail(7)").await);
    assert_eq!(
        (kind.as_str(), message.as_str()),
        ("HostError", "bad input: 7")
    );
    // The runner goes on, and so does the function that panicked.
    assert_eq!(runner.eval("1 + 1").await.unwrap(), 2);
    assert_eq!(
        runner.call("catch").arg("boom").await.unwrap()[0],
        "HostError"
    );
}

pub async fn an_unknown_name_is_an_attribute_error(builder: PyRunnerBuilder) {
    let runner = builder
        .host_function("known", |_| Ok(Value::Null))
        .build()
        .unwrap();
    runner.run("import async_py").await.unwrap();
    let (kind, message) = python_kind(runner.eval("async_py.host.unknown(1)").await);
    assert_eq!(kind, "AttributeError");
    assert!(
        message.contains("unknown") && message.contains("known"),
        "{message}"
    );
    assert_eq!(
        runner
            .eval("hasattr(async_py.host, 'unknown'), hasattr(async_py.host, 'known')")
            .await
            .unwrap(),
        json!([false, true])
    );
}

pub async fn a_runner_without_host_functions_has_the_module(builder: PyRunnerBuilder) {
    let runner = builder.build().unwrap();
    runner.run("import async_py").await.unwrap();
    assert_eq!(
        runner
            .eval("issubclass(async_py.HostError, Exception)")
            .await
            .unwrap(),
        true
    );
    let (kind, _) = python_kind(runner.eval("async_py.host.anything()").await);
    assert_eq!(kind, "AttributeError");
}

pub async fn progress_arrives_in_order(builder: PyRunnerBuilder) {
    let seen: Arc<Mutex<Vec<f64>>> = Arc::default();
    let record = seen.clone();
    let runner = builder
        .host_function("progress", move |call: HostCall| {
            record.lock().unwrap().push(call.arg(0)?);
            Ok(Value::Null)
        })
        .build()
        .unwrap();
    runner
        .run(
            r#"
import async_py

def work(n):
    total = 0
    for i in range(n):
        total += i
        async_py.host.progress((i + 1) / n)
    return total
"#,
        )
        .await
        .unwrap();
    assert_eq!(runner.call("work").arg(100).await.unwrap(), 4950);
    let expected: Vec<f64> = (1..=100).map(|i| f64::from(i) / 100.0).collect();
    assert_eq!(*seen.lock().unwrap(), expected);
    // From a blocking caller too.
    seen.lock().unwrap().clear();
    let twin = runner.clone();
    let total = tokio::task::spawn_blocking(move || twin.call("work").arg(100).wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(total, 4950);
    assert_eq!(seen.lock().unwrap().len(), 100);
}

pub async fn nested_commands_run_before_the_host_function_returns(builder: PyRunnerBuilder) {
    let runner = builder
        .host_function("ask", |call: HostCall| {
            let x: i64 = call.arg(0)?;
            let runner = call.runner();
            let base = runner
                .eval_sync("base * 2")
                .map_err(|err| err.to_string())?;
            let doubled: i64 = runner
                .call("double")
                .arg(x)
                .returns()
                .wait()
                .map_err(|err| err.to_string())?;
            runner
                .run_sync("seen.append(1)")
                .map_err(|err| err.to_string())?;
            Ok(json!([base, doubled]))
        })
        .host_function("deeper", |call: HostCall| {
            // A nested command that calls a host function that nests again.
            call.runner()
                .eval_sync("async_py.host.ask(4)")
                .map_err(|err| err.to_string())
        })
        .host_function("failing", |call: HostCall| {
            // A nested command's error is the host function's to handle.
            match call.runner().eval_sync("1 / 0") {
                Err(PyRunnerError::Python { kind, .. }) => Ok(json!(kind)),
                other => Err(format!("expected ZeroDivisionError, got {other:?}")),
            }
        })
        .build()
        .unwrap();
    runner
        .run("import async_py\nbase = 21\nseen = []\ndef double(x):\n    return 2 * x")
        .await
        .unwrap();
    let answer = within_10s("a nested command", runner.eval("async_py.host.ask(5)")).await;
    assert_eq!(answer.unwrap(), json!([42, 10]));
    assert_eq!(runner.eval("seen").await.unwrap(), json!([1]));
    let answer = within_10s(
        "two levels of nesting",
        runner.eval("async_py.host.deeper()"),
    )
    .await;
    assert_eq!(answer.unwrap(), json!([42, 8]));
    let answer = within_10s(
        "a failing nested command",
        runner.eval("async_py.host.failing()"),
    )
    .await;
    assert_eq!(answer.unwrap(), "ZeroDivisionError");
    // From a blocking caller, in a function that calls the host function.
    runner
        .run("def outer(x):\n    return async_py.host.ask(x)[1] + 1")
        .await
        .unwrap();
    let twin = runner.clone();
    let answer = within_10s(
        "a nested command under a blocking caller",
        tokio::task::spawn_blocking(move || twin.call("outer").arg(7).returns::<i64>().wait()),
    )
    .await;
    assert_eq!(answer.unwrap().unwrap(), 15);
    assert_eq!(runner.eval("seen").await.unwrap(), json!([1, 1, 1]));
}

pub async fn commands_from_other_clones_wait_for_the_command_that_runs(builder: PyRunnerBuilder) {
    // A host function that is slow: a clone's command sent meanwhile runs
    // after the command that called it, as always.
    let runner = builder
        .host_function("slow", |_| {
            std::thread::sleep(Duration::from_millis(300));
            Ok(Value::Null)
        })
        .build()
        .unwrap();
    runner
        .run("import async_py\norder = []\ndef first():\n    async_py.host.slow()\n    order.append('first')")
        .await
        .unwrap();
    let clone = runner.clone();
    let (first, second) = tokio::join!(runner.call("first").into_future(), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        clone.run("order.append('second')").await
    });
    first.unwrap();
    second.unwrap();
    assert_eq!(
        runner.eval("order").await.unwrap(),
        json!(["first", "second"])
    );
}

pub async fn a_timeout_counts_host_time(builder: PyRunnerBuilder) {
    let runner = builder
        .host_function("sleepy", |_| {
            std::thread::sleep(Duration::from_secs(3));
            Ok(json!("slept"))
        })
        .build()
        .unwrap();
    runner.run("import async_py").await.unwrap();
    let limited = runner.clone().with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let outcome = within_10s(
        "a command past its limit in a host function",
        limited.eval("async_py.host.sleepy()"),
    )
    .await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Timeout(_))),
        "{outcome:?}"
    );
    // The caller hears of it at its limit, not when the host function returns.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The runner goes on, host functions included.
    assert_eq!(runner.eval("2 + 2").await.unwrap(), 4);
    assert_eq!(
        within_10s(
            "a host call after a timeout",
            runner.eval("async_py.host.sleepy()")
        )
        .await
        .unwrap(),
        "slept"
    );
}

/// Async host functions, awaited by coroutines on the runner's loop.
const ASYNC_CODE: &str = r#"
import asyncio, async_py

async def one(x):
    return await async_py.host.slow(x)

async def many(n):
    return await asyncio.gather(*(async_py.host.slow(i) for i in range(n)))

async def catch(name):
    try:
        await getattr(async_py.host, name)()
    except async_py.HostError as e:
        return str(e)
    return "no error"
"#;

/// A builder with the async host functions `ASYNC_CODE` awaits.
fn with_async_functions(builder: PyRunnerBuilder) -> PyRunnerBuilder {
    builder
        .host_async_function("slow", |call: HostCall| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(call.args.first().cloned().unwrap_or(Value::Null))
        })
        .host_async_function("fails", |_| async { Err("async failure".to_string()) })
        .host_async_function("panics", |_| async {
            tokio::task::yield_now().await;
            panic!("async kaboom")
        })
}

pub async fn async_functions_are_awaited(builder: PyRunnerBuilder) {
    let runner = with_async_functions(builder).build().unwrap();
    runner.run(ASYNC_CODE).await.unwrap();
    let one = within_10s(
        "an async host call",
        runner.call("one").arg("x").into_future(),
    )
    .await;
    assert_eq!(one.unwrap(), "x");
    assert_eq!(
        runner
            .eval("asyncio.iscoroutinefunction(async_py.host.slow)")
            .await
            .unwrap(),
        true
    );
    assert_eq!(
        runner.call("catch").arg("fails").await.unwrap(),
        "async failure"
    );
    let panicked = runner.call("catch").arg("panics").await.unwrap();
    let panicked = panicked.as_str().unwrap();
    assert!(
        panicked.contains("panicked") && panicked.contains("async kaboom"),
        "{panicked}"
    );
    assert_eq!(runner.eval("1").await.unwrap(), 1);
}

pub async fn async_functions_overlap(builder: PyRunnerBuilder) {
    let runner = with_async_functions(builder).build().unwrap();
    runner.run(ASYNC_CODE).await.unwrap();
    let started = Instant::now();
    let all = within_10s(
        "20 async host calls",
        runner.call("many").arg(20).into_future(),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(all.unwrap(), json!((0..20).collect::<Vec<_>>()));
    // 20 × 100 ms one after another would take 2 s at least.
    assert!(took < Duration::from_millis(1900), "{took:?}");
    // Other commands run while a coroutine awaits a host function.
    let (slow, quick) = tokio::join!(runner.call("one").arg(1).into_future(), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        runner.eval("'quick'").await
    });
    assert_eq!((slow.unwrap(), quick.unwrap()), (json!(1), json!("quick")));
}

pub async fn nested_commands_from_an_async_function(builder: PyRunnerBuilder) {
    let runner = builder
        .host_async_function("lookup", |call: HostCall| async move {
            let runner = call.runner().clone();
            let base = runner
                .eval("base + 1")
                .await
                .map_err(|err| err.to_string())?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            let doubled = runner
                .call("double")
                .arg(base.clone())
                .await
                .map_err(|err| err.to_string())?;
            Ok(json!([base, doubled]))
        })
        .build()
        .unwrap();
    runner
        .run("import async_py\nbase = 20\ndef double(x):\n    return 2 * x\nasync def go():\n    return await async_py.host.lookup()")
        .await
        .unwrap();
    let answer = within_10s(
        "a nested command from an async host function",
        runner.call("go").into_future(),
    )
    .await;
    assert_eq!(answer.unwrap(), json!([21, 42]));
}

pub async fn a_timeout_drops_an_async_host_future(builder: PyRunnerBuilder) {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let runner = builder
        .host_async_function("forever", move |_| {
            let guard = SetOnDrop(flag.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    runner
        .run("import async_py\nasync def wait():\n    return await async_py.host.forever()")
        .await
        .unwrap();
    let outcome = within_10s(
        "an async host call past its limit",
        runner
            .call("wait")
            .timeout(Duration::from_millis(300))
            .into_future(),
    )
    .await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Timeout(_))),
        "{outcome:?}"
    );
    wait_for(&dropped, "the host function's future was not dropped").await;
    assert_eq!(runner.eval("3").await.unwrap(), 3);
}

pub async fn startup_code_may_call_host_functions_that_send_commands(builder: PyRunnerBuilder) {
    let runner = builder
        .host_function("init", |call: HostCall| {
            call.runner()
                .eval_sync("base * 2")
                .map_err(|err| err.to_string())
        })
        .startup(
            "import async_py
base = 21
ready = async_py.host.init()",
        )
        .build()
        .unwrap();
    assert_eq!(runner.eval("ready").await.unwrap(), 42);
}

pub async fn an_async_function_may_send_commands_before_its_first_await(builder: PyRunnerBuilder) {
    let runner = builder
        .host_async_function("early", |call: HostCall| {
            // The part of the function that runs before its future is
            // polled: a blocking command to the runner that awaits it.
            let seen = call.runner().eval_sync("base");
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                seen.map_err(|err| err.to_string())
            }
        })
        .build()
        .unwrap();
    runner
        .run(
            "import async_py
base = 7
async def go():
    return await async_py.host.early()",
        )
        .await
        .unwrap();
    let answer = within_10s(
        "a command sent as an async host function is made",
        runner.call("go").into_future(),
    )
    .await;
    assert_eq!(answer.unwrap(), 7);
}

/// Not async: `build` fails before anything starts.
pub fn bad_names_fail_build(builder: PyRunnerBuilder) {
    for name in ["not valid", "class", "_private", "1st", ""] {
        let built = builder
            .clone()
            .host_function(name, |_| Ok(Value::Null))
            .build();
        match built {
            Err(PyRunnerError::Startup(why)) => assert!(why.contains("host function"), "{why}"),
            other => panic!("{name:?}: expected a Startup error, got {other:?}"),
        }
    }
    let twice = builder
        .clone()
        .host_function("same", |_| Ok(Value::Null))
        .host_async_function("same", |_| async { Ok(Value::Null) })
        .build();
    assert!(matches!(twice, Err(PyRunnerError::Startup(why)) if why.contains("twice")));
    // A name that is not ASCII is an identifier too.
    let runner = builder
        .host_function("größe", |_| Ok(json!(3)))
        .build()
        .unwrap();
    assert_eq!(
        runner
            .eval_sync("__import__('async_py').host.größe()")
            .unwrap(),
        3
    );
}
