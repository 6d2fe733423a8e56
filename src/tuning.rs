//! Every spin, hold, grace and retry duration of the crate, each with a
//! line on why it is what it is. How the spins were measured is in
//! `docs/TUNING.md`; a change to one is judged by paired runs of `bench`.
//!
//! A cross-thread wake-up costs tens of microseconds on small VMs, so the
//! side that expects an answer soon spins briefly before it parks; most
//! constants here are how long that is worth it.

// Each backend uses its own share of these.
#![cfg_attr(
    not(all(feature = "pyo3", feature = "subprocess", feature = "rustpython")),
    allow(dead_code)
)]

use std::time::Duration;

// Every backend.

/// A caller of an in-process backend polls this long for its reply before
/// its thread or task sleeps: a trivial call answers well inside it.
pub(crate) const CALLER_SPIN: Duration = Duration::from_micros(40);

/// The seat's holder holds back the wake-ups of the callers it answered
/// this long at most while more replies are due: on a multi-thread runtime
/// each wake-up beyond the first from one poll wakes another tokio worker.
pub(crate) const HOLD_WAKES: Duration = Duration::from_micros(50);

// In-process backends (PyO3, RustPython).

/// The interpreter thread spins this long for the next command before it
/// parks: a caller's next command usually comes within it.
pub(crate) const WORKER_SPIN: Duration = Duration::from_micros(100);

/// Under a steady stream of commands, the PyO3 event loop is turned at
/// least this often, so background tasks are not starved by busy callers.
pub(crate) const LOOP_TURN_GAP: Duration = Duration::from_millis(2);

/// RustPython: a timed-out command is told again to stop after this long,
/// doubling each time up to [`INTERRUPT_AGAIN_AT_MOST`].
pub(crate) const INTERRUPT_AGAIN: Duration = Duration::from_millis(5);
pub(crate) const INTERRUPT_AGAIN_AT_MOST: Duration = Duration::from_millis(500);

// A child's supervisor (subprocess backend and pool workers).

/// How a child's supervisor and its callers spin and batch. A runner's
/// child is alone; a pool's workers share the cores with their siblings,
/// their children and their callers, where spinning takes more than it saves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Supervision {
    /// How long a caller that drives the child spins for its reply.
    pub caller_spin: Duration,
    /// That caller gives up its core once in this many turns of its spin.
    pub caller_yield_every: u32,
    /// How long the supervisor thread spins for replies or commands while
    /// calls are in flight and no caller drives.
    pub thread_spin: Duration,
    /// Requests that come right after a batch of replies are gathered for
    /// up to [`GATHER`] into one write.
    pub gathers: bool,
    /// A caller whose first poll finds the seat parked leaves its job to
    /// the holder (see `Drive::leave_to_parked`).
    pub batch_behind_parked: bool,
}

/// A runner's child: it is what limits many callers, and it does best
/// with their requests together.
pub(crate) const RUNNER: Supervision = Supervision {
    caller_spin: Duration::from_micros(150),
    caller_yield_every: 8,
    thread_spin: Duration::from_micros(40),
    gathers: true,
    batch_behind_parked: true,
};

/// A pool's worker: its callers move on to whichever sibling is least
/// loaded, so a batch waited for would not fill, and its children more
/// often wait for work than not.
pub(crate) const POOL_WORKER: Supervision = Supervision {
    caller_spin: Duration::from_micros(50),
    caller_yield_every: 2,
    thread_spin: Duration::ZERO,
    gathers: false,
    batch_behind_parked: false,
};

/// How long requests are gathered into one batch after a batch of replies:
/// the callers just answered send their next ones within microseconds.
pub(crate) const GATHER: Duration = Duration::from_micros(20);

/// A caller leaves its job to a parked seat's holder only this soon after
/// it parked (nanoseconds); a holder parked longer may not be polled soon.
pub(crate) const LEAVE_WINDOW_NANOS: u64 = 100_000;

/// With calls in flight, how long the thread sleeps without watching for
/// replies before it looks whether a caller still drives.
pub(crate) const BLIND_LOOK: Duration = Duration::from_micros(500);

/// How long a parent sleeps before it looks at the reply ring once more.
pub(crate) const RING_RECHECK: Duration = Duration::from_micros(200);

/// After SIGINT, how long a timed-out child gets to unwind before SIGKILL:
/// enough for `finally` blocks, short enough that the next command barely
/// notices.
pub(crate) const INTERRUPT_GRACE: Duration = Duration::from_millis(250);

/// How many heartbeat intervals a launched child's link may stay silent
/// before it is taken for dead: a beat is due after one quiet interval,
/// so three leave room for a late one and the link's own delays.
pub(crate) const LINK_SILENCE_BEATS: u32 = 3;

/// The same while a request is in flight: the child's beats come from a
/// thread of its own, which a C call holding the GIL holds up too (a long
/// numpy sort, a regex that backtracks), so only a much longer silence is
/// taken for a dead link (5 minutes at the default interval, within which
/// ssh's own keepalives or a command's limit usually say it first).
pub(crate) const BUSY_SILENCE_BEATS: u32 = 30;

/// A coroutine's limit is enforced in the child; past it by this much, the
/// child is taken to be stuck (it holds its loop) and is killed.
pub(crate) const COROUTINE_BACKSTOP: Duration = Duration::from_secs(2);

/// How often a coroutine's passed backstop is looked at again while it
/// cannot be judged yet (a sync request runs).
pub(crate) const COROUTINE_RECHECK: Duration = Duration::ZERO;

/// A child that dies this soon after it was ready, before it answered
/// anything, counts as a failed start: its next start would most likely
/// end the same way.
pub(crate) const QUICK_DEATH: Duration = Duration::from_secs(1);

/// After such a death the next start waits this long, twice as long after
/// each further one in a row; a command that comes meanwhile starts one.
pub(crate) const QUICK_DEATH_RETRY: Duration = Duration::from_millis(50);

/// A supervisor beside others (a pool's worker) whose child could not start
/// tries again after this long, doubling up to [`START_RETRY_MAX`], while
/// its siblings take its calls.
pub(crate) const START_RETRY: Duration = Duration::from_secs(1);
pub(crate) const START_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long a child asked to end gets before it is killed with its group:
/// to answer `stop` once that is next, or to exit on end of file.
pub(crate) const EXIT_GRACE: Duration = Duration::from_millis(500);

/// How long a child whose request pipe lost its reader has to show its end.
pub(crate) const PIPE_END_GRACE: Duration = Duration::from_millis(100);

/// How often a child with no pidfd (before Linux 5.3) is looked at for its
/// end while it is waited on.
pub(crate) const EXIT_CHECK: Duration = Duration::from_millis(100);

// The pool.

/// A `map` keeps about this much of its work queued on the workers, going
/// by how fast its calls finish: trivial calls go in large batches, slow
/// ones queue only a few, so other callers wait behind little of it.
pub(crate) const MAP_QUEUED: Duration = Duration::ZERO;

/// How often a retired worker is checked for calls still running on it:
/// often enough that a recycle ends promptly, rare enough to cost nothing.
pub(crate) const RETIRE_POLL: Duration = Duration::from_millis(2);

/// glibc's malloc in a child: blocks up to 32 MiB come from its heap, and
/// up to 64 MiB of free heap is kept rather than given back. By default a
/// freed block of a few MiB goes back to the kernel, and the next one
/// faults its pages in again, zeroed: moving 8 MiB of bytes to a child and
/// back took 17–36 ms that way, 5–10 ms with this (docs/TUNING.md). Set
/// as `GLIBC_TUNABLES` unless the child's environment has one already;
/// other C libraries ignore it.
pub(crate) const CHILD_MALLOC: &str =
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864";

/// A pool worker's resident memory (`max_memory_per_worker`) is read after
/// a call at most this often: a read of `/proc` costs about 6 µs, half of a
/// trivial pool call, but once per 10 ms it is under 0.1% of a worker's
/// time however fast its calls come; memory that grows in calls is found
/// by the first call past this gap.
pub(crate) const MEMORY_CHECK_GAP: Duration = Duration::from_millis(10);

/// How many items of a stream Python may make before the consumer has taken
/// them: the backpressure window (see `call::Feed`). Large enough that the
/// consumer's credit, one wake-up of the producer per half window, costs
/// little per item; small enough that a stream of large items holds little.
pub(crate) const STREAM_WINDOW: usize = 256;

/// What a captured command keeps of each of its two streams; past it the
/// text is cut and the cut marked. The in-process backends give it to the
/// router; a child's is `CAPTURE_CAP` of `python/output.py` (checked equal
/// by `tests/python/test_output.py`).
#[cfg_attr(not(any(feature = "pyo3", feature = "rustpython")), allow(dead_code))]
pub(crate) const CAPTURE_CAP: usize = 16 << 20;

/// The longest line handed to `on_output` in one piece: a longer one
/// (output without a newline) is passed on in pieces of this size, so that
/// nothing waits for a newline that may never come with memory growing.
#[cfg_attr(
    not(any(feature = "pyo3", feature = "subprocess", feature = "rustpython")),
    allow(dead_code)
)]
pub(crate) const OUTPUT_LINE_CAP: usize = 64 << 10;

/// Worker threads of the runtime async host functions run on (see
/// `host::runtime`). Host functions mostly wait on I/O; two let one that
/// computes for a while not hold up the rest.
pub(crate) const HOST_RUNTIME_THREADS: usize = 2;

/// How long a subprocess runner's host thread spins for the next sync host
/// call before it parks: a Python loop of host calls sends the next one
/// within microseconds of its reply, and a wake-up costs tens of them.
#[cfg(feature = "subprocess")]
pub(crate) const HOST_THREAD_SPIN: Duration = Duration::from_micros(100);

/// How long a subprocess runner's surplus host thread (one of several,
/// started for host calls nested in others) stays parked without a call
/// before it ends; the last one stays.
#[cfg(feature = "subprocess")]
pub(crate) const HOST_THREAD_IDLE: Duration = Duration::from_secs(2);

/// How often a child's start, while its startup code or a replayed
/// command waits for a host function, looks for the function's result
/// and the commands it sends.
#[cfg(feature = "subprocess")]
pub(crate) const HOST_START_LOOK: Duration = Duration::from_millis(1);
