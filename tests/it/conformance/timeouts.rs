//! Per-command limits: the caller gets `Timeout`, the runner recovers.

use std::time::Duration;

use async_py::{PyRunner, PyRunnerError};
use serde_json::json;

const LIMIT: Duration = Duration::from_millis(200);

pub async fn runaway_loop_times_out_and_runner_recovers(runner: PyRunner) {
    let limited = runner.clone().with_timeout(LIMIT);
    assert_eq!(
        limited.run("while True:\n    pass").await,
        Err(PyRunnerError::Timeout(LIMIT))
    );
    assert_eq!(limited.eval("6 * 7").await.unwrap(), json!(42));
    assert_eq!(
        runner.eval("'unlimited handle works too'").await.unwrap(),
        json!("unlimited handle works too")
    );
}

pub async fn timeout_is_not_swallowed_by_except_exception(runner: PyRunner) {
    let limited = runner.with_timeout(LIMIT);
    let code = "caught = 0\nwhile True:\n    try:\n        while True:\n            pass\n    except Exception:\n        caught += 1\n";
    assert_eq!(limited.run(code).await, Err(PyRunnerError::Timeout(LIMIT)));
    assert_eq!(limited.eval("1").await.unwrap(), json!(1));
}

pub async fn blocking_call_past_its_limit_does_not_poison_the_next_command(runner: PyRunner) {
    let limited = runner.with_timeout(LIMIT);
    limited.run("import time").await.unwrap();
    assert_eq!(
        limited.call_function("time.sleep", vec![json!(0.5)]).await,
        Err(PyRunnerError::Timeout(LIMIT))
    );
    for i in 0..20 {
        assert_eq!(
            limited.eval(&format!("{i} + 1")).await.unwrap(),
            json!(i + 1)
        );
    }
    limited.run("after = 'fine'").await.unwrap();
    assert_eq!(limited.read_variable("after").await.unwrap(), json!("fine"));
}

pub async fn coroutine_past_its_limit_times_out(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    let limited = runner.with_timeout(LIMIT);
    limited
        .run("import asyncio\nasync def slow():\n    await asyncio.sleep(30)\nasync def quick():\n    return 'quick'")
        .await
        .unwrap();
    assert_eq!(
        limited.call_async_function("slow", vec![]).await,
        Err(PyRunnerError::Timeout(LIMIT))
    );
    assert_eq!(
        limited.call_async_function("quick", vec![]).await.unwrap(),
        json!("quick")
    );
}

pub async fn handles_keep_their_own_limits(runner: PyRunner) {
    let limited = runner.clone().with_timeout(LIMIT);
    assert!(matches!(
        limited.eval("[i for i in iter(int, 1)]").await,
        Err(PyRunnerError::Timeout(_))
    ));
    // The handle without a limit lets a command run longer than LIMIT.
    runner.run("import time\ntime.sleep(0.3)").await.unwrap();
    assert_eq!(runner.eval("'done'").await.unwrap(), json!("done"));
}

/// A coroutine that keeps the loop (no await for a second), or that
/// catches its cancellation and goes on, ends past its limit: its caller
/// gets `Timeout`, not the late result. One that unwinds slowly after its
/// cancellation has unwound when its caller hears. The runner goes on.
pub async fn a_coroutine_past_its_limit_is_a_timeout_however_it_ends(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    let limited = runner.clone().with_timeout(LIMIT);
    runner
        .run(
            "import asyncio, time\n\
             unwound = False\n\
             async def busy():\n    end = time.monotonic() + 1\n    while time.monotonic() < end:\n        pass\n    return 'busy done'\n\
             async def stubborn():\n    try:\n        await asyncio.sleep(30)\n    except asyncio.CancelledError:\n        await asyncio.sleep(0.5)\n    return 'stubborn done'\n\
             async def slow_to_unwind():\n    global unwound\n    try:\n        await asyncio.sleep(30)\n    finally:\n        await asyncio.sleep(0.6)\n        unwound = True",
        )
        .await
        .unwrap();
    for name in ["busy", "stubborn", "slow_to_unwind"] {
        assert_eq!(
            limited.call_async_function(name, vec![]).await,
            Err(PyRunnerError::Timeout(LIMIT)),
            "{name}"
        );
    }
    assert_eq!(runner.eval("unwound").await.unwrap(), json!(true));
}

/// A coroutine's limit counts from when it starts, not while it waits
/// behind a slow command sent with it.
pub async fn a_coroutine_limit_counts_from_its_start(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    let limited = runner.clone().with_timeout(Duration::from_millis(500));
    runner
        .run("import time\nasync def quick():\n    return 'quick'")
        .await
        .unwrap();
    let (slow, quick) = tokio::join!(
        runner.run("time.sleep(1)"),
        limited.call_async_function("quick", vec![])
    );
    slow.unwrap();
    assert_eq!(quick.unwrap(), json!("quick"));
}

/// Every limit a user can give is taken without a panic: zero times each
/// command out without running it, one past what the clock can hold is no
/// limit, and the runner works on with either. `stop` ignores the limit.
pub async fn limits_of_any_size_never_panic(runner: PyRunner) {
    let coroutines = crate::conformance::runs_coroutines(&runner).await;
    runner
        .run("ran = 0\ndef bump():\n    global ran\n    ran += 1\n    return ran\nasync def abump():\n    return bump()")
        .await
        .unwrap();
    for limit in [
        Duration::MAX,
        Duration::from_secs(u64::MAX),
        Duration::new(u64::MAX / 2, 7),
    ] {
        let limited = runner.clone().with_timeout(limit);
        assert_eq!(limited.eval("1 + 1").await.unwrap(), json!(2), "{limit:?}");
        limited.run("bump()").await.unwrap();
        limited.call_function("bump", vec![]).await.unwrap();
        if coroutines {
            limited.call_async_function("abump", vec![]).await.unwrap();
        }
    }
    let before = runner.read_variable("ran").await.unwrap();
    let zero = runner.clone().with_timeout(Duration::ZERO);
    let timed_out = Err(PyRunnerError::Timeout(Duration::ZERO));
    assert_eq!(zero.eval("bump()").await, timed_out);
    assert_eq!(zero.run("bump()").await, timed_out.clone().map(drop));
    assert_eq!(zero.call_function("bump", vec![]).await, timed_out);
    assert_eq!(zero.call_async_function("abump", vec![]).await, timed_out);
    assert_eq!(zero.read_variable("ran").await, timed_out);
    assert_eq!(
        runner.read_variable("ran").await.unwrap(),
        before,
        "nothing ran under a zero limit"
    );
    // A nanosecond may or may not be enough; either way nothing breaks.
    let tiny = runner.clone().with_timeout(Duration::from_nanos(1));
    for _ in 0..20 {
        match tiny.call_function("bump", vec![]).await {
            Ok(_) | Err(PyRunnerError::Timeout(_)) => {}
            Err(other) => panic!("a 1 ns limit gave {other:?}"),
        }
    }
    assert_eq!(runner.eval("40 + 2").await.unwrap(), json!(42));
    zero.stop().await.expect("stop is not limited");
    assert_eq!(runner.eval("1").await, Err(PyRunnerError::Stopped));
}
