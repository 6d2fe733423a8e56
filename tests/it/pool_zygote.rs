//! PyPool: the workers' children are forks of one zygote, a child of ours;
//! without it they are started the usual way.

use crate::faults;
use crate::pool;

use std::collections::BTreeSet;

use faults::{eventually, is_gone, kill};
use pool::DEFS;

/// The parent pid of a process, from /proc.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process exists");
    // After the command name in parentheses: the state, then the parent pid.
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse().ok())
        .expect("a parent pid")
}

/// The process that serves as worker `pid`: the worker itself or, where it
/// runs in a pid namespace of its own, its child there that is not the
/// namespace's init (pid 1 in it).
fn serving_process(pid: u32) -> u32 {
    let status_of = |child: u32| std::fs::read_to_string(format!("/proc/{child}/status")).ok();
    let field = |status: &str, name: &str| -> Option<String> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        line.split_whitespace().last().map(str::to_owned)
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&child| {
            status_of(child).is_some_and(|status| {
                field(&status, "PPid:") == Some(pid.to_string())
                    && field(&status, "NSpid:") != Some("1".into())
            })
        })
        .unwrap_or(pid)
}

/// The arguments a process was started with.
fn arguments(pid: u32) -> Vec<String> {
    let line = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the process exists");
    line.split(|&byte| byte == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .filter(|arg| !arg.is_empty())
        .collect()
}

/// Whether a started child was told to share the cores: the flag comes
/// just before its last argument (the reply ring's path, which may be empty
/// and then does not show).
fn told_to_share(pid: u32) -> bool {
    let args = arguments(pid);
    args.iter().rev().take(2).any(|arg| arg == "--share-cores")
}

/// The one zygote behind the pool's workers.
fn zygote_of(pool: &async_py::PyPool) -> u32 {
    let parents: BTreeSet<u32> = pool::pids(pool).into_iter().map(parent_of).collect();
    assert_eq!(parents.len(), 1, "one parent for all workers: {parents:?}");
    parents.into_iter().next().unwrap()
}

#[test]
fn workers_are_forks_of_one_zygote_that_ends_with_the_pool() {
    let pool = pool::pool(3);
    pool.run_sync(DEFS).unwrap();
    let workers = pool::pids(&pool);
    assert_eq!(workers.len(), 3);
    let zygote = zygote_of(&pool);
    assert_ne!(zygote, std::process::id());
    assert_eq!(
        parent_of(zygote),
        std::process::id(),
        "the zygote is our child"
    );
    assert_eq!(
        arguments(zygote).last().map(String::as_str),
        Some("--zygote")
    );
    // Forked workers answer like started ones, with each their own pid.
    assert_eq!(pool::answering_pids(&pool, 60), workers);
    drop(pool);
    for pid in workers.into_iter().chain([zygote]) {
        eventually("the workers and the zygote are reaped", || is_gone(pid));
    }
}

#[test]
fn a_killed_worker_is_forked_anew_by_the_zygote() {
    let pool = pool::pool(2);
    pool.run_sync(DEFS).unwrap();
    let zygote = zygote_of(&pool);
    let victim = *pool::pids(&pool).iter().next().unwrap();
    kill(victim, 9);
    eventually("the worker is replaced", || {
        let pids = pool::pids(&pool);
        !pids.contains(&victim) && pids.len() == 2 && !pids.contains(&0)
    });
    assert_eq!(zygote_of(&pool), zygote);
    assert_eq!(pool::answering_pids(&pool, 40), pool::pids(&pool));
    // The replacement ran every `run`: `pid` is one of DEFS.
    assert_eq!(pool.eval_sync("callable(pid)").unwrap(), true);
}

#[test]
fn when_the_zygote_dies_its_workers_go_and_the_pool_starts_new_ones() {
    let pool = pool::pool(2);
    pool.run_sync(DEFS).unwrap();
    let workers = pool::pids(&pool);
    let zygote = zygote_of(&pool);
    kill(zygote, 9);
    // The kernel ends a forked worker with its zygote.
    for pid in &workers {
        eventually("a worker ends with its zygote", || {
            !faults::is_running(*pid)
        });
    }
    eventually("both workers are back", || {
        let pids = pool::pids(&pool);
        pids.len() == 2 && pids.is_disjoint(&workers) && !pids.contains(&0)
    });
    // Started the usual way now: children of ours, with every definition,
    // told to share the cores as forked ones are.
    for pid in pool::pids(&pool) {
        assert_eq!(parent_of(pid), std::process::id());
        assert!(told_to_share(pid), "arguments: {:?}", arguments(pid).last());
    }
    assert_eq!(pool::answering_pids(&pool, 40), pool::pids(&pool));
    eventually("the zygote is reaped", || is_gone(zygote));
}

#[test]
fn a_runners_child_and_the_zygote_are_not_told_to_share_the_cores() {
    let runner = async_py::PyRunner::builder().subprocess().build().unwrap();
    assert!(!told_to_share(faults::child_pid(&runner)));
    let pool = pool::pool(1);
    let zygote = zygote_of(&pool);
    assert_eq!(
        arguments(zygote).last().map(String::as_str),
        Some("--zygote")
    );
    assert!(!told_to_share(zygote));
}

#[test]
fn a_forked_worker_says_how_it_ended_and_exits_as_a_started_one_does() {
    let pool = pool::pool(1);
    let folder = tempfile::tempdir().unwrap();
    let marker = folder.path().join("atexit-ran");
    pool.run_sync(&format!(
        "import atexit\natexit.register(lambda: open({:?}, 'w').close())",
        marker.to_str().unwrap()
    ))
    .unwrap();
    for (code, said) in [
        ("__import__('os')._exit(7)", "exited with status 7"),
        (
            "__import__('os').kill(__import__('os').getpid(), 9)",
            "killed by signal 9",
        ),
    ] {
        match pool.eval_sync(code) {
            Err(async_py::PyRunnerError::WorkerDied { reason }) => {
                assert!(reason.contains(said), "{said:?} in {reason:?}")
            }
            other => panic!("{code}: expected WorkerDied, got {other:?}"),
        }
    }
    assert!(!marker.exists(), "neither ending runs atexit handlers");
    // The third child (forked, with the run replayed) ends at stop as a
    // started one does: through the interpreter's exit, atexit included.
    pool.stop_sync().unwrap();
    eventually("the atexit handler ran", || marker.exists());
}

#[test]
fn stop_ends_and_reaps_the_zygote_with_the_workers() {
    let pool = pool::pool(2);
    let workers = pool::pids(&pool);
    let zygote = zygote_of(&pool);
    pool.stop_sync().unwrap();
    // Reaped by the time stop returns, with the handle still held.
    for pid in workers.into_iter().chain([zygote]) {
        assert!(is_gone(pid), "process {pid} outlived stop()");
    }
    assert!(pool.eval_sync("1").is_err());
}

#[test]
fn a_file_in_the_working_folder_stands_in_for_no_module_the_zygote_imports() {
    // The zygote tries `msgpack`; a stand-in here would mark every fork.
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("msgpack.py"),
        "import builtins\nbuiltins.STOOD_IN = True\nraise ImportError('a stand-in')\n",
    )
    .unwrap();
    let pool = pool::builder(2).current_dir(folder.path()).build().unwrap();
    pool.run_sync(DEFS).unwrap();
    for pid in pool::pids(&pool) {
        assert_ne!(parent_of(pid), std::process::id(), "forked by the zygote");
    }
    let marked = pool.eval_sync("hasattr(__import__('builtins'), 'STOOD_IN')");
    assert_eq!(marked.unwrap(), false);
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_forked_worker_maps_its_reply_ring_and_closes_the_fd_it_was_passed() {
    let pool = pool::pool(2);
    pool.run_sync(DEFS).unwrap();
    for pid in pool::pids(&pool) {
        assert_ne!(parent_of(pid), std::process::id(), "forked by the zygote");
        let pid = serving_process(pid);
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(maps.contains("memfd:async_py-replies"), "{maps}");
        // Python's mmap keeps a duplicate of the fd it mapped; the passed
        // one is closed.
        let ring_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
            .filter(|target| target.to_string_lossy().contains("async_py-replies"))
            .count();
        assert_eq!(ring_fds, 1, "fds of the ring in worker {pid}");
    }
}
