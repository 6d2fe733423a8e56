//! A child that dies while starting, again and again, gives `Startup`
//! errors after a few tries instead of a busy restart loop.

use crate::faults;

use std::fs;

use async_py::PyRunnerError;
use faults::*;
use serde_json::json;

#[test]
fn a_startup_crash_loop_ends_in_startup_errors_and_recovers_later() {
    let dir = tempfile::tempdir().unwrap();
    let poison = dir.path().join("poison");
    let attempts = dir.path().join("attempts");
    let startup = format!(
        "import os\nif os.path.exists({poison:?}):\n    open({attempts:?}, 'a').write('x')\n    os._exit(3)\nready = True",
        poison = poison.display().to_string(),
        attempts = attempts.display().to_string(),
    );
    let runner = builder().startup(startup).build().unwrap();
    fs::write(&poison, "").unwrap();
    // The child dies; every restart dies in its startup code.
    assert!(matches!(
        runner.run_sync("import os\nos._exit(1)"),
        Err(PyRunnerError::WorkerDied { .. })
    ));
    for _ in 0..3 {
        match runner.eval_sync("1") {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("status 3"), "{message}")
            }
            other => panic!("expected a Startup error, got {other:?}"),
        }
    }
    let tries = fs::read_to_string(&attempts).unwrap().len();
    assert!(
        (3..=6).contains(&tries),
        "a few tries, not a restart loop: {tries}"
    );
    // Once the cause is gone, the next command gets a fresh try.
    fs::remove_file(&poison).unwrap();
    assert_eq!(runner.read_variable_sync("ready").unwrap(), json!(true));
}

#[test]
fn a_child_that_exits_before_its_hello_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("python");
    fs::write(
        &fake,
        "#!/bin/sh\necho 'boom: no python here' >&2\nexit 4\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    match async_py::PyRunner::builder()
        .subprocess()
        .python(&fake)
        .build()
    {
        Err(PyRunnerError::Startup(message)) => {
            assert!(message.contains("exited with status 4"), "{message}");
            assert!(message.contains("boom: no python here"), "{message}");
        }
        other => panic!("expected a Startup error, got {other:?}"),
    }
}

/// Settings that would fail later, or with a message pointing elsewhere,
/// are refused by `build` with a `Startup` error that names them.
#[test]
fn bad_settings_are_refused_by_name_at_build() {
    let refused = |outcome: Result<async_py::PyRunner, PyRunnerError>| match outcome {
        Err(PyRunnerError::Startup(message)) => message,
        other => panic!("expected a Startup error, got {other:?}"),
    };
    let message = refused(builder().env("A=B", "C").build());
    assert!(
        message.contains("\"A=B\"") && message.contains("'='"),
        "{message}"
    );
    let message = refused(builder().env("", "C").build());
    assert!(message.contains("needs a name"), "{message}");
    let message = refused(builder().max_frame_length(100).build());
    assert!(message.contains("100 bytes"), "{message}");
    let message = refused(builder().current_dir("/no/such/folder").build());
    assert!(
        message.contains("current_dir /no/such/folder"),
        "the folder is named, not the interpreter: {message}"
    );
    match async_py::PyPool::builder().env("X=Y", "1").build() {
        Err(PyRunnerError::Startup(message)) => assert!(message.contains("X=Y"), "{message}"),
        other => panic!("expected a Startup error, got {:?}", other.map(|_| ())),
    }
    // The smallest frame limit taken still works.
    let runner = builder().max_frame_length(8 << 10).build().unwrap();
    assert_eq!(runner.eval_sync("'x' * 10").unwrap(), json!("xxxxxxxxxx"));
}

/// A child that dies right after each good start (here a timer in its
/// startup code) is restarted a few times, backing off, and not again
/// while the runner is idle; a command then hears of the loop, or gets a
/// fresh child that answers in time.
#[test]
fn a_child_that_dies_soon_after_every_start_is_not_restarted_in_a_loop() {
    within(60, || {
        let dir = tempfile::tempdir().unwrap();
        let starts = dir.path().join("starts");
        let startup = counting_startup(
            &starts,
            "import os, threading\nthreading.Timer(0.05, os._exit, [1]).start()",
        );
        let cpu = cpu_seconds();
        let runner = builder().startup(startup).build().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(5));
        let count = count_starts(&starts);
        assert!(count <= 6, "{count} starts in 5 s of idle");
        match runner.eval_sync("1") {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("within 1 s of starting"), "{message}")
            }
            Ok(one) => assert_eq!(one, json!(1)),
            other => panic!("expected a Startup error or 1, got {other:?}"),
        }
        let spent = cpu_seconds() - cpu;
        assert!(spent < 2.0, "{spent:.2} s of CPU while idle");
    });
}

/// An interpreter that says hello and exits at once: a few starts, then
/// the next command gets `Startup` naming the loop, and the process stays
/// idle meanwhile.
#[test]
fn an_interpreter_that_exits_after_its_hello_is_not_restarted_in_a_loop() {
    within(60, || {
        let dir = tempfile::tempdir().unwrap();
        let starts = dir.path().join("starts");
        let fake = fake_python(
            dir.path(),
            &format!("printf x >> '{}'\n{HELLO}", starts.display()),
        );
        let cpu = cpu_seconds();
        let runner = async_py::PyRunner::builder()
            .subprocess()
            .python(&fake)
            .build()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(3));
        let count = count_starts(&starts);
        assert!(count <= 6, "{count} starts in 3 s of idle");
        match runner.eval_sync("1") {
            Err(PyRunnerError::Startup(message)) => {
                assert!(message.contains("within 1 s of starting"), "{message}")
            }
            other => panic!("expected a Startup error, got {other:?}"),
        }
        let spent = cpu_seconds() - cpu;
        assert!(spent < 2.0, "{spent:.2} s of CPU while idle");
    });
}

/// An interpreter that never says hello fails `build` with `Startup` once
/// the start timeout has passed, naming it.
#[test]
fn an_interpreter_that_never_says_hello_fails_build_at_the_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_python(dir.path(), "exec sleep 600");
    let built = within(10, move || {
        async_py::PyRunner::builder()
            .subprocess()
            .python(&fake)
            .start_timeout(std::time::Duration::from_secs(1))
            .build()
            .map(drop)
    });
    assert_start_timed_out(built);
}

/// A fresh child that dies while a replayed run larger than its request
/// pipe is still being sent, with a copy it forked holding the pipe: the
/// start fails at once, not when its time is up.
#[test]
fn a_child_that_dies_while_a_replay_is_sent_fails_the_start_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let armed = dir.path().join("armed");
    // Armed, the child leaves a copy, reads its requests slowly, and dies
    // before it has read the whole replayed run.
    let startup = format!(
        "import os, threading, time\n\
         if os.path.exists({armed:?}):\n\
         \x20   if os.fork() == 0:\n\
         \x20       time.sleep(60)\n\
         \x20       os._exit(0)\n\
         \x20   threading.Timer(0.3, os._exit, [5]).start()\n\
         \x20   slow_read = os.read\n\
         \x20   os.read = lambda fd, size: (time.sleep(1), slow_read(fd, size))[1]",
        armed = armed.display().to_string(),
    );
    let runner = builder().startup(startup).build().unwrap();
    let big = format!("big = 1\n# {}\n", "x".repeat(4 << 20));
    runner.run_sync(&big).unwrap();
    std::fs::write(&armed, "").unwrap();
    let (died, next) = within(20, move || {
        let died = runner.run_sync("import os\nos._exit(1)");
        (died, runner.eval_sync("big"))
    });
    assert!(
        matches!(died, Err(PyRunnerError::WorkerDied { .. })),
        "{died:?}"
    );
    match next {
        Err(PyRunnerError::Startup(message)) => {
            assert!(message.contains("died running it"), "{message}");
            assert!(message.contains("status 5"), "{message}");
        }
        other => panic!("expected a Startup error, got {other:?}"),
    }
}

/// A child whose startup code leaves a copy of it and then dies fails its
/// start at once: its death is seen though the copy holds its pipes.
#[test]
fn a_child_that_dies_in_its_startup_code_while_a_copy_lives_fails_at_once() {
    let startup = "import os, time\n\
                   if os.fork() == 0:\n\
                   \x20   time.sleep(60)\n\
                   \x20   os._exit(0)\n\
                   os._exit(6)";
    let built = within(20, move || builder().startup(startup).build().map(drop));
    match built {
        Err(PyRunnerError::Startup(message)) => {
            assert!(message.contains("status 6"), "{message}")
        }
        other => panic!("expected a Startup error, got {other:?}"),
    }
}
