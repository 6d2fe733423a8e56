//! No child outlives its runner: `stop()` and dropping the last handle end
//! the child and everything it started, also what left its process group,
//! and reap it; so does the end of this process, by any route.

use crate::faults;

use std::path::Path;

use faults::*;

const SPAWN_GRANDCHILD: &str =
    "import subprocess\ngrandchild = subprocess.Popen(['sleep', '1000'])\ngrandchild_pid = outer_pid(grandchild.pid)";

fn grandchild(runner: &async_py::PyRunner) -> u32 {
    runner.run_sync(OUTER_PID).unwrap();
    runner.run_sync(SPAWN_GRANDCHILD).unwrap();
    runner
        .read_variable_sync("grandchild_pid")
        .unwrap()
        .as_u64()
        .unwrap() as u32
}

#[test]
fn stop_ends_and_reaps_the_child_and_its_grandchildren() {
    let runner = runner();
    let child = child_pid(&runner);
    let grandchild = grandchild(&runner);
    assert!(is_running(child) && is_running(grandchild));
    runner.stop_sync().unwrap();
    assert!(is_gone(child), "stop returns after the child is reaped");
    eventually("the grandchild is killed", || !is_running(grandchild));
}

#[test]
fn dropping_the_last_handle_ends_and_reaps_the_child() {
    let runner = runner();
    let clone = runner.clone();
    let child = child_pid(&runner);
    let grandchild = grandchild(&runner);
    drop(runner);
    assert!(is_running(child), "a clone keeps the child");
    drop(clone);
    eventually("the child is reaped", || is_gone(child));
    eventually("the grandchild is killed", || !is_running(grandchild));
}

#[test]
fn a_replaced_child_is_reaped_too() {
    let runner = runner();
    let child = child_pid(&runner);
    let grandchild = grandchild(&runner);
    let _ = runner.run_sync("import os\nos._exit(9)");
    assert!(is_gone(child));
    eventually("the dead child's grandchild is killed", || {
        !is_running(grandchild)
    });
}

/// The worker exits when its request pipe closes, even if the parent could
/// not kill it (here: the parent is another process that we kill).
#[test]
fn a_child_never_outlives_its_parent_process() {
    if let Some(report) = std::env::var_os("ASYNC_PY_ORPHAN_PROBE") {
        let runner = runner();
        std::fs::write(report, child_pid(&runner).to_string()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("pid");
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &crate::common::test_name(module_path!(), "a_child_never_outlives_its_parent_process"),
            "--nocapture",
        ])
        .env("ASYNC_PY_ORPHAN_PROBE", &report)
        .spawn()
        .unwrap();
    eventually("the probe reports its child", || {
        report.exists() && !std::fs::read_to_string(&report).unwrap().is_empty()
    });
    let child: u32 = std::fs::read_to_string(&report)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(is_running(child));
    parent.kill().unwrap();
    parent.wait().unwrap();
    eventually("the orphaned child exits", || !is_running(child));
}

/// Linux ties the parent-death signal to the thread that started the child:
/// a runner built on a short-lived thread must keep its child all the same.
#[test]
fn a_runner_built_on_a_short_lived_thread_keeps_its_child() {
    let runner = std::thread::spawn(runner).join().unwrap();
    let pid = child_pid(&runner);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(is_running(pid));
    assert_eq!(child_pid(&runner), pid, "the same child still answers");
}

/// A child that does not answer `stop` (stopped by SIGSTOP here) is killed
/// with its group after a grace: `stop` returns `Ok` in bounded time, with
/// the child reaped.
#[test]
fn stop_ends_a_child_that_does_not_answer() {
    let runner = runner();
    let child = child_pid(&runner);
    kill(child, libc::SIGSTOP);
    within(10, move || runner.stop_sync()).expect("stop is Ok");
    assert!(is_gone(child), "stop returns after the child is reaped");
}

/// The same for an interpreter that says hello and then never reads.
#[test]
fn stop_ends_an_interpreter_that_ignores_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let fake = fake_python(
        dir.path(),
        &format!(
            "echo $$ > '{}'\n{HELLO}\nexec sleep 600",
            pid_file.display()
        ),
    );
    let runner = async_py::PyRunner::builder()
        .subprocess()
        .python(&fake)
        .build()
        .unwrap();
    let child: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    within(10, move || runner.stop_sync()).expect("stop is Ok");
    assert!(is_gone(child), "stop returns after the child is reaped");
}

/// A copy that left the child's process group and session, reported in a
/// file of `folder`: its pid, and a guard that kills it if the test fails.
fn copy_in_a_session_of_its_own(runner: &async_py::PyRunner, folder: &Path) -> KillOnDrop {
    let report = folder.join("copy");
    runner
        .run_sync(&setsid_copy(&python_text(&report)))
        .unwrap();
    let copy = KillOnDrop(reported_pid(&report));
    assert!(is_running(copy.0));
    copy
}

#[test]
fn stop_ends_a_copy_that_left_the_process_group() {
    within(60, || {
        let folder = tempfile::tempdir().unwrap();
        let runner = runner();
        let copy = copy_in_a_session_of_its_own(&runner, folder.path());
        runner.stop_sync().unwrap();
        eventually("the copy is killed", || !is_running(copy.0));
    });
}

#[test]
fn dropping_the_last_handle_ends_a_copy_that_left_the_process_group() {
    within(60, || {
        let folder = tempfile::tempdir().unwrap();
        let runner = runner();
        let copy = copy_in_a_session_of_its_own(&runner, folder.path());
        drop(runner);
        eventually("the copy is killed", || !is_running(copy.0));
    });
}

/// How the probe process below ends, once its child has started a
/// grandchild and a copy in a session of its own.
const PROBE_ENDS: &str = "ASYNC_PY_CONTAINMENT_PROBE_ENDS";

/// Runs this test binary again as a probe that builds a runner, has its
/// child start `sleep 300` and a copy that calls `os.setsid()`, reports
/// their pids in `folder`, and once told to, ends as `ending` says: `exit`
/// (by `std::process::exit`) or `killed` (it waits for a SIGKILL from here).
/// Both must be gone soon after.
fn nothing_outlives_the_probe(test: &str, ending: &str) {
    if let Some(folder) = std::env::var_os("ASYNC_PY_CONTAINMENT_PROBE") {
        let folder = Path::new(&folder);
        let runner = runner();
        let grandchild = grandchild(&runner);
        std::fs::write(folder.join("grandchild"), grandchild.to_string()).unwrap();
        runner
            .run_sync(&setsid_copy(&python_text(&folder.join("copy"))))
            .unwrap();
        reported_pid(&folder.join("copy"));
        std::fs::write(folder.join("ready"), "").unwrap();
        // Ended only once the test has seen both running.
        eventually("the test says go", || folder.join("go").exists());
        if std::env::var(PROBE_ENDS).unwrap() == "exit" {
            std::process::exit(0);
        }
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    let folder = tempfile::tempdir().unwrap();
    let mut probe = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &crate::common::test_name(module_path!(), test),
            "--nocapture",
        ])
        .env("ASYNC_PY_CONTAINMENT_PROBE", folder.path())
        .env(PROBE_ENDS, ending)
        .spawn()
        .unwrap();
    eventually("the probe is ready", || {
        folder.path().join("ready").exists()
    });
    let grandchild = KillOnDrop(reported_pid(&folder.path().join("grandchild")));
    let copy = KillOnDrop(reported_pid(&folder.path().join("copy")));
    assert!(is_running(grandchild.0) && is_running(copy.0));
    std::fs::write(folder.path().join("go"), "").unwrap();
    if ending == "killed" {
        probe.kill().unwrap();
    }
    probe.wait().unwrap();
    eventually("the grandchild is killed", || !is_running(grandchild.0));
    eventually("the copy is killed", || !is_running(copy.0));
}

#[test]
fn nothing_a_child_started_outlives_this_process_calling_exit() {
    within(60, || {
        nothing_outlives_the_probe(
            "nothing_a_child_started_outlives_this_process_calling_exit",
            "exit",
        )
    });
}

#[test]
fn nothing_a_child_started_outlives_this_process_killed() {
    within(60, || {
        nothing_outlives_the_probe(
            "nothing_a_child_started_outlives_this_process_killed",
            "killed",
        )
    });
}
