//! PyPool: stop() and dropping the last handle end and reap every worker.

use crate::faults;
use crate::pool;

use async_py::PyRunnerError;
use faults::{eventually, is_gone};

#[test]
fn dropping_the_last_handle_reaps_every_worker() {
    let pool = pool::pool(3);
    let clone = pool.clone();
    let pids = pool::pids(&pool);
    assert_eq!(pids.len(), 3);
    drop(pool);
    assert!(
        pids.iter().all(|pid| faults::is_running(*pid)),
        "a clone keeps them"
    );
    drop(clone);
    for pid in pids {
        eventually("a worker is reaped", || is_gone(pid));
    }
}

#[test]
fn stop_reaps_every_worker_and_refuses_later_calls() {
    let pool = pool::pool(2);
    pool.run_sync("def one():\n    return 1").unwrap();
    let pids = pool::pids(&pool);
    pool.stop_sync().unwrap();
    for pid in pids {
        eventually("a stopped worker is reaped", || is_gone(pid));
    }
    assert!(matches!(
        pool.call_function_sync("one", vec![]),
        Err(PyRunnerError::Stopped)
    ));
    assert!(matches!(pool.eval_sync("1"), Err(PyRunnerError::Stopped)));
    assert!(matches!(
        pool.run_sync("x = 1"),
        Err(PyRunnerError::Stopped)
    ));
    pool.stop_sync().unwrap();
}

#[test]
fn a_pool_that_cannot_start_says_why_and_leaves_nothing_behind() {
    let err = pool::builder(3)
        .startup("raise RuntimeError('no config')")
        .build()
        .unwrap_err();
    match err {
        PyRunnerError::Startup(why) => assert!(why.contains("no config"), "{why}"),
        other => panic!("expected Startup, got {other:?}"),
    }
    let missing = async_py::PyPool::builder()
        .python("/no/such/python")
        .build()
        .unwrap_err();
    assert!(matches!(missing, PyRunnerError::Startup(ref why) if why.contains("/no/such/python")));
}

#[test]
fn stop_also_ends_a_worker_retired_by_a_recycle() {
    let pool = pool::builder(2).max_calls_per_worker(1).build().unwrap();
    pool.run_sync("import os, time\ndef nap():\n    time.sleep(0.5)\n    return os.getpid()")
        .unwrap();
    // One answered call starts a recycle; two naps then keep both the
    // worker being recycled and the other one busy.
    pool.eval_sync("1").unwrap();
    let naps: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || pool.call_function_sync("nap", vec![]))
        })
        .collect();
    eventually("a worker was swapped out", || {
        pool.stats().iter().any(|w| w.restarts > 0)
    });
    // The swapped-out worker still runs its nap: stop waits for it and ends it.
    pool.stop_sync().unwrap();
    for nap in naps {
        let pid = nap.join().unwrap().unwrap().as_u64().unwrap() as u32;
        assert!(is_gone(pid), "child {pid} outlived stop()");
    }
}

#[test]
fn stop_ends_a_worker_left_without_a_child_and_starts_none_after() {
    pool::within(60, || {
        let folder = tempfile::tempdir().unwrap();
        let flag = folder.path().join("flag");
        std::fs::write(&flag, "v").unwrap();
        let pool = pool::pool(2);
        pool.run_sync(&format!("X = open({:?}).read()", flag.to_str().unwrap()))
            .unwrap();
        // The run cannot be replayed now: the killed worker's replacement
        // fails to start, and the worker is left without a child.
        std::fs::remove_file(&flag).unwrap();
        let before = pool.stats();
        faults::kill(before[0].pid, 9);
        eventually("the killed worker tried a fresh child", || {
            pool.stats()[0].restarts >= 1
        });
        assert_eq!(pool.eval_sync("X").unwrap(), "v", "the other worker serves");
        pool.stop_sync()
            .expect("stop with a worker that has no child is Ok");
        assert!(matches!(pool.eval_sync("1"), Err(PyRunnerError::Stopped)));
        eventually("the other worker is reaped", || is_gone(before[1].pid));
        // A start would succeed again from here; a worker still trying
        // would be past its next try (2 s after the last) within 3 s, and
        // show its new child's pid.
        pool::restore(&flag, "v");
        std::thread::sleep(std::time::Duration::from_secs(3));
        assert_eq!(
            pool.stats()[0].pid,
            before[0].pid,
            "no child started after stop()"
        );
    });
}

/// `stop` while a recycle's replacement is still starting (its `startup`
/// takes a while): no list holds it yet, and `stop` still waits for its
/// child to end.
#[test]
fn stop_ends_a_replacement_that_is_still_starting() {
    pool::within(60, || {
        let folder = tempfile::tempdir().unwrap();
        let startup = format!(
            "import os, time\n\
             open(os.path.join({dir:?}, str(os.getpid())), 'w').close()\n\
             if os.path.exists(os.path.join({dir:?}, 'slow')):\n\
             \x20   time.sleep(1)",
            dir = folder.path().to_str().unwrap()
        );
        let pool = pool::builder(1)
            .startup(startup)
            .max_calls_per_worker(1)
            .build()
            .unwrap();
        std::fs::write(folder.path().join("slow"), "").unwrap();
        pool.eval_sync("1").unwrap(); // the recycle starts its replacement
        let started = |folder: &std::path::Path| -> Vec<u32> {
            std::fs::read_dir(folder)
                .unwrap()
                .filter_map(|entry| entry.unwrap().file_name().to_str()?.parse().ok())
                .collect()
        };
        eventually("the replacement's child runs its startup", || {
            started(folder.path()).len() == 2
        });
        pool.stop_sync().unwrap();
        for pid in started(folder.path()) {
            assert!(is_gone(pid), "child {pid} outlived stop()");
        }
    });
}

/// A worker whose child crashes while a copy it forked holds its pipes
/// fails that call with `WorkerDied` at once, the copy is killed, and the
/// worker serves again with a fresh child.
#[test]
fn a_crash_is_noticed_while_a_copy_of_the_worker_lives() {
    pool::within(40, || {
        for start in [
            "import multiprocessing, time\n\
             proc = multiprocessing.Process(target=time.sleep, args=(120,))\n\
             proc.start()\n\
             copy = proc.pid",
            "import os, time\n\
             copy = os.fork()\n\
             if copy == 0:\n\
             \x20   time.sleep(120)\n\
             \x20   os._exit(0)",
        ] {
            let pool = pool::pool(1);
            pool.run_sync(start).unwrap();
            // Its pid where this test looks: the worker's may be a pid
            // namespace's.
            pool.run_sync(faults::OUTER_PID).unwrap();
            let copy = pool.eval_sync("outer_pid(copy)").unwrap().as_u64().unwrap() as u32;
            assert!(faults::is_running(copy));
            let crashed = pool::within(20, {
                let pool = pool.clone();
                move || pool.eval_sync("__import__('ctypes').string_at(0)")
            });
            match crashed {
                Err(PyRunnerError::WorkerDied { reason }) => {
                    assert!(reason.contains("SIGSEGV"), "{reason}")
                }
                other => panic!("expected WorkerDied, got {other:?}"),
            }
            eventually("the copy is killed", || !faults::is_running(copy));
            assert_eq!(pool.eval_sync("6 * 7").unwrap(), 42);
        }
    });
}

/// A worker whose child does not answer `stop` (stopped by SIGSTOP here)
/// is killed after a grace: the pool's `stop` returns `Ok` in bounded time,
/// with every worker reaped.
#[test]
fn stop_ends_a_worker_that_does_not_answer() {
    let pool = pool::pool(2);
    let pids = pool::pids(&pool);
    let stopped = *pids.iter().next().unwrap();
    faults::kill(stopped, libc::SIGSTOP);
    pool::within(10, move || pool.stop_sync()).expect("stop is Ok");
    for pid in pids {
        assert!(is_gone(pid), "worker {pid} outlived stop()");
    }
}

/// The pids of the copies that `setsid_copy` reported in `folder`, once
/// there are `count`, each with a guard that kills it if the test fails.
fn copies_in(folder: &std::path::Path, count: usize) -> Vec<faults::KillOnDrop> {
    let reports = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_none())
            .collect()
    };
    eventually("every copy reports", || reports().len() == count);
    let copies: Vec<_> = reports()
        .iter()
        .map(|report| faults::KillOnDrop(faults::reported_pid(report)))
        .collect();
    assert!(copies.iter().all(|copy| faults::is_running(copy.0)));
    copies
}

#[test]
fn stop_ends_what_the_workers_started_outside_their_process_groups() {
    pool::within(60, || {
        let folder = tempfile::tempdir().unwrap();
        let pool = pool::pool(2);
        // One copy per worker, each reporting in a file of its own.
        let report = format!(
            "os.path.join({}, __import__('uuid').uuid4().hex)",
            faults::python_text(folder.path())
        );
        pool.run_sync(&faults::setsid_copy(&report)).unwrap();
        let copies = copies_in(folder.path(), 2);
        pool.stop_sync().unwrap();
        for copy in copies {
            eventually("a worker's copy is killed", || !faults::is_running(copy.0));
        }
    });
}

#[test]
fn a_killed_workers_copy_outside_its_process_group_ends_with_it() {
    pool::within(60, || {
        let folder = tempfile::tempdir().unwrap();
        let pool = pool::pool(1);
        let report = folder.path().join("copy");
        pool.run_sync(&faults::setsid_copy(&faults::python_text(&report)))
            .unwrap();
        let copy = copies_in(folder.path(), 1).remove(0);
        let worker = pool.stats()[0].pid;
        faults::kill(worker, 9);
        eventually("the killed worker's copy is killed", || {
            !faults::is_running(copy.0)
        });
        eventually("the worker is replaced", || {
            let now = pool.stats()[0].pid;
            now != worker && now != 0
        });
        assert_eq!(pool.eval_sync("1 + 1").unwrap(), 2);
    });
}
