//! The reply ring: shared memory that carries the child's replies, so that
//! a reply costs the child a copy instead of a write(2) and a wake-up, and a
//! parent that spins for replies looks at memory instead of calling read(2).
//!
//! The parent makes a sealed memfd (it cannot be shrunk, so neither side can
//! fault on it) and the child opens it through `/proc/<parent>/fd/<n>`.
//! Layout, each counter on its own cache line, in native byte order:
//!
//! | offset | what | written by |
//! |---|---|---|
//! | 0 | bytes published so far (u64) | child |
//! | 64 | bytes taken so far (u64) | parent |
//! | 128 | 1 while the parent may sleep until a doorbell (u64) | parent |
//! | 192 | the id of the request the last SIGINT targets, stored before it (u64) | parent |
//! | 256 | 1 while the child runs its event loop, or makes a coroutine; 2 while it makes a sync stream's items (u64) | child |
//! | 320 | the id of the last coroutine the child started, set before 256 (u64) | child |
//! | 384 | the id of the request the child stopped for a SIGINT, set before its reply (u64) | child |
//! | 448 | the id of the sync stream whose items the child makes, set before 256 is 2 (u64) | child |
//! | 512 | how many slices of sync streams the child has begun, counted before 448 is set (u64) | child |
//! | 4096 | the ring: [`RING_SIZE`] bytes of reply frames | child |
//!
//! The ring carries the same frames the pipe would, as one byte stream: the
//! child copies whole frames in (wrapping at the end), then publishes the new
//! total. When the parent has said it may sleep, the child also writes one
//! zero byte, a doorbell, to its stdout (and, while the ring is full, one
//! every 100 µs until there is room); with a ring, stdout carries nothing
//! else after the hello. A child that dies leaves what it published readable, so
//! no reply it wrote is lost.
//!
//! The child cannot fence its stores, so the parent may miss a doorbell
//! when it goes to sleep just as a reply is published. It therefore sleeps
//! at most [`RING_RECHECK`] at first (ppoll(2), which does not round that up to
//! a millisecond), looks at the ring again, and only then sleeps as long as
//! it likes: by then any later reply sees its flag. For the same reason, and
//! because each counter must move in one store, the ring is made only on
//! x86-64, whose stores reach other cores in program order.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;

use super::child::poll;
use crate::tuning::RING_RECHECK;

// The child's side states these as the RING_* of python/protocol.py;
// tests/python/test_protocol.py checks that both say the same.
const PUBLISHED: usize = 0;
const TAKEN: usize = 64;
const WAITING: usize = 128;
const INTERRUPT_TARGET: usize = 192;
const IN_LOOP: usize = 256;
const LAST_COROUTINE: usize = 320;
const INTERRUPT_TAKEN: usize = 384;
const MAKING: usize = 448;
const SLICES: usize = 512;
const DATA: usize = 4096;

/// What offset 256 holds while the child makes a sync stream's items.
const IN_STREAM: u64 = 2;

/// The ring's size; a reply larger than it crosses in pieces.
pub(crate) const RING_SIZE: usize = 1 << 20;

/// What [`ReplyRing::child_at`] finds.
pub(crate) enum ChildAt {
    Outside {
        last_coroutine: u64,
    },
    Loop {
        last_coroutine: u64,
    },
    /// Making items of the sync stream `stream`: no request or coroutine
    /// runs meanwhile.
    Stream {
        last_coroutine: u64,
        stream: u64,
        /// How many slices the child had begun, this one included.
        slice: u64,
    },
    Unsure,
}

pub(crate) struct ReplyRing {
    fd: OwnedFd,
    base: *mut u8,
    /// What was taken, as this side counts it: the copy in shared memory
    /// is for the child, which could overwrite it.
    taken: AtomicU64,
}

// SAFETY: the mapping lives as long as the ring; the counters are only
// touched through atomics, and the data only by the one reader that holds
// the supervisor's lock (the child writes only where it has not published).
unsafe impl Send for ReplyRing {}
unsafe impl Sync for ReplyRing {}

impl ReplyRing {
    /// A fresh ring, or the reason there is none (the pipe then carries
    /// replies). Only on x86-64 Linux: the child publishes with plain
    /// stores and no fence, which x86-64 alone keeps in order, and each
    /// counter must move in one 8-byte store.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    pub fn create() -> io::Result<ReplyRing> {
        let name = c"async_py-replies";
        // SAFETY: a NUL-terminated name and flags; the result is checked.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let length = DATA + RING_SIZE;
        // SAFETY: ftruncate and fcntl on the fd made above, integer arguments.
        let sized = unsafe {
            libc::ftruncate(fd.as_raw_fd(), length as libc::off_t) == 0
                && libc::fcntl(
                    fd.as_raw_fd(),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
                ) == 0
        };
        if !sized {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of the whole (sealed) file.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ReplyRing {
            fd,
            base: base.cast(),
            taken: AtomicU64::new(0),
        })
    }

    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    pub fn create() -> io::Result<ReplyRing> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// The ring's fd, to pass to a child that a zygote forks.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Where the child opens the ring.
    pub fn path_for_child(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    fn counter(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: the offset is one of the nine aligned header slots inside
        // the mapping, which outlives `self`.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    /// Names the request whose limit the parent enforces, before it sends
    /// SIGINT (kill(2) is a full barrier, so the child sees the id when
    /// the signal comes). The child stops that request only: the signal
    /// may come after it ended, while the next one runs. A new id also
    /// tells the parent's SIGINT from one of the child's own making.
    pub fn target_interrupt(&self, request: u64) {
        self.counter(INTERRUPT_TARGET)
            .store(request, Ordering::SeqCst);
    }

    /// Whether the child stopped `request` for the parent's SIGINT (it
    /// says so before the request's reply is published, and then starts
    /// nothing more). A child that answered `request` without stopping it
    /// ended it before the signal came, and goes on with what follows.
    pub fn took_interrupt(&self, request: u64) -> bool {
        self.counter(INTERRUPT_TAKEN).load(Ordering::Acquire) == request
    }

    /// Where the child says it is. In its event loop no request runs
    /// (only coroutines, or nothing while it waits). The body of no
    /// coroutine after `last_coroutine` (an id; 0 for none) has run: bodies
    /// run only in the loop, and the id is stored as the call that makes a
    /// coroutine starts (that call counts as its loop); a sync stream's
    /// slice leaves it alone, and names its stream at offset 448. The
    /// child publishes its replies, then the id, then the flag: a flag seen
    /// with replies still to take is `Unsure`, as those may be to requests
    /// that ran just before the loop. Outside the loop, replies still to
    /// take are `Unsure` too: one may answer the request whose limit just
    /// passed, which then needs no SIGINT.
    pub fn child_at(&self) -> ChildAt {
        let in_loop = self.counter(IN_LOOP).load(Ordering::Acquire);
        let last_coroutine = self.counter(LAST_COROUTINE).load(Ordering::Acquire);
        let slice = self.slices();
        let stream = self.counter(MAKING).load(Ordering::Acquire);
        if self.pending() {
            return ChildAt::Unsure;
        }
        match in_loop {
            0 => ChildAt::Outside { last_coroutine },
            IN_STREAM => ChildAt::Stream {
                last_coroutine,
                stream,
                slice,
            },
            _ => ChildAt::Loop { last_coroutine },
        }
    }

    /// How many slices of sync streams the child has begun: a stream's
    /// backstop that started before its slice began is not that slice's.
    pub fn slices(&self) -> u64 {
        self.counter(SLICES).load(Ordering::Acquire)
    }

    /// Whether the child has published bytes not yet taken.
    pub fn pending(&self) -> bool {
        self.counter(PUBLISHED).load(Ordering::Acquire) != self.taken.load(Ordering::Relaxed)
    }

    /// Appends every published byte to `buffer`; how many. Only one reader
    /// may call this at a time (the supervisor's lock sees to that).
    pub fn take_into(&self, buffer: &mut BytesMut) -> io::Result<usize> {
        let published = self.counter(PUBLISHED).load(Ordering::Acquire);
        let taken = self.taken.load(Ordering::Relaxed);
        let count = published.wrapping_sub(taken);
        if count == 0 {
            return Ok(0);
        }
        if count > RING_SIZE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the child published {count} bytes in a ring of {RING_SIZE}"),
            ));
        }
        let count = count as usize;
        let start = (taken % RING_SIZE as u64) as usize;
        let first = count.min(RING_SIZE - start);
        buffer.reserve(count);
        // SAFETY: both source ranges lie inside the ring's data area, which
        // the child wrote before it published them (it writes there again
        // only after the new total below is stored); they are copied as raw
        // bytes, never borrowed, since a misbehaving child could write them
        // at any time. The destination is spare capacity reserved above,
        // and only the `count` bytes copied become part of the buffer.
        unsafe {
            let data = self.base.add(DATA);
            let spare = buffer.spare_capacity_mut().as_mut_ptr().cast::<u8>();
            std::ptr::copy_nonoverlapping(data.add(start), spare, first);
            std::ptr::copy_nonoverlapping(data, spare.add(first), count - first);
            buffer.set_len(buffer.len() + count);
        }
        self.taken.store(published, Ordering::Relaxed);
        self.counter(TAKEN).store(published, Ordering::Release);
        Ok(count)
    }

    /// poll(2) over `fds`, the first of which is the child's stdout, after
    /// asking the child for doorbells; see the module docs for the recheck.
    pub fn sleep(&self, fds: &mut [libc::pollfd], limit: Option<Duration>) {
        let waiting = self.counter(WAITING);
        waiting.store(1, Ordering::SeqCst);
        if !self.pending() {
            let first = limit.map_or(RING_RECHECK, |limit| limit.min(RING_RECHECK));
            poll_precisely(fds, first);
            let woken = fds.iter().any(|fd| fd.revents != 0);
            if !woken && !self.pending() && limit.is_none_or(|limit| limit > RING_RECHECK) {
                poll(fds, limit.map(|limit| limit - RING_RECHECK));
            }
        }
        waiting.store(0, Ordering::SeqCst);
    }
}

/// ppoll(2), whose limit is not rounded up to a whole millisecond as
/// poll(2)'s is.
fn poll_precisely(fds: &mut [libc::pollfd], limit: Duration) {
    let limit = libc::timespec {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd whose
    // length is passed alongside; the timespec lives across the call.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &limit,
            std::ptr::null(),
        );
    }
}

impl Drop for ReplyRing {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `create`, which nothing uses
        // once the ring is dropped.
        unsafe {
            libc::munmap(self.base.cast(), DATA + RING_SIZE);
        }
    }
}
