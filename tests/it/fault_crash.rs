//! A child that exits or is killed fails the command it ran with
//! `WorkerDied`, and the commands queued behind it run on a fresh child.

use crate::faults;

use std::time::Duration;

use async_py::PyRunnerError;
use faults::*;
use serde_json::json;

fn died(outcome: Result<serde_json::Value, PyRunnerError>) -> String {
    match outcome {
        Err(PyRunnerError::WorkerDied { reason }) => reason,
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

#[test]
fn exit_codes_and_last_stderr_lines_are_in_the_reason() {
    let runner = runner();
    let first = child_pid(&runner);
    let reason = died(
        runner
            .run_sync("import os, sys\nprint('dying words', file=sys.stderr)\nsys.stderr.flush()\nos._exit(7)")
            .map(|_| json!(null)),
    );
    assert!(reason.contains("exited with status 7"), "{reason}");
    assert!(reason.contains("dying words"), "{reason}");
    let second = child_pid(&runner);
    assert_ne!(first, second, "a fresh child took over");
    assert!(is_gone(first), "the dead child was reaped");
}

#[test]
fn a_segfault_in_c_code_is_a_worker_death_not_ours() {
    let runner = runner();
    let reason = died(runner.eval_sync("__import__('ctypes').string_at(0)"));
    assert!(
        reason.contains("signal 11") && reason.contains("SIGSEGV"),
        "{reason}"
    );
    assert_eq!(runner.eval_sync("'alive'").unwrap(), json!("alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_from_outside_mid_call_fails_only_that_call() {
    let runner = runner();
    runner.run("import time").await.unwrap();
    let pid = child_pid(&runner);
    let stuck = tokio::spawn({
        let runner = runner.clone();
        async move { runner.call_function("time.sleep", vec![json!(30)]).await }
    });
    // Commands queued behind the call that will die.
    let queued: Vec<_> = (0..5)
        .map(|i| {
            let runner = runner.clone();
            tokio::spawn(async move { runner.eval(&format!("{i} * 10")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    kill(pid, 9);
    let reason = died(stuck.await.unwrap());
    assert!(
        reason.contains("signal 9") && reason.contains("SIGKILL"),
        "{reason}"
    );
    for (i, call) in queued.into_iter().enumerate() {
        assert_eq!(
            call.await.unwrap().unwrap(),
            json!(i * 10),
            "queued command {i} ran on the fresh child"
        );
    }
    assert_ne!(child_pid(&runner), pid);
}

#[test]
fn startup_code_runs_again_in_every_fresh_child() {
    let runner = builder()
        .startup("import os\nboot_pid = os.getpid()")
        .build()
        .unwrap();
    for _ in 0..3 {
        let pid = child_pid(&runner);
        assert_eq!(runner.read_variable_sync("boot_pid").unwrap(), json!(pid));
        died(
            runner
                .run_sync("import os\nos._exit(1)")
                .map(|_| json!(null)),
        );
    }
    assert!(runner.read_variable_sync("boot_pid").is_ok());
}

/// The fresh child after a death runs `startup`, then every `run`,
/// `run_file` and `set_venv` that succeeded, in order: what the runner
/// defined is still there. The runs that killed a child are not replayed.
#[test]
fn definitions_survive_a_crash() {
    within(60, || {
        let runner = runner();
        runner.run_sync("keep = 41").unwrap();
        runner.run_sync("keep += 1\nimport json").unwrap();
        for crash in [
            "import os\nos._exit(1)",
            "import ctypes\nctypes.string_at(0)",
        ] {
            let first = child_pid(&runner);
            died(runner.run_sync(crash).map(|_| json!(null)));
            assert_eq!(runner.read_variable_sync("keep").unwrap(), json!(42));
            assert_eq!(runner.eval_sync("json.dumps([1])").unwrap(), json!("[1]"));
            assert_ne!(child_pid(&runner), first, "a fresh child answered");
        }
    });
}

/// A `run_file` and a `set_venv` are replayed where they came, between the
/// runs; a run that raised is not replayed.
#[test]
fn run_file_and_set_venv_are_replayed_in_order_and_a_run_that_raised_is_not() {
    within(60, || {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner();
        let version = runner
            .eval_sync("'python%d.%d' % __import__('sys').version_info[:2]")
            .unwrap();
        let venv = dir.path().join("venv");
        let site_packages = venv
            .join("lib")
            .join(version.as_str().unwrap())
            .join("site-packages");
        std::fs::create_dir_all(&site_packages).unwrap();
        std::fs::write(site_packages.join("replayed_pkg.py"), "WHERE = 'venv'\n").unwrap();
        let script = dir.path().join("script.py");
        std::fs::write(&script, "order.append('file')\n").unwrap();

        runner.run_sync("order = ['run']").unwrap();
        runner.set_venv_sync(&venv).unwrap();
        runner.run_file_sync(&script).unwrap();
        let raised = runner.run_sync("order.append('raised')\nraise ValueError('no')");
        assert!(matches!(raised, Err(PyRunnerError::Python { .. })));
        runner
            .run_sync("import replayed_pkg\norder.append(replayed_pkg.WHERE)")
            .unwrap();
        let before = runner.read_variable_sync("order").unwrap();
        assert_eq!(before, json!(["run", "file", "raised", "venv"]));

        died(
            runner
                .run_sync("import os\nos._exit(3)")
                .map(|_| json!(null)),
        );
        assert_eq!(
            runner.read_variable_sync("order").unwrap(),
            json!(["run", "file", "venv"]),
            "replayed once each, in order, without the run that raised"
        );
        assert_eq!(
            runner.read_variable_sync("__file__").unwrap(),
            json!(script.display().to_string())
        );
    });
}

/// A remembered command that fails when replayed (it read a file deleted
/// since) is named in a `Startup` error for the command that needed the
/// fresh child; it is forgotten, the others stay, and the runner goes on.
#[test]
fn a_replay_that_fails_is_a_startup_error_naming_it_and_the_runner_goes_on() {
    within(60, || {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.txt");
        std::fs::write(&data, "from the file").unwrap();
        let runner = runner();
        runner.run_sync("before = 1").unwrap();
        runner
            .run_sync(&format!(
                "data = open({:?}).read()\nafter_data = True",
                data.display().to_string()
            ))
            .unwrap();
        runner.run_sync("after = 2").unwrap();
        std::fs::remove_file(&data).unwrap();

        died(
            runner
                .run_sync("import os\nos._exit(1)")
                .map(|_| json!(null)),
        );
        match runner.eval_sync("before + after") {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("2 of 3"), "its position: {message}");
                assert!(
                    message.contains("data = open("),
                    "its first line: {message}"
                );
                assert!(
                    !message.contains("after_data"),
                    "only the first line: {message}"
                );
                assert!(message.contains("FileNotFoundError"), "{message}");
            }
            other => panic!("expected a Startup error, got {other:?}"),
        }
        assert_eq!(runner.eval_sync("before + after").unwrap(), json!(3));
        assert!(matches!(
            runner.read_variable_sync("data"),
            Err(PyRunnerError::Python { .. })
        ));
        // Forgotten: the next fresh child replays the rest without a word.
        died(
            runner
                .run_sync("import os\nos._exit(1)")
                .map(|_| json!(null)),
        );
        assert_eq!(runner.eval_sync("before + after").unwrap(), json!(3));
    });
}

/// A replayed command that kills the fresh child is forgotten too: the
/// command that needed the child hears of it, and the next child starts.
#[test]
fn a_replay_that_kills_the_fresh_child_is_forgotten() {
    within(60, || {
        let dir = tempfile::tempdir().unwrap();
        let armed = dir.path().join("armed");
        let runner = runner();
        runner.run_sync("kept = 'yes'").unwrap();
        runner
            .run_sync(&format!(
                "import os\nif os.path.exists({:?}):\n    os._exit(9)",
                armed.display().to_string()
            ))
            .unwrap();
        std::fs::write(&armed, "").unwrap();
        died(
            runner
                .run_sync("import os\nos._exit(1)")
                .map(|_| json!(null)),
        );
        match runner.read_variable_sync("kept") {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("2 of 2"), "{message}");
                assert!(message.contains("exited with status 9"), "{message}");
            }
            other => panic!("expected a Startup error, got {other:?}"),
        }
        assert_eq!(runner.read_variable_sync("kept").unwrap(), json!("yes"));
    });
}

#[test]
fn without_replay_globals_of_a_dead_child_are_gone_and_say_so() {
    let runner = builder().replay(false).build().unwrap();
    runner.run_sync("kept = 1").unwrap();
    died(
        runner
            .run_sync("import os\nos._exit(0)")
            .map(|_| json!(null)),
    );
    match runner.read_variable_sync("kept") {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "NameError"),
        other => panic!("a fresh child starts with fresh globals: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coroutines_in_flight_fail_with_the_child_and_later_ones_run() {
    let runner = runner();
    runner
        .run("import asyncio\nasync def nap(s):\n    await asyncio.sleep(s)\n    return s")
        .await
        .unwrap();
    let napping: Vec<_> = (0..10)
        .map(|_| {
            let runner = runner.clone();
            tokio::spawn(async move { runner.call_async_function("nap", vec![json!(30)]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    kill(child_pid(&runner), 9);
    for call in napping {
        assert!(matches!(
            call.await.unwrap(),
            Err(PyRunnerError::WorkerDied { .. })
        ));
    }
    runner
        .run("import asyncio\nasync def nap(s):\n    await asyncio.sleep(s)\n    return s")
        .await
        .unwrap();
    assert_eq!(
        runner
            .call_async_function("nap", vec![json!(0.01)])
            .await
            .unwrap(),
        json!(0.01)
    );
}

#[test]
fn a_stderr_line_without_end_is_held_in_pieces_not_whole() {
    // 4 MiB on stderr with no newline, then death: the parent keeps only
    // the last pieces of it, and the runner goes on.
    let runner = runner();
    runner
        .run_sync("import os, sys\ndef flood():\n    sys.stderr.write('x' * (4 << 20))\n    sys.stderr.flush()\n    os._exit(5)")
        .unwrap();
    let reason = died(runner.call_function_sync("flood", vec![]));
    assert!(
        reason.contains("xxxx"),
        "the tail is quoted: {}",
        &reason[..80.min(reason.len())]
    );
    assert!(
        reason.len() < 2 << 20,
        "a {}-byte reason holds the whole line",
        reason.len()
    );
    assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
}

/// Python that starts a copy of the child which sleeps for two minutes
/// (by `multiprocessing` or a bare `os.fork`) and keeps its pid in `copy`.
/// The copy holds the child's pipes, so only the child's own end can say
/// that it died.
fn start_copy(how: &str) -> String {
    match how {
        "multiprocessing" => "import multiprocessing, time\n\
             proc = multiprocessing.Process(target=time.sleep, args=(120,))\n\
             proc.start()\n\
             copy = proc.pid"
            .into(),
        _ => "import os, time\n\
             copy = os.fork()\n\
             if copy == 0:\n\
             \x20   time.sleep(120)\n\
             \x20   os._exit(0)"
            .into(),
    }
}

#[test]
fn a_crash_is_noticed_while_a_copy_of_the_child_lives() {
    within(40, || {
        for how in ["multiprocessing", "fork"] {
            for limit in [None, Some(Duration::from_secs(60))] {
                let runner = match limit {
                    Some(limit) => builder().timeout(limit).build().unwrap(),
                    None => runner(),
                };
                runner.run_sync(&start_copy(how)).unwrap();
                // Its pid where this test looks: the child's may be a pid
                // namespace's.
                runner.run_sync(OUTER_PID).unwrap();
                let copy = runner
                    .eval_sync("outer_pid(copy)")
                    .unwrap()
                    .as_u64()
                    .unwrap() as u32;
                assert!(is_running(copy), "{how}: the copy runs");
                let reason = within(20, {
                    let runner = runner.clone();
                    move || died(runner.eval_sync("__import__('ctypes').string_at(0)"))
                });
                assert!(reason.contains("SIGSEGV"), "{how}: {reason}");
                eventually("the copy is killed", || !is_running(copy));
                assert_eq!(runner.eval_sync("6 * 7").unwrap(), json!(42), "{how}");
            }
        }
    });
}
