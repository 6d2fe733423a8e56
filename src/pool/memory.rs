//! A worker's resident memory, read from `/proc` after its calls for
//! `max_memory_per_worker`, at most once per [`MEMORY_CHECK_GAP`].

use std::fs;
use std::sync::OnceLock;
use std::time::Instant;

use crate::tuning::MEMORY_CHECK_GAP;

/// When a worker's memory was last looked at, and whose it is.
#[derive(Default)]
pub(super) struct MemoryWatch {
    checked: Option<Instant>,
    /// The child's pid as the pool knows it, and the process that runs its
    /// Python: the same, or the worker behind the child's stand-in.
    process: Option<(u32, u32)>,
}

impl MemoryWatch {
    /// Whether the child `pid` holds more than `limit` resident bytes. Not
    /// looked at (false) within [`MEMORY_CHECK_GAP`] of the last look, nor
    /// when `/proc` cannot tell.
    pub(super) fn over(&mut self, pid: u32, limit: u64, now: Instant) -> bool {
        if pid == 0 {
            return false;
        }
        if let Some(checked) = self.checked {
            if now.saturating_duration_since(checked) < MEMORY_CHECK_GAP {
                return false;
            }
        }
        self.checked = Some(now);
        let process = match self.process {
            Some((known, process)) if known == pid => process,
            _ => {
                let process = python_process(pid);
                self.process = Some((pid, process));
                process
            }
        };
        resident_bytes(process).is_some_and(|bytes| bytes > limit)
    }
}

/// The resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size()))
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size)
            .ok()
            .filter(|&size| size > 0)
            .unwrap_or(4096)
    })
}

/// The process that runs the Python of child `pid`. A contained child is a
/// stand-in whose children live in a pid namespace of its own (see
/// `python/contain.py`): its init, pid 1 there, and the worker, which is
/// the one wanted. Found once per child by a walk over `/proc`.
fn python_process(pid: u32) -> u32 {
    let namespace = |kind: &str| fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
    let own = namespace("pid");
    if own.is_none() || own == namespace("pid_for_children") {
        return pid;
    }
    // The stand-in forks both at once, so the worker's pid is most often a
    // few past its own: those are tried before the walk (about 1 ms for
    // 80 processes).
    let near = (1..=NEAR).filter_map(|step| pid.checked_add(step));
    let everyone = fs::read_dir("/proc").into_iter().flatten().flatten();
    let everyone = everyone.filter_map(|entry| entry.file_name().to_str()?.parse().ok());
    near.chain(everyone)
        .find(|&candidate| is_worker_of(candidate, pid))
        .unwrap_or(pid)
}

/// How many pids past a stand-in's are tried first for its worker.
const NEAR: u32 = 8;

/// Whether `candidate` is the worker behind stand-in `pid`: its child, and
/// not the init of its namespace (pid 1 there).
fn is_worker_of(candidate: u32, pid: u32) -> bool {
    if parent_of(candidate) != Some(pid) {
        return false;
    }
    let status = fs::read_to_string(format!("/proc/{candidate}/status")).unwrap_or_default();
    let inner_pid = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last());
    inner_pid != Some("1")
}

/// The parent of process `pid`, from `/proc/<pid>/stat` (its name, which
/// may hold spaces and parentheses, ends at the last `)`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}
