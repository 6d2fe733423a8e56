//! PyPool: calls go to idle workers first, run in parallel, and many callers share the pool.

use crate::faults;
use crate::pool;

use async_py::{PyRunnerError, Value};
use faults::eventually;
use pool::{pids, text, DEFS};

#[tokio::test]
async fn two_calls_run_at_the_same_time_on_two_workers() {
    let pool = pool::pool(2);
    pool.run(DEFS).await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    let (a, b) = tokio::join!(
        pool.call_function("meet", vec!["a".into(), "b".into(), text(folder.path())]),
        pool.call_function("meet", vec!["b".into(), "a".into(), text(folder.path())]),
    );
    // Each call waits for the other's file: both return only if they overlap.
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a, b, "the two calls ran on different workers");
    let expected: std::collections::BTreeSet<u32> =
        [a, b].iter().map(|p| p.as_u64().unwrap() as u32).collect();
    assert_eq!(pids(&pool), expected);
}

#[tokio::test]
async fn calls_one_after_another_stay_on_the_worker_that_answered_last() {
    let pool = pool::pool(3);
    pool.run(DEFS).await.unwrap();
    let first = pool.call_function("pid", vec![]).await.unwrap();
    for _ in 0..30 {
        assert_eq!(pool.call_function("pid", vec![]).await.unwrap(), first);
    }
    let stats = pool.stats();
    assert_eq!(stats.iter().map(|w| w.calls).sum::<u64>(), 31);
    assert!(stats.iter().any(|w| w.calls == 31), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_is_chosen_over_a_busy_one() {
    let pool = pool::pool(2);
    pool.run(DEFS).await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    let held = {
        let pool = pool.clone();
        let folder = text(folder.path());
        tokio::spawn(async move { pool.call_function("hold", vec![folder]).await })
    };
    eventually("the held call started", || {
        folder.path().join("held").exists()
    });
    let busy: Vec<_> = pool.stats().into_iter().filter(|w| w.busy).collect();
    assert_eq!(busy.len(), 1, "one worker is busy: {:?}", pool.stats());
    for _ in 0..20 {
        let pid = pool.call_function("pid", vec![]).await.unwrap();
        assert_ne!(
            pid,
            Value::from(busy[0].pid),
            "a call went to the busy worker"
        );
    }
    std::fs::write(folder.path().join("go"), "").unwrap();
    assert_eq!(held.await.unwrap().unwrap(), Value::from(busy[0].pid));
    eventually("no worker busy", || pool.stats().iter().all(|w| !w.busy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_get_their_own_results_and_share_the_workers() {
    let pool = pool::pool(2);
    pool.run("def add(a, b):\n    return a + b").await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    let sum = pool.call_function("add", vec![t.into(), i.into()]).await;
                    assert_eq!(sum.unwrap(), Value::from(t + i));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.iter().map(|w| w.calls).sum::<u64>(), 16 * 200);
    assert!(
        stats.iter().all(|w| w.calls > 0),
        "both workers served: {stats:?}"
    );
}

#[tokio::test]
async fn callers_past_the_admission_bound_wait_their_turn() {
    // One worker admits a bounded number of calls; the rest wait, then run.
    let pool = pool::pool(1);
    pool.run("import time\ndef nap(i):\n    time.sleep(0.0005)\n    return i")
        .await
        .unwrap();
    let calls: Vec<_> = (0..500)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call_function("nap", vec![i.into()]).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), Value::from(i));
    }
    assert_eq!(pool.stats()[0].calls, 500);
}

#[test]
fn sync_twins_work_from_plain_threads() {
    let pool = pool::pool(2);
    pool.run_sync(DEFS).unwrap();
    assert_eq!(pool.workers(), 2);
    assert_eq!(pool.eval_sync("6 * 7").unwrap(), Value::from(42));
    pool.run_sync("async def twice(x):\n    return 2 * x")
        .unwrap();
    assert_eq!(
        pool.call_async_function_sync("twice", vec![21.into()])
            .unwrap(),
        Value::from(42)
    );
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || pool.call_function_sync("pid", vec![]).unwrap())
        })
        .collect();
    for thread in threads {
        let pid = thread.join().unwrap().as_u64().unwrap() as u32;
        assert!(pids(&pool).contains(&pid));
    }
    match pool.call_function_sync("missing", vec![]) {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "NameError"),
        other => panic!("expected a NameError, got {other:?}"),
    }
}

#[test]
fn stats_name_each_worker() {
    let pool = pool::pool(3);
    pool.run_sync(DEFS).unwrap();
    let stats = pool.stats();
    assert_eq!(stats.len(), 3);
    assert_eq!(pids(&pool).len(), 3, "three distinct children: {stats:?}");
    for worker in &stats {
        assert!(faults::is_running(worker.pid));
        assert_eq!((worker.calls, worker.restarts, worker.busy), (0, 0, false));
    }
    let answered = pool::answering_pids(&pool, 30);
    assert_eq!(
        answered,
        pids(&pool),
        "the first calls of a burst go to idle workers"
    );
    assert_eq!(pool.stats().iter().map(|w| w.calls).sum::<u64>(), 30);
}

#[tokio::test]
async fn sync_twins_work_inside_a_runtime_task_many_times_over() {
    // Blocking twins called from a runtime's own task: tokio's per-task
    // budget for its sync primitives runs out and must not spin the caller.
    let pool = pool::pool(1);
    pool.run_sync("def one():\n    return 1").unwrap();
    for _ in 0..1000 {
        assert_eq!(
            pool.call_function_sync("one", vec![]).unwrap(),
            Value::from(1)
        );
    }
    pool.stop_sync().unwrap();
}

/// A `_sync` twin inside a task blocks that task's thread. The places in
/// the pool's admission are all held by calls of other tasks on the same
/// (current-thread) runtime, which only that thread would poll again to
/// give them back: the twin must not wait for one.
#[test]
fn a_sync_twin_in_a_task_waits_for_no_place_held_by_other_tasks() {
    pool::on_runtime(0, 60, || async {
        let pool = pool::pool(1);
        pool.run("import time\ndef nap():\n    time.sleep(0.02)\n    return 1")
            .await
            .unwrap();
        // More calls than one worker admits (64): the rest wait for places.
        let naps: Vec<_> = (0..100)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.call_function("nap", vec![]).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(pool.stats()[0].busy, "the naps hold the worker");
        assert_eq!(pool.eval_sync("1 + 1").unwrap(), Value::from(2));
        assert_eq!(
            pool.map_sync("abs", vec![vec![Value::from(-3)]; 3]),
            vec![Ok(Value::from(3)); 3]
        );
        for nap in naps {
            assert_eq!(nap.await.unwrap().unwrap(), Value::from(1));
        }
    });
}

/// Both threads of a runtime blocked in `_sync` calls, next to an async
/// `map` whose calls hold every place in the admission.
#[test]
fn sync_twins_on_every_runtime_thread_next_to_an_async_map() {
    pool::on_runtime(2, 120, || async {
        let pool = pool::pool(2);
        pool.run("def same(x):\n    return x").await.unwrap();
        let map = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let inputs = (0..20_000).map(|x| vec![Value::from(x)]).collect();
                pool.map("same", inputs).await
            })
        };
        let twins: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for i in 0..2000 {
                        let got = pool.call_function_sync("same", vec![Value::from(i)]);
                        assert_eq!(got.unwrap(), Value::from(i));
                    }
                })
            })
            .collect();
        let mapped = map.await.unwrap();
        assert_eq!(mapped.len(), 20_000);
        assert!(mapped
            .into_iter()
            .enumerate()
            .all(|(i, result)| result == Ok(Value::from(i))));
        for twin in twins {
            twin.await.unwrap();
        }
    });
}

/// A call queued behind one that kills its worker's child never started
/// there: it moves to the other worker, and its load goes with it, so the
/// lost worker counts as idle while the call waits elsewhere, and the
/// call is counted on the worker that answered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_moved_off_a_lost_child_counts_on_the_worker_that_runs_it() {
    let pool = pool::pool(2);
    let folder = tempfile::tempdir().unwrap();
    pool.run(
        "import os, time\n\
         def wait_for(folder, started, go):\n\
         \x20   open(os.path.join(folder, started), 'w').close()\n\
         \x20   while not os.path.exists(os.path.join(folder, go)):\n\
         \x20       time.sleep(0.01)\n\
         def die_on(folder):\n\
         \x20   wait_for(folder, 'dying', 'die')\n\
         \x20   os._exit(3)\n\
         def pid():\n\
         \x20   return os.getpid()",
    )
    .await
    .unwrap();
    let dir = text(folder.path());
    let call = |name: &'static str, args: Vec<Value>| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call_function(name, args).await })
    };
    // Worker 0 (idle, first from the warm one) takes the call that dies,
    // worker 1 (the idle one) the call that holds; with both busy, ties go
    // to each in turn from worker 0, so the third call queues on worker 0.
    let dying = call("die_on", vec![dir.clone()]);
    eventually("the dying call started", || {
        folder.path().join("dying").exists()
    });
    let held = call("wait_for", vec![dir.clone(), "held".into(), "go".into()]);
    eventually("the held call started", || {
        folder.path().join("held").exists()
    });
    let moved = call("pid", vec![]);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    std::fs::write(folder.path().join("die"), "").unwrap();
    assert!(matches!(
        dying.await.unwrap(),
        Err(PyRunnerError::WorkerDied { .. })
    ));
    // The moved call waits behind the held one on worker 1.
    eventually("the lost child's worker counts as idle", || {
        let stats = pool.stats();
        !stats[0].busy && stats[1].busy
    });
    assert!(
        !moved.is_finished(),
        "the moved call waits for the held one"
    );
    std::fs::write(folder.path().join("go"), "").unwrap();
    held.await.unwrap().unwrap();
    let ran_on = moved.await.unwrap().unwrap();
    let stats = pool.stats();
    assert_eq!(ran_on, Value::from(stats[1].pid), "{stats:?}");
    assert_eq!(stats[0].restarts, 1, "{stats:?}");
    let calls: Vec<u64> = stats.iter().map(|w| w.calls).collect();
    assert_eq!(calls, [1, 2], "each call counts where it was answered");
    eventually("no worker busy", || pool.stats().iter().all(|w| !w.busy));
}
