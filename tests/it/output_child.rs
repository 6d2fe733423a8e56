//! Output through a child: what only a child can capture (writes to its
//! fds, processes it starts), its fd-level lines on `on_output`, a
//! captured exec replayed in a fresh child, and a pool's output.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_py::{OutputLine, OutputStream, PyRunnerError};
use serde_json::json;

use crate::conformance::output::Lines;

fn collecting() -> (async_py::PyRunner, Lines) {
    let lines: Lines = Arc::default();
    let kept = lines.clone();
    let runner = crate::subprocess::builder()
        .on_output(move |line| kept.lock().unwrap().push(line))
        .build()
        .unwrap();
    (runner, lines)
}

/// Waits up to 10 s for `lines` to hold `wanted`: fd-level lines come
/// through the stderr pipe, in no order with the replies.
async fn eventually_holds(lines: &Lines, wanted: &OutputLine) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.lock().unwrap().contains(wanted) {
        assert!(
            Instant::now() < deadline,
            "{wanted:?} never came: {:?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_writes_of_a_synchronous_captured_command_are_captured() {
    let runner = crate::subprocess::make_runner();
    runner
        .run(
            "import os, sys\n\
             def raw():\n    os.write(1, b'fd one\\n')\n    print('text')\n    os.write(2, b'fd two\\n')\n    sys.stderr.write('text two\\n')\n    return 'done'\n",
        )
        .await
        .unwrap();
    let captured = runner.call("raw").capture_output().await.unwrap();
    assert_eq!(captured.value, json!("done"));
    assert_eq!(captured.stdout, "fd one\ntext\n", "in the order written");
    assert_eq!(captured.stderr, "fd two\ntext two\n");
    // A process the command starts writes to the fds it inherits.
    let captured = runner
        .exec(
            "import subprocess\n\
             subprocess.run(['sh', '-c', 'echo from a process; echo its error >&2'], check=True)",
        )
        .capture_output()
        .await
        .unwrap();
    assert_eq!(captured.stdout, "from a process\n");
    assert_eq!(captured.stderr, "its error\n");
    // Over the cap through the fds too: cut and marked, the next one afresh.
    let captured = runner
        .exec("import os\nchunk = b'z' * (1 << 20)\nfor _ in range(20):\n    os.write(1, chunk)")
        .capture_output()
        .await
        .unwrap();
    assert!(captured
        .stdout
        .ends_with("\n[async_py: output cut at 16777216 bytes]\n"));
    assert_eq!(captured.stdout.len(), (16 << 20) + 1 + 41);
    let captured = runner.exec("print('next')").capture_output().await.unwrap();
    assert_eq!(captured.stdout, "next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_writes_reach_on_output_as_stderr_lines() {
    let (runner, lines) = collecting();
    runner
        .run("import os\nos.write(1, b'raw out\\n')\nos.write(2, b'raw err\\n')\nprint('text')")
        .await
        .unwrap();
    let stderr = |text: &str| OutputLine {
        stream: OutputStream::Stderr,
        text: text.into(),
    };
    eventually_holds(&lines, &stderr("raw out")).await;
    eventually_holds(&lines, &stderr("raw err")).await;
    // A thread that user code starts prints through the stderr pipe too.
    runner
        .run("import threading\nt = threading.Thread(target=print, args=('from a thread',))\nt.start()\nt.join()")
        .await
        .unwrap();
    eventually_holds(&lines, &stderr("from a thread")).await;
    assert!(lines.lock().unwrap().contains(&OutputLine {
        stream: OutputStream::Stdout,
        text: "text".into(),
    }));
    // Startup code's output is routed too, in every fresh child.
    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = kept.clone();
    let runner = crate::subprocess::builder()
        .startup("print('starting')")
        .on_output(move |line: OutputLine| sink.lock().unwrap().push(line.text))
        .build()
        .unwrap();
    assert!(matches!(
        runner.run("import os\nos._exit(3)").await,
        Err(PyRunnerError::WorkerDied { .. })
    ));
    runner.eval("1").await.unwrap();
    assert_eq!(*kept.lock().unwrap(), vec!["starting", "starting"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_exec_is_replayed_in_a_fresh_child() {
    let (runner, lines) = collecting();
    let captured = runner
        .exec("print('defining')\nanswer = 42")
        .capture_output()
        .await
        .unwrap();
    assert_eq!(captured.stdout, "defining\n");
    assert!(matches!(
        runner.run("import os\nos._exit(3)").await,
        Err(PyRunnerError::WorkerDied { .. })
    ));
    assert_eq!(runner.eval("answer").await.unwrap(), json!(42));
    // The replay's output went to no one: the capture had it the first time.
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .all(|line| line.text != "defining"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_routes_output_and_captures_on_one_worker() {
    let lines: Lines = Arc::default();
    let kept = lines.clone();
    let pool = crate::pool::builder(2)
        .on_output(move |line| kept.lock().unwrap().push(line))
        .build()
        .unwrap();
    pool.run("import sys\ndef shout(x):\n    print('call', x)\n    sys.stderr.write('err %d\\n' % x)\n    return x\nprint('defined')")
        .await
        .unwrap();
    assert_eq!(pool.call("shout").arg(1).await.unwrap(), json!(1));
    let captured = pool.call("shout").arg(2).capture_output().await.unwrap();
    assert_eq!(captured.value, json!(2));
    assert_eq!(captured.stdout, "call 2\n");
    assert_eq!(captured.stderr, "err 2\n");
    pool.stop().await.unwrap();
    let texts: Vec<(OutputStream, String)> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|line| (line.stream, line.text.clone()))
        .collect();
    let count = |stream, text: &str| {
        texts
            .iter()
            .filter(|(s, t)| *s == stream && t == text)
            .count()
    };
    assert_eq!(count(OutputStream::Stdout, "defined"), 2, "{texts:?}");
    assert_eq!(count(OutputStream::Stdout, "call 1"), 1, "{texts:?}");
    assert_eq!(count(OutputStream::Stderr, "err 1"), 1, "{texts:?}");
    assert_eq!(count(OutputStream::Stdout, "call 2"), 0, "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_past_the_frame_limit_arrives_in_capped_pieces() {
    // 100 MiB in one write, no newline: more than one frame could hold.
    let pieces = Arc::new(Mutex::new(Vec::<usize>::new()));
    let kept = pieces.clone();
    let runner = crate::subprocess::builder()
        .timeout(Duration::from_secs(120))
        .on_output(move |line| kept.lock().unwrap().push(line.text.len()))
        .build()
        .unwrap();
    runner
        .run("import sys\nsys.stdout.write('y' * (100 << 20))")
        .await
        .unwrap();
    assert_eq!(
        runner.eval("1 + 1").await.unwrap(),
        json!(2),
        "the same child answers"
    );
    runner.stop().await.unwrap();
    let pieces = pieces.lock().unwrap();
    assert_eq!(pieces.iter().sum::<usize>(), 100 << 20);
    assert!(pieces.iter().all(|&size| size <= 64 << 10));
}
