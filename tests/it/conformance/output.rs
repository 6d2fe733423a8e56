//! Output: captured per command (`capture_output`), on every backend; and
//! routed line by line to `on_output`, for which each backend's module
//! invokes `output_suite!` with its builder.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_py::{Backend, OutputLine, OutputStream, PyRunner, PyRunnerBuilder, PyRunnerError};
use serde_json::json;

/// The marker line of a stream cut at the cap (16 MiB).
const CUT_MARKER: &str = "[async_py: output cut at 16777216 bytes]\n";

const FUNCTIONS: &str = r#"
import sys

def chatty(a, b):
    print("adding", a, "and", b)
    sys.stderr.write("to stderr\n")
    return a + b

def failing():
    print("before the error")
    raise ValueError("no")

def quiet():
    return "quiet"
"#;

pub async fn a_call_captures_print_and_stderr_and_keeps_its_value(runner: PyRunner) {
    runner.run(FUNCTIONS).await.unwrap();
    let captured = runner
        .call("chatty")
        .args((2, 3))
        .capture_output()
        .await
        .unwrap();
    assert_eq!(captured.value, json!(5));
    assert_eq!(captured.stdout, "adding 2 and 3\n");
    assert_eq!(captured.stderr, "to stderr\n");
    // Typed, and by the blocking twin.
    let captured = runner
        .call("chatty")
        .args((1, 1))
        .returns::<u32>()
        .capture_output()
        .await
        .unwrap();
    assert_eq!(
        (captured.value, captured.stdout.as_str()),
        (2, "adding 1 and 1\n")
    );
    let twin = runner.clone();
    let captured = tokio::task::spawn_blocking(move || {
        twin.call("quiet")
            .returns::<String>()
            .capture_output()
            .wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(captured.value, "quiet");
    assert_eq!(
        (captured.stdout.as_str(), captured.stderr.as_str()),
        ("", "")
    );
}

pub async fn an_exec_captures_its_output(runner: PyRunner) {
    let captured = runner
        .exec("import sys\nprint('one')\nprint('two', end='')\nsys.stderr.write('err')\nkept = 7")
        .capture_output()
        .await
        .unwrap();
    assert_eq!(captured.value, ());
    assert_eq!(captured.stdout, "one\ntwo");
    assert_eq!(captured.stderr, "err");
    // What it defined stays, as a run's does.
    assert_eq!(runner.eval("kept").await.unwrap(), json!(7));
    let runner2 = runner.clone();
    let captured = tokio::task::spawn_blocking(move || {
        runner2
            .exec("print('from the twin')")
            .capture_output()
            .wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(captured.stdout, "from the twin\n");
}

pub async fn a_captured_command_that_fails_returns_its_error(runner: PyRunner) {
    runner.run(FUNCTIONS).await.unwrap();
    match runner.call("failing").capture_output().await {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "ValueError"),
        other => panic!("expected the ValueError, got {other:?}"),
    }
    match runner.exec("print('x')\n1/0").capture_output().await {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "ZeroDivisionError"),
        other => panic!("expected the ZeroDivisionError, got {other:?}"),
    }
    // The runner goes on, and the next capture holds only its own output.
    let captured = runner.call("chatty").args((0, 0)).capture_output().await;
    assert_eq!(captured.unwrap().stdout, "adding 0 and 0\n");
}

pub async fn uncaptured_commands_are_unaffected(runner: PyRunner) {
    runner.run(FUNCTIONS).await.unwrap();
    // Plain commands around captured ones answer as before, and their
    // output is in no capture.
    assert_eq!(runner.call("chatty").args((1, 2)).await.unwrap(), json!(3));
    let captured = runner.call("quiet").capture_output().await.unwrap();
    assert_eq!(
        (captured.stdout.as_str(), captured.stderr.as_str()),
        ("", "")
    );
    runner.run("print('plain run')").await.unwrap();
    assert_eq!(
        runner
            .call_function("chatty", vec![json!(1), json!(1)])
            .await
            .unwrap(),
        json!(2)
    );
    let captured = runner.exec("print('mine')").capture_output().await.unwrap();
    assert_eq!(captured.stdout, "mine\n");
    // sys.stdout still works as a stream for code that asks it things.
    assert_eq!(
        runner
            .eval("(sys.stdout.write('') , callable(sys.stdout.flush))[1]")
            .await
            .unwrap(),
        json!(true)
    );
}

pub async fn two_captured_coroutines_keep_their_own_output(runner: PyRunner) {
    runner
        .run(
            "import asyncio\n\
             async def talk(tag, turns):\n    for i in range(turns):\n        print(tag, i)\n        await asyncio.sleep(0.01)\n    return tag\n",
        )
        .await
        .unwrap();
    if runner.backend() == Backend::RustPython {
        match runner.call("talk").args(("a", 1)).capture_output().await {
            Err(PyRunnerError::Unsupported(_)) => return,
            other => panic!("expected Unsupported on RustPython, got {other:?}"),
        }
    }
    let (a, b) = tokio::join!(
        runner
            .call("talk")
            .args(("a", 5))
            .capture_output()
            .into_future(),
        runner
            .call("talk")
            .args(("b", 5))
            .capture_output()
            .into_future(),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.value, json!("a"));
    assert_eq!(a.stdout, "a 0\na 1\na 2\na 3\na 4\n");
    assert_eq!(b.stdout, "b 0\nb 1\nb 2\nb 3\nb 4\n");
    // A coroutine's output, sync part and awaited part together.
    runner
        .run(
            "async def later():\n    print('awaited')\n    return 1\n\
             def starts():\n    print('called')\n    return later()\n",
        )
        .await
        .unwrap();
    let both = runner.call("starts").capture_output().await.unwrap();
    assert_eq!(both.stdout, "called\nawaited\n");
}

pub async fn a_flood_is_cut_at_the_cap_and_the_runner_answers_after(runner: PyRunner) {
    let runner = runner.with_timeout(Duration::from_secs(120));
    // 40 MiB through sys.stdout, 1 MiB at a time, and a little to stderr.
    let captured = runner
        .exec(
            "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(40):\n    sys.stdout.write(chunk)\n\
             sys.stderr.write('small\\n')\ndel chunk",
        )
        .capture_output()
        .await
        .unwrap();
    let cap = 16 << 20;
    assert!(captured.stdout.ends_with(CUT_MARKER), "the cut is marked");
    let kept = &captured.stdout[..captured.stdout.len() - CUT_MARKER.len()];
    assert_eq!(kept.trim_end_matches('\n').len(), cap);
    assert!(kept.trim_end_matches('\n').bytes().all(|b| b == b'x'));
    assert_eq!(captured.stderr, "small\n");
    // A cut in the middle of a character keeps whole characters only.
    let captured = runner
        .exec("import sys\nsys.stdout.write('a' + '\u{e9}' * (9 << 20))")
        .capture_output()
        .await
        .unwrap();
    let kept = captured.stdout.strip_suffix(CUT_MARKER).unwrap();
    let kept = kept.strip_suffix('\n').unwrap();
    assert!(kept.len() <= cap && kept.len() > cap - 4, "{}", kept.len());
    assert!(kept[1..].chars().all(|c| c == '\u{e9}'));
    // The runner answers after, and captures the next command afresh.
    let captured = runner
        .exec("print('after')")
        .capture_output()
        .await
        .unwrap();
    assert_eq!(captured.stdout, "after\n");
    assert_eq!(runner.eval("1 + 1").await.unwrap(), json!(2));
}

/// `on_output` on one backend: each test gets a builder of that backend.
pub type Lines = Arc<Mutex<Vec<OutputLine>>>;

pub fn collecting(builder: PyRunnerBuilder) -> (PyRunner, Lines) {
    let lines: Lines = Arc::default();
    let kept = lines.clone();
    let runner = builder
        .on_output(move |line| kept.lock().unwrap().push(line))
        .build()
        .expect("the runner starts");
    (runner, lines)
}

fn line(stream: OutputStream, text: &str) -> OutputLine {
    OutputLine {
        stream,
        text: text.to_owned(),
    }
}

pub async fn lines_reach_the_callback_with_their_stream(builder: PyRunnerBuilder) {
    let (runner, lines) = collecting(builder);
    runner
        .run(
            "import sys\nprint('one')\nprint('two', file=sys.stderr)\n\
             sys.stdout.write('three\\nfour\\n')\nprint('')\nsys.stdout.write('fi')\nsys.stdout.write('ve\\n')\n\
             sys.stdout.write('six\\nsev')\nsys.stdout.write('en\\n')\n\
             sys.stderr.write('x')\nsys.stdout.write('y\\n')\nsys.stderr.write('z\\n')",
        )
        .await
        .unwrap();
    use OutputStream::{Stderr, Stdout};
    assert_eq!(
        *lines.lock().unwrap(),
        vec![
            line(Stdout, "one"),
            line(Stderr, "two"),
            line(Stdout, "three"),
            line(Stdout, "four"),
            line(Stdout, ""),
            line(Stdout, "five"),
            line(Stdout, "six"),
            line(Stdout, "seven"),
            line(Stdout, "y"),
            line(Stderr, "xz"),
        ]
    );
    runner.stop().await.unwrap();
}

pub async fn a_captured_command_s_output_does_not_reach_the_callback(builder: PyRunnerBuilder) {
    let (runner, lines) = collecting(builder);
    let captured = runner
        .exec("import sys\nprint('kept')\nprint('also kept', file=sys.stderr)")
        .capture_output()
        .await
        .unwrap();
    assert_eq!(captured.stdout, "kept\n");
    assert_eq!(captured.stderr, "also kept\n");
    runner.run("print('routed')").await.unwrap();
    runner.stop().await.unwrap();
    assert_eq!(
        *lines.lock().unwrap(),
        vec![line(OutputStream::Stdout, "routed")]
    );
}

pub async fn a_long_line_arrives_in_capped_pieces(builder: PyRunnerBuilder) {
    // 100 MiB without a newline, written 64 KiB at a time: the callback
    // keeps only sizes, so what the test holds stays small too.
    let pieces = Arc::new(Mutex::new(Vec::<usize>::new()));
    let kept = pieces.clone();
    let runner = builder
        .timeout(Duration::from_secs(300))
        .on_output(move |line| kept.lock().unwrap().push(line.text.len()))
        .build()
        .unwrap();
    runner
        .run("import sys\nchunk = 'y' * 65536\nfor _ in range(1600):\n    sys.stdout.write(chunk)\ndel chunk")
        .await
        .unwrap();
    runner.stop().await.unwrap();
    let pieces = pieces.lock().unwrap();
    assert_eq!(pieces.iter().sum::<usize>(), 100 << 20);
    assert!(pieces.iter().all(|&size| size <= 64 << 10), "capped pieces");
    assert!(pieces.len() >= 1600);
}

pub async fn nothing_is_lost_at_stop(builder: PyRunnerBuilder) {
    let (runner, lines) = collecting(builder);
    let ran =
        runner.run("import sys\nfor i in range(2000):\n    print(i)\nsys.stdout.write('tail')");
    let stopping = runner.stop();
    let (ran, stopped) = tokio::join!(ran, stopping);
    ran.unwrap();
    stopped.unwrap();
    let lines = lines.lock().unwrap();
    assert_eq!(lines.len(), 2001);
    assert_eq!(lines[1999].text, "1999");
    assert_eq!(
        lines[2000].text, "tail",
        "a partial line ends with its command"
    );
}

pub async fn a_reply_comes_after_its_output(builder: PyRunnerBuilder) {
    let counted = Arc::new(AtomicUsize::new(0));
    let counter = counted.clone();
    let runner = builder
        .on_output(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    runner
        .run("import sys\ndef shout(n):\n    for i in range(n):\n        print('line', i)\n    sys.stdout.write('no newline')\n    return n")
        .await
        .unwrap();
    let mut expected = 0;
    for n in [1, 10, 300] {
        assert_eq!(runner.call("shout").arg(n).await.unwrap(), json!(n));
        expected += n + 1;
        assert_eq!(counted.load(Ordering::SeqCst), expected);
    }
    runner.stop().await.unwrap();
}

pub async fn a_panicking_callback_loses_only_its_line(builder: PyRunnerBuilder) {
    let lines: Lines = Arc::default();
    let kept = lines.clone();
    let runner = builder
        .on_output(move |line| {
            if line.text == "boom" {
                panic!("the callback refuses this line");
            }
            kept.lock().unwrap().push(line);
        })
        .build()
        .unwrap();
    runner
        .run("print('before')\nprint('boom')\nprint('after')")
        .await
        .unwrap();
    assert_eq!(runner.eval("40 + 2").await.unwrap(), json!(42));
    runner.run("print('later')").await.unwrap();
    runner.stop().await.unwrap();
    let texts: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.text.clone())
        .collect();
    assert_eq!(texts, ["before", "after", "later"]);
}
