//! Recycling: a worker that answered `max_calls_per_worker` calls, or was
//! found over `max_memory_per_worker` after one, is replaced by a fresh
//! one, which catches up on the pool's runs before it takes the old one's
//! place; the old one ends after its calls.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Instant;

use tokio::sync::watch;

use super::worker::Worker;
use super::Inner;
use crate::command::{block_on, Request};
use crate::tuning::RETIRE_POLL;

/// Counts a recycle as under way until its thread is done with it.
pub(super) struct Recycling(Arc<watch::Sender<usize>>);

impl Recycling {
    pub(super) fn new(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|under_way| *under_way += 1);
        Recycling(count.clone())
    }
}

impl Drop for Recycling {
    fn drop(&mut self) {
        self.0.send_modify(|under_way| *under_way -= 1);
    }
}

/// A recycle's replacement while it catches up, and whether it will take
/// over: `Some(true)` once swapped in, `Some(false)` once given up.
#[derive(Clone)]
pub(super) struct Joining {
    pub(super) worker: Arc<Worker>,
    pub(super) verdict: watch::Receiver<Option<bool>>,
}

/// The recycle's side of [`Joining::verdict`]: given up unless said
/// otherwise, on every way out.
pub(super) struct Verdict(watch::Sender<Option<bool>>);

impl Verdict {
    pub(super) fn give(&self, takes_over: bool) {
        self.0.send_replace(Some(takes_over));
    }
}

impl Drop for Verdict {
    fn drop(&mut self) {
        if self.0.borrow().is_none() {
            self.give(false);
        }
    }
}

impl Inner {
    /// Counts an answered call; past the calls or the memory allowed,
    /// starts the worker's recycle.
    pub(super) fn answered(self: &Arc<Self>, index: usize, worker: &Arc<Worker>) {
        self.warm.store(index, Ordering::Relaxed);
        self.slots[index].calls.fetch_add(1, Ordering::SeqCst);
        let calls = worker.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let too_many_calls = self.max_calls.is_some_and(|limit| calls >= limit);
        if !too_many_calls && !self.over_memory(worker) {
            return;
        }
        if self.stopped.load(Ordering::SeqCst) || worker.retiring.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = Arc::downgrade(self);
        let old = worker.clone();
        let under_way = Recycling::new(&self.recycles);
        let started = thread::Builder::new()
            .name("async_py-pool-recycle".into())
            .spawn(move || {
                let _under_way = under_way;
                recycle(pool, index, old);
            });
        if started.is_err() {
            worker.retiring.store(false, Ordering::SeqCst);
        }
    }
}

impl Inner {
    /// Whether the worker holds more resident memory than allowed, when it
    /// is time to look (see `MemoryWatch::over`). A look under way on
    /// another thread is not waited for.
    fn over_memory(&self, worker: &Worker) -> bool {
        let Some(limit) = self.max_memory else {
            return false;
        };
        let Ok(mut watch) = worker.memory.try_lock() else {
            return false;
        };
        let pid = worker.state.pid.load(Ordering::SeqCst);
        watch.over(pid, limit, Instant::now())
    }
}

/// Starts a replacement for the worker in place `index`, swaps it in once
/// ready and caught up with the pool's runs, then ends the old one after
/// the calls it was given.
pub(super) fn recycle(pool: Weak<Inner>, index: usize, old: Arc<Worker>) {
    let Some(inner) = pool.upgrade() else {
        return;
    };
    let launcher = inner.slots[index].launcher.clone();
    let zygote = match launcher {
        // A launcher's worker is never a local fork.
        Some(_) => None,
        None => inner
            .zygote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    let fresh = match launcher {
        Some(prefix) => {
            let mut config = inner.runner.config().clone();
            config.launcher = Some(prefix);
            Worker::start(&config, inner.log.clone(), inner.pool.clone(), zygote, None)
        }
        None => Worker::start(
            inner.runner.config(),
            inner.log.clone(),
            inner.pool.clone(),
            zygote,
            None,
        ),
    };
    let fresh = match fresh {
        Ok(fresh) => Arc::new(fresh),
        Err(err) => {
            eprintln!("async_py: could not start a worker to recycle one, keeping the old: {err}");
            old.keep();
            return;
        }
    };
    let slot = &inner.slots[index];
    // Every run logged so far is queued on the fresh worker (those its child
    // ran at its start are answered at once), and it joins its place, so
    // runs made from here on reach it too, with their outcome. No lock is
    // held while its child works: a run waits for none of this.
    let (verdict, told) = watch::channel(None);
    let verdict = Verdict(verdict);
    let shares: Vec<_> = {
        let runs = inner.broadcasts();
        if inner.stopped.load(Ordering::SeqCst) {
            drop(runs);
            let _ = fresh.runner.stop_sync();
            return;
        }
        *slot.joining() = Some(Joining {
            worker: fresh.clone(),
            verdict: told,
        });
        inner
            .log
            .snapshot()
            .into_iter()
            .enumerate()
            .filter_map(|(run, code)| {
                let code = code?;
                let share = fresh
                    .runner
                    .queue_now(Request::Broadcast { code, index: run });
                Some((run, share))
            })
            .collect()
    };
    let mut lacks = None;
    for (run, share) in shares {
        if let Err(err) = block_on(share) {
            if inner.requires(run) {
                lacks = Some((run, err));
                break;
            }
        }
    }
    {
        let runs = inner.broadcasts();
        *slot.joining() = None;
        if inner.stopped.load(Ordering::SeqCst) {
            // `stop` took it from its place and ends it.
            return;
        }
        if let Some((run, err)) = lacks {
            // Retired until it has ended, so a `stop` now waits for it too.
            inner.retired().push(fresh.clone());
            drop(runs);
            verdict.give(false);
            eprintln!(
                "async_py: a worker's replacement raised in the pool's run number {}, \
                 which every worker ran; keeping the old: {err}",
                run + 1
            );
            old.keep();
            let _ = fresh.runner.stop_sync();
            inner
                .retired()
                .retain(|worker| !Arc::ptr_eq(worker, &fresh));
            return;
        }
        verdict.give(true);
        *slot.worker.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        inner.retired().push(old.clone());
        slot.past_restarts.fetch_add(
            old.state.restarts.load(Ordering::SeqCst) + 1,
            Ordering::SeqCst,
        );
    }
    drop(inner);
    while old.load.load(Ordering::SeqCst) > 0 {
        thread::sleep(RETIRE_POLL);
    }
    let _ = old.runner.stop_sync();
    if let Some(inner) = pool.upgrade() {
        inner.retired().retain(|worker| !Arc::ptr_eq(worker, &old));
    }
}
