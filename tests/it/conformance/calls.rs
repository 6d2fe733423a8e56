//! The call builder: keyword arguments, serde values both ways, real bytes,
//! awaited results, per-call limits and cancellation.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_py::{Backend, PyRunner, PyRunnerError};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use serde_json::{json, Value};

const FUNCTIONS: &str = r#"
def describe(a, b=2, *rest, c, d=4, **more):
    return {"a": a, "b": b, "rest": list(rest), "c": c, "d": d, "more": more}

def add(a, b):
    return a + b

def echo(x):
    return x

def kind(x):
    return type(x).__name__

def nested_kinds(x):
    return {k: type(v).__name__ for k, v in x.items()}
"#;

async fn with_functions(runner: &PyRunner) {
    runner.run(FUNCTIONS).await.unwrap();
}

pub async fn kwargs_fill_defaults_and_keyword_only_parameters(runner: PyRunner) {
    with_functions(&runner).await;
    let got = runner.call("describe").arg(1).kwarg("c", 3).await.unwrap();
    assert_eq!(
        got,
        json!({"a": 1, "b": 2, "rest": [], "c": 3, "d": 4, "more": {}})
    );
    let got = runner
        .call("describe")
        .args((1, "two", 3.5, [4]))
        .kwarg("c", "see")
        .kwargs(json!({"d": null, "extra": {"k": [true]}}))
        .await
        .unwrap();
    assert_eq!(
        got,
        json!({"a": 1, "b": "two", "rest": [3.5, [4]], "c": "see", "d": null,
               "more": {"extra": {"k": [true]}}})
    );
    // `()` adds no arguments; a missing keyword-only one is Python's own TypeError.
    let missing = runner.call("describe").arg(1).args(()).await;
    match missing {
        Err(PyRunnerError::Python { kind, message, .. }) => {
            assert_eq!(kind, "TypeError");
            assert!(message.contains("'c'"), "{message}");
        }
        other => panic!("expected TypeError, got {other:?}"),
    }
    // A keyword the function does not take: Python's TypeError again.
    match runner.call("add").arg(1).kwarg("c", 2).await {
        Err(PyRunnerError::Python { kind, message, .. }) => {
            assert_eq!(kind, "TypeError");
            assert!(message.contains("'c'"), "{message}");
        }
        other => panic!("expected TypeError, got {other:?}"),
    }
    // The runner goes on.
    assert_eq!(runner.call("add").args((2, 3)).await.unwrap(), json!(5));
}

#[derive(Serialize)]
struct Options {
    c: &'static str,
    d: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Level {
    Low,
    High,
}

pub async fn a_struct_gives_one_keyword_argument_per_field(runner: PyRunner) {
    with_functions(&runner).await;
    let options = Options {
        c: "x",
        d: vec![1, 2],
        skipped: None,
    };
    let got = runner
        .call("describe")
        .arg(&Level::High)
        .kwargs(&options)
        .await
        .unwrap();
    assert_eq!(
        got,
        json!({"a": "high", "b": 2, "rest": [], "c": "x", "d": [1, 2], "more": {}})
    );
    let map: HashMap<&str, i32> = [("a", 1), ("c", 3)].into();
    let got = runner.call("describe").kwargs(&map).await.unwrap();
    assert_eq!(got["a"], json!(1));
    assert_eq!(got["c"], json!(3));
}

#[derive(Deserialize, Debug, PartialEq)]
struct Person {
    name: String,
    age: u32,
    tags: Vec<String>,
    score: Option<f64>,
}

pub async fn typed_results_read_into_serde_types(runner: PyRunner) {
    with_functions(&runner).await;
    runner
        .run(
            "import dataclasses, datetime\n\
             @dataclasses.dataclass\nclass P:\n    name: str\n    age: int\n    tags: list\n    score: float\n\
             def people():\n    return [P('ann', 31, ['a'], 1.5), {'name': 'bob', 'age': 40, 'tags': (), 'score': float('nan')}]\n\
             def when():\n    return datetime.date(2024, 5, 17)\n\
             def counts():\n    return {1: 'one', 2: 'two'}\n",
        )
        .await
        .unwrap();
    let people: Vec<Person> = runner.call("people").returns().await.unwrap();
    assert_eq!(
        people,
        [
            Person {
                name: "ann".into(),
                age: 31,
                tags: vec!["a".into()],
                score: Some(1.5)
            },
            Person {
                name: "bob".into(),
                age: 40,
                tags: vec![],
                score: None
            },
        ]
    );
    let sum: i64 = runner
        .call("add")
        .args((40, 2))
        .returns::<i64>()
        .await
        .unwrap();
    assert_eq!(sum, 42);
    let when: String = runner.call("when").returns().await.unwrap();
    assert_eq!(when, "2024-05-17");
    let counts: HashMap<String, String> = runner.call("counts").returns().await.unwrap();
    assert_eq!(counts["1"], "one");
    // Keys the table made text are read back as numbers where asked.
    let counts: HashMap<u32, String> = runner.call("counts").returns().await.unwrap();
    assert_eq!(counts[&2], "two");
    let level: Level = runner.call("echo").arg("low").returns().await.unwrap();
    assert_eq!(level, Level::Low);
    let unit: () = runner.call("echo").arg(()).returns().await.unwrap();
    assert_eq!(unit, ());
}

pub async fn a_result_that_does_not_fit_names_where(runner: PyRunner) {
    with_functions(&runner).await;
    let wrong = runner
        .call("echo")
        .arg(json!([
            {"name": "a", "age": 1, "tags": [], "score": null},
            {"name": "b", "age": "old", "tags": [], "score": null}
        ]))
        .returns::<Vec<Person>>()
        .await;
    match wrong {
        Err(PyRunnerError::Conversion(message)) => {
            assert!(
                message.starts_with("[1].age: invalid type: string"),
                "{message}"
            );
            assert!(message.contains("u32"), "{message}");
        }
        other => panic!("expected a Conversion error, got {other:?}"),
    }
    let top = runner.call("echo").arg("x").returns::<u8>().await;
    assert!(
        matches!(&top, Err(PyRunnerError::Conversion(m)) if m.starts_with("invalid type: string")),
        "{top:?}"
    );
    // Python ints past 64 bits stay a Conversion error, typed or not.
    runner.run("def big():\n    return 2 ** 70").await.unwrap();
    let big = runner.call("big").returns::<u64>().await;
    assert!(
        matches!(&big, Err(PyRunnerError::Conversion(m)) if m.contains("71 bits")),
        "{big:?}"
    );
    assert_eq!(runner.call("add").args((1, 1)).await.unwrap(), json!(2));
}

pub async fn arguments_that_cannot_cross_name_themselves(runner: PyRunner) {
    with_functions(&runner).await;
    let cases: Vec<(Result<Value, PyRunnerError>, &str)> = vec![
        (
            runner.call("echo").arg(1).arg(u128::MAX).await,
            "argument 2: int of 128 bits",
        ),
        (
            runner.call("echo").args(5).await,
            "args: args takes a tuple, array or Vec",
        ),
        (
            runner.call("echo").kwargs([1, 2]).await,
            "kwargs: kwargs takes a map or a struct",
        ),
        (
            runner.call("echo").kwargs(HashMap::from([(1, 2)])).await,
            "kwargs: keyword argument names must be strings",
        ),
        (
            runner.call("echo").kwarg("x", 1).kwarg("x", 2).await,
            "keyword argument 'x' given twice",
        ),
        (
            runner
                .call("echo")
                .kwarg("x", 1)
                .kwargs(json!({"x": 2}))
                .await,
            "keyword argument 'x' given twice",
        ),
    ];
    for (got, expected) in cases {
        match got {
            Err(PyRunnerError::Conversion(message)) => {
                assert!(message.starts_with(expected), "{message:?} / {expected:?}")
            }
            other => panic!("expected Conversion {expected:?}, got {other:?}"),
        }
    }
    // Map keys Python can hash cross; a sequence as a key fails here, on
    // every backend, and the runner (or its child) goes on.
    let keyed = runner
        .call("nested_kinds")
        .arg(HashMap::from([(7, "x")]))
        .await
        .unwrap();
    assert_eq!(keyed, json!({"7": "str"}));
    let unhashable = runner
        .call("echo")
        .arg(HashMap::from([((1, 2), "a")]))
        .await;
    assert!(
        matches!(&unhashable, Err(PyRunnerError::Conversion(m)) if m.starts_with("argument 1: a map key that is a sequence")),
        "{unhashable:?}"
    );
    assert_eq!(runner.call("add").args((1, 2)).await.unwrap(), json!(3));
    // i128 and u128 that fit 64 bits are ints.
    assert_eq!(
        runner
            .call("add")
            .args((-5i128, 7u128))
            .returns::<i64>()
            .await
            .unwrap(),
        2
    );
}

pub async fn bytes_cross_as_bytes_both_ways(runner: PyRunner) {
    with_functions(&runner).await;
    let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let buf = ByteBuf::from(data.clone());
    assert_eq!(runner.call("kind").arg(&buf).await.unwrap(), json!("bytes"));
    let echoed: ByteBuf = runner.call("echo").arg(&buf).returns().await.unwrap();
    assert!(echoed == buf, "8 MiB came back changed");
    let echoed: bytes::Bytes = runner
        .call("echo")
        .arg(bytes::Bytes::from(data[..1000].to_vec()))
        .returns()
        .await
        .unwrap();
    assert_eq!(&echoed[..], &data[..1000]);
    // Nested, and from each of Python's byte types.
    let kinds = runner
        .call("nested_kinds")
        .arg(json!({"plain": [1, 2]}))
        .await
        .unwrap();
    assert_eq!(kinds, json!({"plain": "list"}));
    #[derive(Serialize)]
    struct Blob<'a> {
        #[serde(with = "serde_bytes")]
        raw: &'a [u8],
        list: Vec<u8>,
    }
    let kinds = runner
        .call("nested_kinds")
        .arg(&Blob {
            raw: b"\x00\xff",
            list: vec![1],
        })
        .await
        .unwrap();
    assert_eq!(kinds, json!({"raw": "bytes", "list": "list"}));
    runner
        .run("def byte_kinds():\n    return [b'ab', bytearray(b'cd'), memoryview(b'ef'), {'k': b'\\xff'}]")
        .await
        .unwrap();
    #[derive(Deserialize)]
    struct Keyed {
        k: ByteBuf,
    }
    let (a, b, c, keyed): (ByteBuf, ByteBuf, Vec<u8>, Keyed) =
        runner.call("byte_kinds").returns().await.unwrap();
    assert_eq!(
        (&a[..], &b[..], &c[..], &keyed.k[..]),
        (&b"ab"[..], &b"cd"[..], &b"ef"[..], &b"\xff"[..])
    );
    // Only a `Value` result turns bytes into the table's numbers.
    let value = runner
        .call("echo")
        .arg(ByteBuf::from(vec![0, 255]))
        .await
        .unwrap();
    assert_eq!(value, json!([0, 255]));
}

pub async fn awaitable_results_are_awaited_on_the_runner_s_loop(runner: PyRunner) {
    with_functions(&runner).await;
    runner
        .run(
            "import asyncio\n\
             async def slow_add(a, b, *, delay=0.0):\n    await asyncio.sleep(delay)\n    return a + b\n\
             def make_future():\n    fut = asyncio.get_event_loop().create_future()\n    fut.get_loop().call_later(0.01, fut.set_result, b'done')\n    return fut\n\
             gate = None\n\
             async def wait_at_gate():\n    global gate\n    gate = gate or asyncio.Event()\n    await gate.wait()\n    return 'passed'\n\
             def open_gate():\n    global gate\n    gate = gate or asyncio.Event()\n    gate.set()\n    return 'opened'\n",
        )
        .await
        .unwrap();
    let sum = runner
        .call("slow_add")
        .args((1, 2))
        .kwarg("delay", 0.01)
        .returns::<i64>()
        .await;
    if runner.backend() == Backend::RustPython {
        match sum {
            Err(PyRunnerError::Unsupported(message)) => {
                assert!(message.contains("slow_add"), "{message}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        return;
    }
    assert_eq!(sum.unwrap(), 3);
    // The call's limit holds for the coroutine its function returned.
    let started = Instant::now();
    let slow = runner
        .call("slow_add")
        .args((1, 2))
        .kwarg("delay", 30.0)
        .timeout(Duration::from_millis(200))
        .await;
    assert_eq!(
        slow,
        Err(PyRunnerError::Timeout(Duration::from_millis(200)))
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let done: ByteBuf = runner.call("make_future").returns().await.unwrap();
    assert_eq!(&done[..], b"done");
    // Overlapping: the waiter only passes if the opener runs meanwhile.
    let runner = runner.with_timeout(Duration::from_secs(10));
    let waiting = runner.call("wait_at_gate").returns::<String>();
    let opening = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        runner.call("open_gate").returns::<String>().await
    };
    let (waited, opened) = tokio::join!(waiting, opening);
    assert_eq!(waited.unwrap(), "passed");
    assert_eq!(opened.unwrap(), "opened");
}

pub async fn a_generator_result_says_to_use_stream(runner: PyRunner) {
    runner
        .run(
            "def numbers():\n    yield 1\n\
             async def anumbers():\n    yield 1\n",
        )
        .await
        .unwrap();
    for name in ["numbers", "anumbers"] {
        match runner.call(name).await {
            Err(PyRunnerError::Conversion(message)) => {
                assert!(message.contains(".stream()"), "{message}");
                assert!(message.contains(name), "{message}");
            }
            other => panic!("expected a Conversion error for {name}, got {other:?}"),
        }
    }
    // The seed's call_function keeps the value table's answer.
    let text = runner.call_function("numbers", vec![]).await.unwrap();
    assert!(text.as_str().unwrap().contains("generator"), "{text}");
}

pub async fn a_call_s_limit_overrides_the_runner_s(runner: PyRunner) {
    runner
        .run("import time\ndef spin():\n    while True:\n        pass\ndef nap(s):\n    time.sleep(s)\n    return s")
        .await
        .unwrap();
    let started = Instant::now();
    let spun = runner
        .call("spin")
        .timeout(Duration::from_millis(200))
        .await;
    assert_eq!(
        spun,
        Err(PyRunnerError::Timeout(Duration::from_millis(200)))
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // A handle's short limit gives way to a call's longer one, and back.
    let limited = runner.clone().with_timeout(Duration::from_millis(100));
    let napped = limited
        .call("nap")
        .arg(0.3)
        .timeout(Duration::from_secs(30))
        .returns::<f64>()
        .await;
    assert_eq!(napped, Ok(0.3));
    let short = limited.call("nap").arg(0.5).await;
    assert_eq!(
        short,
        Err(PyRunnerError::Timeout(Duration::from_millis(100)))
    );
    let zero = runner.call("nap").arg(0).timeout(Duration::ZERO).await;
    assert_eq!(zero, Err(PyRunnerError::Timeout(Duration::ZERO)));
    // exec is `run` with the same option.
    let looped = runner
        .exec("while True:\n    pass")
        .timeout(Duration::from_millis(200))
        .await;
    assert_eq!(
        looped,
        Err(PyRunnerError::Timeout(Duration::from_millis(200)))
    );
    runner.exec("after = 1").await.unwrap();
    assert_eq!(runner.eval("after").await.unwrap(), json!(1));
}

pub async fn a_dropped_call_cancels_its_coroutine(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    let runner = runner.with_timeout(Duration::from_secs(20));
    runner
        .run(
            "import asyncio\n\
             cleaned = []\nstarted = []\n\
             async def hold(tag):\n    started.append(tag)\n    try:\n        await asyncio.sleep(3600)\n    finally:\n        cleaned.append(tag)\n\
             def pending():\n    loop = asyncio.get_event_loop()\n    return sum(1 for t in asyncio.all_tasks(loop) if not t.done())\n",
        )
        .await
        .unwrap();
    for (tag, builder) in [("call", true), ("call_async_function", false)] {
        let call = async {
            if builder {
                runner.call("hold").arg(tag).await
            } else {
                runner.call_async_function("hold", vec![json!(tag)]).await
            }
        };
        // Dropped once the coroutine has started.
        let watch = async {
            loop {
                let started = runner.eval("started").await.unwrap();
                if started.as_array().unwrap().contains(&json!(tag)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            reply = call => panic!("the call ended: {reply:?}"),
            () = watch => {}
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let cleaned = runner.eval("cleaned").await.unwrap();
            if cleaned.as_array().unwrap().contains(&json!(tag)) {
                break;
            }
            assert!(Instant::now() < deadline, "{tag}: its finally never ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(runner.call("pending").await.unwrap(), json!(0), "{tag}");
    }
    // A call queued behind a running one, dropped before it starts, never starts.
    runner.run("import time").await.unwrap();
    let napping = runner.run("time.sleep(0.5)");
    let queued = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            runner.call("hold").arg("queued").into_future(),
        )
        .await;
        assert!(gave_up.is_err(), "the queued call ended: {gave_up:?}");
    };
    let (napped, ()) = tokio::join!(napping, queued);
    napped.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        runner.eval("started").await.unwrap(),
        json!(["call", "call_async_function"])
    );
    assert_eq!(runner.call("pending").await.unwrap(), json!(0));
}

/// The blocking twin, from a plain thread and from inside runtimes.
pub fn wait_is_safe_in_any_context(runner: PyRunner) {
    runner.run_sync(FUNCTIONS).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let runner = runner.clone();
            std::thread::spawn(move || {
                for i in 0..50i64 {
                    let sum: i64 = runner.call("add").args((t, i)).returns().wait().unwrap();
                    assert_eq!(sum, t + i);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    for runtime in [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ] {
        runtime.block_on(async {
            let got: String = runner.call("echo").arg("inside").returns().wait().unwrap();
            assert_eq!(got, "inside");
            runner.exec("inside = True").wait().unwrap();
        });
    }
    assert_eq!(runner.eval_sync("inside").unwrap(), json!(true));
}

/// A call's future can be spawned: it is `Send`, as every command's is.
#[allow(dead_code)]
fn call_futures_are_send(runner: &PyRunner) {
    fn send<T: Send>(_: T) {}
    send(runner.call("f").arg(1).returns::<u8>().into_future());
    send(runner.exec("x = 1").into_future());
}
