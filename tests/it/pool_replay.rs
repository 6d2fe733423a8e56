//! PyPool: `run` reaches every worker, and a replaced worker gets `startup` and every run again.

use crate::faults;
use crate::pool;

use std::path::PathBuf;

use async_py::{PyPool, PyRunnerError, Value};
use faults::{eventually, kill};
use pool::{answering_pids, pids, DEFS};

#[test]
fn run_reaches_every_worker() {
    let pool = pool::pool(3);
    pool.run_sync(DEFS).unwrap();
    pool.run_sync("X = 41").unwrap();
    pool.run_sync("X += 1").unwrap();
    pool.run_sync("def seen():\n    return [os.getpid(), X]")
        .unwrap();
    let mut answered = std::collections::BTreeSet::new();
    for reply in pool.map_sync("seen", vec![Vec::new(); 60]) {
        let reply = reply.unwrap();
        assert_eq!(reply[1], Value::from(42), "every worker ran both runs once");
        answered.insert(reply[0].as_u64().unwrap() as u32);
    }
    assert_eq!(answered, pids(&pool));
}

#[test]
fn a_killed_worker_comes_back_with_startup_and_every_run() {
    let pool = pool::builder(2)
        .startup("STARTED = 'by startup'")
        .build()
        .unwrap();
    pool.run_sync(DEFS).unwrap();
    pool.run_sync("COUNT = 1").unwrap();
    pool.run_sync("COUNT += 1\ndef state():\n    return [os.getpid(), STARTED, COUNT]")
        .unwrap();
    let before = pool.stats();
    kill(before[0].pid, 9);
    eventually("the killed worker was replaced", || {
        let now = pool.stats();
        now[0].restarts == 1 && now[0].pid != before[0].pid && now[0].pid != 0
    });
    assert_eq!(
        pool.stats()[1].pid,
        before[1].pid,
        "the other worker was left alone"
    );
    for reply in pool.map_sync("state", vec![Vec::new(); 40]) {
        let reply = reply.unwrap();
        assert_eq!(reply[1], Value::from("by startup"));
        assert_eq!(reply[2], Value::from(2), "runs replayed once, in order");
    }
    assert_eq!(answering_pids(&pool, 20), pids(&pool));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_only_the_call_it_was_running() {
    let pool = pool::pool(2);
    pool.run(DEFS).await.unwrap();
    pool.run("import time\ndef slow(i):\n    time.sleep(0.002)\n    return i\ndef crash():\n    os._exit(7)")
        .await
        .unwrap();
    for round in 0..3 {
        let others: Vec<_> = (0..40)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.call_function("slow", vec![i.into()]).await })
            })
            .collect();
        let crashed = pool.call_function("crash", vec![]).await;
        match crashed {
            Err(PyRunnerError::WorkerDied { reason }) => {
                assert!(reason.contains('7'), "the exit status is named: {reason}")
            }
            other => panic!("round {round}: expected WorkerDied, got {other:?}"),
        }
        for (i, call) in others.into_iter().enumerate() {
            assert_eq!(
                call.await.unwrap().unwrap(),
                Value::from(i),
                "round {round}"
            );
        }
    }
    let restarts: u64 = pool.stats().iter().map(|w| w.restarts).sum();
    assert_eq!(restarts, 3);
    assert_eq!(pool.call_function("slow", vec![5.into()]).await.unwrap(), 5);
}

#[test]
fn a_run_that_failed_is_not_replayed() {
    let pool = pool::pool(2);
    pool.run_sync(DEFS).unwrap();
    match pool.run_sync("raise ValueError('bad run')") {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "ValueError"),
        other => panic!("expected the ValueError, got {other:?}"),
    }
    pool.run_sync("AFTER = 'kept'").unwrap();
    let victim = pool.stats()[1].pid;
    kill(victim, 9);
    eventually("the worker was replaced", || {
        let now = pool.stats()[1].pid;
        now != victim && now != 0
    });
    for reply in pool.map_sync("pid", vec![Vec::new(); 20]) {
        reply.unwrap();
    }
    let afters = pool.map_sync("var", vec![vec!["AFTER".into()]; 20]);
    assert!(afters.into_iter().all(|a| a.unwrap() == "kept"));
}

/// A pool of `workers` whose second run read a file that is gone now (its
/// folder and path come along): a fresh child cannot replay that run until
/// the file is written again.
fn pool_whose_run_read_a_file_now_gone(workers: usize) -> (tempfile::TempDir, PathBuf, PyPool) {
    let folder = tempfile::tempdir().unwrap();
    let flag = folder.path().join("flag");
    std::fs::write(&flag, "v").unwrap();
    let pool = pool::pool(workers);
    pool.run_sync(DEFS).unwrap();
    pool.run_sync(&format!("X = open({:?}).read()", flag.to_str().unwrap()))
        .unwrap();
    std::fs::remove_file(&flag).unwrap();
    (folder, flag, pool)
}

/// Waits until the first worker has a child other than `old`, then checks
/// that every worker answers.
fn first_worker_serves_again(pool: &PyPool, old: u32) {
    eventually("the first worker serves again", || {
        let pid = pool.stats()[0].pid;
        pid != old && pid != 0
    });
    assert_eq!(answering_pids(pool, 20), pids(pool));
}

#[test]
fn a_replacement_that_cannot_replay_a_run_fails_its_start_instead_of_serving() {
    let (_folder, flag, pool) = pool_whose_run_read_a_file_now_gone(1);
    match pool.eval_sync("os._exit(1)") {
        Err(PyRunnerError::WorkerDied { .. }) => {}
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // The fresh child cannot read the file: it must not answer without X.
    match pool.eval_sync("X") {
        Err(PyRunnerError::Startup(why)) => {
            assert!(why.contains("run number 2"), "{why}");
            assert!(why.contains("FileNotFoundError"), "{why}");
        }
        other => panic!("expected Startup naming the replayed run, got {other:?}"),
    }
    // Once the run can be replayed again, the next command's start succeeds.
    pool::restore(&flag, "v");
    assert_eq!(pool.eval_sync("X").unwrap(), "v");
}

#[test]
fn a_worker_whose_child_cannot_start_leaves_its_calls_to_the_others_until_it_can() {
    let (_folder, flag, pool) = pool_whose_run_read_a_file_now_gone(2);
    let before = pool.stats();
    kill(before[0].pid, 9);
    eventually("the killed worker tried a fresh child", || {
        pool.stats()[0].restarts == 1
    });
    // Its fresh child cannot replay the run; the other worker answers.
    for _ in 0..40 {
        assert_eq!(pool.eval_sync("X").unwrap(), "v");
    }
    for reply in pool.map_sync("var", vec![vec!["X".into()]; 40]) {
        assert_eq!(reply.unwrap(), "v");
    }
    assert_eq!(
        pool.stats()[0].pid,
        before[0].pid,
        "no child serves there yet"
    );
    // Once the run can be replayed, the worker starts a child on its own.
    pool::restore(&flag, "v");
    first_worker_serves_again(&pool, before[0].pid);
}

/// A run still in progress on one worker, that another worker's child ran
/// without raising before it died: a replacement that cannot replay it must
/// not serve without it once the run has succeeded everywhere.
#[test]
fn a_run_a_lost_child_had_answered_is_required_of_its_replacement() {
    let folder = tempfile::tempdir().unwrap();
    let file = |name: &str| folder.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(file("flag"), "v").unwrap();
    let pool = pool::pool(2);
    pool.run_sync(DEFS).unwrap();
    let [first, second] = [pool.stats()[0].pid, pool.stats()[1].pid];
    let run = pool::run_held_on(&pool, folder.path(), second);
    // The first worker's share is answered by now; its child then dies.
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::remove_file(file("flag")).unwrap();
    kill(first, 9);
    eventually("the first worker tried a fresh child", || {
        pool.stats()[0].restarts == 1
    });
    std::fs::write(file("go"), "").unwrap();
    run.join()
        .unwrap()
        .expect("the run succeeded on both workers");
    // Both workers ran it: the first one's fresh child, which cannot, must
    // not serve without it.
    for reply in pool.map_sync("var", vec![vec!["X".into()]; 40]) {
        assert_eq!(reply.unwrap(), "v");
    }
    pool::restore(std::path::Path::new(&file("flag")), "v");
    first_worker_serves_again(&pool, first);
    for reply in pool.map_sync("var", vec![vec!["X".into()]; 40]) {
        assert_eq!(reply.unwrap(), "v");
    }
}

/// `run_sync` inside a task, while an async `run` of another task on the
/// same (current-thread) runtime is still running on the workers: the
/// twin blocks the only thread that could poll that task, so it must not
/// wait for it; both runs reach every worker, in the order they came.
#[test]
fn run_sync_in_a_task_next_to_an_async_run_of_another_task() {
    pool::on_runtime(0, 60, || async {
        let pool = pool::pool(2);
        pool.run(DEFS).await.unwrap();
        let first = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run("time.sleep(0.2)\nORDER = ['first']").await })
        };
        tokio::task::yield_now().await;
        pool.run_sync("ORDER.append('second')").unwrap();
        first.await.unwrap().unwrap();
        pool.run("def order():\n    return [os.getpid(), ORDER]")
            .await
            .unwrap();
        let mut answered = std::collections::BTreeSet::new();
        for reply in pool.map("order", vec![Vec::new(); 40]).await {
            let reply = reply.unwrap();
            assert_eq!(reply[1], serde_json::json!(["first", "second"]));
            answered.insert(reply[0].as_u64().unwrap() as u32);
        }
        assert_eq!(answered, pids(&pool), "every worker ran both");
    });
}
