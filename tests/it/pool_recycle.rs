//! PyPool::max_calls_per_worker: workers are replaced after that many calls, with no call failing or waiting for a start.

use crate::faults;
use crate::pool;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_py::Value;
use faults::eventually;
use pool::DEFS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_recycled_and_keep_every_definition() {
    let pool = pool::builder(2)
        .startup("FROM_STARTUP = 1")
        .max_calls_per_worker(50)
        .build()
        .unwrap();
    pool.run(DEFS).await.unwrap();
    pool.run("def state(i):\n    return [os.getpid(), FROM_STARTUP, LATE, i]")
        .await
        .unwrap();
    pool.run("LATE = 'yes'").await.unwrap();
    let first = pool::pids(&pool);
    let mut seen = BTreeSet::new();
    let mut calls_sent = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    // Rounds of calls until every worker was recycled at least twice; the
    // old children answer while their replacements start.
    let mut round = 0;
    let mut last_run = None;
    while pool.stats().iter().any(|w| w.restarts < 2) {
        assert!(
            Instant::now() < deadline,
            "never recycled: {:?}",
            pool.stats()
        );
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.call_function("state", vec![i.into()]).await })
            })
            .collect();
        calls_sent += 50;
        for (i, call) in calls.into_iter().enumerate() {
            let state = call
                .await
                .unwrap()
                .unwrap_or_else(|err| panic!("round {round}: {err}"));
            assert_eq!(state[1], Value::from(1));
            assert_eq!(state[2], Value::from("yes"));
            assert_eq!(state[3], Value::from(i));
            seen.insert(state[0].as_u64().unwrap() as u32);
        }
        if round % 4 == 3 {
            // A run sent while recycles are under way reaches the new children too.
            pool.run(&format!("LATE = 'yes'\nROUND = {round}"))
                .await
                .unwrap();
            last_run = Some(round);
        }
        round += 1;
    }
    assert!(seen.len() >= 4, "new children answered: {seen:?}");
    let stats = pool.stats();
    assert_eq!(stats.iter().map(|w| w.calls).sum::<u64>(), calls_sent);
    let last_run = last_run.expect("a run was sent during the recycles");
    for seen_round in pool.map("var", vec![vec!["ROUND".into()]; 20]).await {
        assert_eq!(
            seen_round.unwrap(),
            Value::from(last_run),
            "every child ran every run"
        );
    }
    // Retired children end once their last call is answered.
    let current = pool::pids(&pool);
    for pid in seen.union(&first).filter(|pid| !current.contains(pid)) {
        eventually("a retired child exits", || !faults::is_running(*pid));
    }
}

#[test]
fn a_recycle_whose_replacement_cannot_replay_a_run_keeps_the_old_worker() {
    let folder = tempfile::tempdir().unwrap();
    let flag = folder.path().join("flag");
    std::fs::write(&flag, "v").unwrap();
    let pool = pool::builder(1).max_calls_per_worker(5).build().unwrap();
    pool.run_sync(DEFS).unwrap();
    pool.run_sync(&format!("X = open({:?}).read()", flag.to_str().unwrap()))
        .unwrap();
    std::fs::remove_file(&flag).unwrap();
    let first = pool.stats()[0].pid;
    // Past the limit the recycle starts, fails its replay, and gives up.
    for _ in 0..20 {
        assert_eq!(
            pool.call_function_sync("var", vec!["X".into()]).unwrap(),
            "v"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(
            pool.call_function_sync("var", vec!["X".into()]).unwrap(),
            "v"
        );
    }
    assert_eq!(
        pool.stats()[0].pid,
        first,
        "the old worker, which holds X, serves on"
    );
}

/// A recycle's replacement catches up on a slow run while a `run` is made
/// on a current-thread runtime whose task the replayed run needs (a server
/// on that runtime): the `run` must not block the thread the server runs on.
#[test]
fn a_run_made_while_a_replacement_catches_up_does_not_wait_for_it() {
    pool::on_runtime(0, 60, || async {
        let folder = tempfile::tempdir().unwrap();
        let slow = folder.path().join("slow");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut peer, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    let _ = peer.read_exact(&mut byte).await;
                    let _ = peer.write_all(b"k").await;
                });
            }
        });
        let pool = pool::builder(1).max_calls_per_worker(1).build().unwrap();
        // Slow on every child started once `slow` exists.
        pool.run(&format!(
            "import os, socket, time\nif os.path.exists({:?}):\n    time.sleep(1)",
            slow.to_str().unwrap()
        ))
        .await
        .unwrap();
        std::fs::write(&slow, "").unwrap();
        let first = pool.stats()[0].pid;
        pool.eval("1").await.unwrap(); // the recycle starts
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Logged while the replacement starts: it catches up on this one
        // once ready, and that takes the server.
        pool.run(&format!(
            "time.sleep(1.5)\npeer = socket.create_connection(('127.0.0.1', {port}))\n\
             peer.sendall(b'x')\nANSWER = peer.recv(1).decode()\npeer.close()"
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        pool.run("AFTER = 1").await.unwrap();
        let replaced = async {
            while pool.stats()[0].pid == first {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), replaced)
            .await
            .expect("the replacement took over");
        assert_eq!(
            pool.eval("[ANSWER, AFTER]").await.unwrap(),
            serde_json::json!(["k", 1])
        );
    });
}

/// Runs made back to back, from two threads, while a replacement starts:
/// it takes over while they go on, not only once they stop.
#[test]
fn back_to_back_runs_do_not_hold_up_a_recycle() {
    let pool = pool::builder(1).max_calls_per_worker(1).build().unwrap();
    pool.run_sync("import time\nRUNS = 0").unwrap();
    let first = pool.stats()[0].pid;
    let going = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (pool, going) = (pool.clone(), going.clone());
            std::thread::spawn(move || {
                while going.load(std::sync::atomic::Ordering::SeqCst) {
                    pool.run_sync("time.sleep(0.005)\nRUNS += 1").unwrap();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    pool.eval_sync("1").unwrap(); // the recycle starts
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.stats()[0].pid == first && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let replaced = pool.stats()[0].pid != first;
    going.store(false, std::sync::atomic::Ordering::SeqCst);
    for runs in loops {
        runs.join().unwrap();
    }
    assert!(replaced, "the replacement took over while runs went on");
    // Every run reached the replacement, once: it holds the count the old one had.
    let runs = pool.eval_sync("RUNS").unwrap();
    assert!(runs.as_u64().unwrap() > 0);
    assert_eq!(
        pool.map_sync("abs", vec![vec![Value::from(-1)]; 4]).len(),
        4
    );
}

/// A replacement joins while a run is still in flight on another worker,
/// and raises in it (a file it reads is gone); a run made meanwhile raises
/// there too. Once the first run has succeeded everywhere the replacement
/// is given up, and the run made meanwhile, which ran without raising on
/// every worker that serves, is `Ok`.
#[test]
fn a_replacement_given_up_does_not_fail_runs_made_while_it_joined() {
    pool::within(90, || {
        let folder = tempfile::tempdir().unwrap();
        let file = |name: &str| folder.path().join(name).to_str().unwrap().to_owned();
        std::fs::write(file("flag"), "v").unwrap();
        let pool = pool::builder(2).max_calls_per_worker(2).build().unwrap();
        pool.run_sync(DEFS).unwrap();
        let first = pool::run_held_on(&pool, folder.path(), pool.stats()[0].pid);
        std::fs::remove_file(file("flag")).unwrap();
        // Calls: those on the slow worker wait behind the run; the other
        // worker answers its two and starts its recycle, whose replacement
        // cannot read the file.
        let calls = std::thread::spawn({
            let pool = pool.clone();
            move || pool.map_sync("pid", vec![Vec::new(); 8])
        });
        eventually("the other worker answered its calls", || {
            pool.stats()[1].calls >= 2
        });
        // Time for the replacement to start and join.
        std::thread::sleep(Duration::from_millis(500));
        let meanwhile = std::thread::spawn({
            let pool = pool.clone();
            move || pool.run_sync("Y = len(X)")
        });
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(file("go"), "").unwrap();
        first
            .join()
            .unwrap()
            .expect("the first run succeeded everywhere");
        meanwhile
            .join()
            .unwrap()
            .expect("the run made meanwhile succeeded on every worker that serves");
        assert!(calls.join().unwrap().into_iter().all(|pid| pid.is_ok()));
        for reply in pool.map_sync("var", vec![vec!["Y".into()]; 20]) {
            assert_eq!(reply.unwrap(), 1);
        }
    });
}
