#![cfg(feature = "subprocess")]
//! PyPool::max_calls_per_worker: workers are replaced after that many calls, with no call failing or waiting for a start.

mod faults;
mod pool;

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
