//! Launchers (`PyRunnerBuilder::launcher`): a child started through a
//! command that gives a Python elsewhere, only stdin and stdout between.

use crate::faults;

use std::time::Duration;

use async_py::{PyPool, PyRunner, PyRunnerError, Value};
use faults::within;

/// The interpreter the tests use, by its real path (the far side of a
/// launcher does not share this process's PATH).
fn python() -> String {
    let out = std::process::Command::new(faults::python())
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_plain_prefix_runs_the_worker_with_its_environment() {
    within(60, || {
        let runner = PyRunner::builder()
            .subprocess()
            .launcher(["/usr/bin/env", "VAR=1"])
            .python(python())
            .env("GIVEN", "over stdin")
            .build()
            .unwrap();
        assert_eq!(
            runner
                .eval_sync("[__import__('os').environ.get(k) for k in ('VAR', 'GIVEN', 'ASYNC_PY_LAUNCHED')]")
                .unwrap(),
            serde_json::json!(["1", "over stdin", null])
        );
        runner.run_sync("def add(a, b):\n    return a + b").unwrap();
        assert_eq!(
            runner
                .call_function_sync("add", vec![Value::from(2), Value::from(3)])
                .unwrap(),
            Value::from(5)
        );
        let items: Vec<i64> = runner
            .call("range")
            .arg(100_000)
            .returns::<i64>()
            .stream()
            .blocking_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(items.len(), 100_000);
        let pid = faults::child_pid(&runner);
        runner.stop_sync().unwrap();
        faults::eventually("the worker is gone", || faults::is_gone(pid));
    });
}

#[test]
fn a_command_past_its_limit_is_a_timeout_and_the_runner_recovers() {
    within(60, || {
        let runner = PyRunner::builder()
            .subprocess()
            .launcher(["/usr/bin/env", "VAR=1"])
            .python(python())
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        runner.run_sync("kept = 7").unwrap();
        match runner.run_sync("while True:\n    pass") {
            Err(PyRunnerError::Timeout(_)) => {}
            other => panic!("expected a Timeout, got {other:?}"),
        }
        assert_eq!(runner.eval_sync("kept").unwrap(), Value::from(7));
    });
}

#[test]
fn uv_run_gives_packages_on_the_fly() {
    within(180, || {
        let runner = PyRunner::builder()
            .subprocess()
            .launcher([
                "uv",
                "run",
                "--no-project",
                "--python",
                &python(),
                "--with",
                "six==1.16.0",
            ])
            .python("python")
            .start_timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        assert_eq!(
            runner.eval_sync("__import__('six').__version__").unwrap(),
            Value::from("1.16.0")
        );
    });
}

#[test]
fn a_pool_mixes_local_and_launched_workers() {
    within(60, || {
        let pool = PyPool::builder()
            .workers(1)
            .python(python())
            .add_workers(1, ["/usr/bin/env", "LAUNCHED_WORKER=yes"])
            .build()
            .unwrap();
        pool.run_sync("import os, time\ndef who(i):\n    time.sleep(0.05)\n    return os.environ.get('LAUNCHED_WORKER', 'local')").unwrap();
        let answers = pool.map_sync("who", (0..20).map(|i| vec![Value::from(i)]).collect());
        let mut seen = std::collections::BTreeSet::new();
        for answer in answers {
            seen.insert(answer.unwrap().as_str().unwrap().to_string());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["local", "yes"]);
    });
}

/// A runner whose child runs over ssh, on a fresh sshd of its own.
fn over_ssh(sshd: &crate::sshd::Sshd) -> async_py::PyRunnerBuilder {
    PyRunner::builder()
        .subprocess()
        .launcher(sshd.prefix())
        .python(crate::sshd::remote_python())
        .start_timeout(Duration::from_secs(30))
}

#[test]
fn over_ssh_a_runner_runs_calls_streams_and_stops_with_the_far_pid_gone() {
    within(120, || {
        let sshd = crate::sshd::Sshd::start();
        let runner = over_ssh(&sshd)
            .env("GIVEN", "it's over ssh")
            .build()
            .unwrap();
        assert_eq!(
            runner
                .eval_sync("__import__('os').environ['GIVEN']")
                .unwrap(),
            Value::from("it's over ssh")
        );
        runner.run_sync("def add(a, b):\n    return a + b").unwrap();
        assert_eq!(
            runner
                .call_function_sync("add", vec![Value::from(40), Value::from(2)])
                .unwrap(),
            Value::from(42)
        );
        // 100 000 items, as a list and as a stream.
        let list = runner.eval_sync("list(range(100_000))").unwrap();
        assert_eq!(list.as_array().unwrap().len(), 100_000);
        let streamed = runner
            .call("range")
            .arg(100_000)
            .returns::<i64>()
            .stream()
            .blocking_iter()
            .map(Result::unwrap)
            .sum::<i64>();
        assert_eq!(streamed, (0..100_000).sum::<i64>());
        // The far side's worker, and what it started, go with stop().
        let marker = format!("async-py-far-child-{}-{}", std::process::id(), sshd.port());
        runner
            .run_sync(&format!(
                "import subprocess, sys\nchild = subprocess.Popen([sys.executable, '-c', \
                 'import time; time.sleep(600)', {marker:?}])"
            ))
            .unwrap();
        let far = faults::child_pid(&runner);
        assert!(faults::is_running(far));
        faults::eventually("the far child runs", || !processes_with(&marker).is_empty());
        runner.stop_sync().unwrap();
        faults::eventually("the far side's worker is gone", || faults::is_gone(far));
        faults::eventually("the far worker's child is gone", || {
            processes_with(&marker).is_empty()
        });
    });
}

#[test]
fn over_ssh_a_stuck_command_times_out_and_the_runner_recovers() {
    within(120, || {
        let sshd = crate::sshd::Sshd::start();
        let runner = over_ssh(&sshd)
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        runner.run_sync("kept = 'replayed'").unwrap();
        let far = faults::child_pid(&runner);
        match runner.run_sync("while True:\n    pass") {
            Err(PyRunnerError::Timeout(_)) => {}
            other => panic!("expected a Timeout, got {other:?}"),
        }
        // The stuck worker on the far side ended with its link.
        faults::eventually("the stuck far worker is gone", || faults::is_gone(far));
        assert_eq!(runner.eval_sync("kept").unwrap(), Value::from("replayed"));
        assert_ne!(faults::child_pid(&runner), far);
    });
}

#[test]
fn over_ssh_killing_the_local_ssh_mid_call_is_worker_died_and_a_replacement_serves() {
    within(120, || {
        let sshd = crate::sshd::Sshd::start();
        let runner = over_ssh(&sshd).build().unwrap();
        runner.run_sync("import time").unwrap();
        let far = faults::child_pid(&runner);
        // The local ssh: a child of this process running ssh to this test's
        // sshd (other tests' run beside it under `cargo test`).
        let ssh = local_ssh_children(sshd.port());
        assert!(!ssh.is_empty(), "no local ssh found");
        let call = std::thread::spawn({
            let runner = runner.clone();
            move || runner.run_sync("time.sleep(30)")
        });
        std::thread::sleep(Duration::from_millis(500));
        for pid in &ssh {
            faults::try_kill(*pid, 9);
        }
        match call.join().unwrap() {
            Err(PyRunnerError::WorkerDied { .. }) => {}
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        faults::eventually("the far worker is gone", || faults::is_gone(far));
        assert_eq!(
            runner.eval_sync("time.time() > 0").unwrap(),
            Value::from(true)
        );
        assert_ne!(faults::child_pid(&runner), far);
    });
}

/// The pids of live processes of which `keep(pid, stat, args)` holds
/// (`stat` the text of /proc/<pid>/stat, `args` its command line's words).
fn processes(keep: impl Fn(u32, &str, &[&[u8]]) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            faults::is_running(pid) && keep(pid, &stat, &args)
        })
        .collect()
}

/// The pids of live processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    processes(|_, _, args| args.contains(&marker.as_bytes()))
}

/// The pids of this process's children that run ssh to port `port`.
fn local_ssh_children(port: u16) -> Vec<u32> {
    let me = std::process::id().to_string();
    let port = port.to_string();
    processes(|_, stat, args| {
        let parent = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1));
        stat.contains("(ssh)") && parent == Some(me.as_str()) && args.contains(&port.as_bytes())
    })
}

#[test]
fn over_ssh_a_pool_of_one_local_and_one_ssh_worker_serves_a_map_from_both() {
    within(120, || {
        let sshd = crate::sshd::Sshd::start();
        let pool = PyPool::builder()
            .workers(1)
            .python(python())
            .add_workers(1, sshd.prefix())
            .build()
            .unwrap();
        pool.run_sync(
            "import os, time\ndef where(i):\n    time.sleep(0.05)\n    return 'ssh' if 'SSH_CONNECTION' in os.environ else 'local'",
        )
        .unwrap();
        let answers = pool.map_sync("where", (0..20).map(|i| vec![Value::from(i)]).collect());
        let mut seen = std::collections::BTreeMap::new();
        for answer in answers {
            *seen
                .entry(answer.unwrap().as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["local", "ssh"],
            "{seen:?}"
        );
    });
}

#[test]
fn a_command_past_its_limit_is_interrupted_by_the_worker_itself() {
    within(60, || {
        let marker = tempfile::tempdir().unwrap();
        let ran = marker.path().join("finally-ran");
        let runner = PyRunner::builder()
            .subprocess()
            .launcher(["/usr/bin/env"])
            .python(python())
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        // No signal of this process's reaches a launched child: only its own
        // interrupt runs the `finally`.
        match runner.run_sync(&format!(
            "try:\n    while True:\n        pass\nfinally:\n    open({:?}, 'w').close()",
            ran
        )) {
            Err(PyRunnerError::Timeout(_)) => {}
            other => panic!("expected a Timeout, got {other:?}"),
        }
        faults::eventually("the finally block ran", || ran.exists());
        assert_eq!(runner.eval_sync("1 + 1").unwrap(), Value::from(2));
    });
}

#[test]
fn over_ssh_an_idle_link_beats_and_a_silent_one_is_found_dead() {
    within(120, || {
        let sshd = crate::sshd::Sshd::start();
        let runner = over_ssh(&sshd)
            .heartbeat(Duration::from_millis(200))
            .build()
            .unwrap();
        runner.run_sync("import time").unwrap();
        let far = faults::child_pid(&runner);
        // Idle for ten heartbeats: the beats keep it, the same worker answers.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(faults::child_pid(&runner), far);
        // A link that goes silent (its ssh stopped) is given up within three
        // heartbeats, and the command in flight fails.
        let ssh = local_ssh_children(sshd.port());
        assert!(!ssh.is_empty());
        let call = std::thread::spawn({
            let runner = runner.clone();
            move || runner.run_sync("time.sleep(30)")
        });
        std::thread::sleep(Duration::from_millis(300));
        let stopped = std::time::Instant::now();
        for pid in &ssh {
            faults::try_kill(*pid, 19); // SIGSTOP
        }
        match call.join().unwrap() {
            Err(PyRunnerError::WorkerDied { reason }) => {
                assert!(reason.contains("silent"), "{reason}")
            }
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "{:?}",
            stopped.elapsed()
        );
        faults::eventually("the far worker is gone", || faults::is_gone(far));
        assert_eq!(
            runner.eval_sync("time.time() > 0").unwrap(),
            Value::from(true)
        );
    });
}

#[test]
fn limits_and_beats_leave_a_slow_stream_and_busy_calls_alone() {
    within(60, || {
        let runner = PyRunner::builder()
            .subprocess()
            .launcher(["/usr/bin/env"])
            .python(python())
            .heartbeat(Duration::from_millis(50))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        runner
            .run_sync("import time\ndef slow(n):\n    time.sleep(0.5)\n    return iter(range(n))")
            .unwrap();
        let pid = faults::child_pid(&runner);
        for _ in 0..3 {
            let items: Vec<i64> = runner
                .call("slow")
                .arg(10)
                .returns::<i64>()
                .stream()
                .blocking_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(items, (0..10).collect::<Vec<_>>());
            runner.run_sync("time.sleep(0.3)").unwrap();
        }
        assert_eq!(
            faults::child_pid(&runner),
            pid,
            "no limit or silence ended it"
        );
    });
}

#[test]
fn a_pool_of_launched_workers_only_and_settings_the_far_side_gives() {
    within(60, || {
        let pool = PyPool::builder()
            .workers(0)
            .add_workers(2, ["/usr/bin/env", "ONLY=launched"])
            .python(python())
            .build()
            .unwrap();
        assert_eq!(pool.stats().len(), 2);
        assert_eq!(
            pool.eval_sync("__import__('os').environ['ONLY']").unwrap(),
            Value::from("launched")
        );
        for builder in [
            PyRunner::builder()
                .subprocess()
                .launcher(["ssh", "h"])
                .current_dir("/"),
            PyRunner::builder()
                .subprocess()
                .launcher(["ssh", "h"])
                .venv("/v"),
            PyRunner::builder()
                .subprocess()
                .launcher(["ssh", "h"])
                .memory_limit(1 << 30),
        ] {
            match builder.build() {
                Err(PyRunnerError::Unsupported(message)) => {
                    assert!(message.contains("far side"), "{message}")
                }
                other => panic!("expected Unsupported, got {other:?}"),
            }
        }
    });
}
