//! Dispatch: which worker a call goes to, how many calls are admitted at
//! once, and where the calls of a lost child go.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::TryAcquireError;

use super::join::{join_in_order, BoxedCall};
use super::worker::{Charge, Slot, Worker, WorkerState};
use super::{Inner, PyPool};
use serde_json::Value;

use crate::command::{value_of, Job, Reply, Request};
use crate::error::PyRunnerError;
use crate::tuning::MAP_QUEUED;

/// Calls admitted per worker at once, queued ones included; past that,
/// callers wait their turn (first come, first served) instead of piling up.
pub(super) const ADMITTED_PER_WORKER: usize = 64;

/// The fewest calls of a `map` in flight per worker: one running, one next.
pub(super) const MAP_WINDOW_MIN: usize = 2;

/// How a call gets its place among the calls admitted to the pool.
#[derive(Clone, Copy)]
pub(crate) enum Admission {
    /// Waits its turn for a place.
    Wait,
    /// Takes a place if one is free, else goes without: for the `_sync`
    /// twins. A twin called inside a tokio task blocks that task's thread,
    /// and the places may all be held by other tasks' calls that only that
    /// thread would poll again to give them back. Each blocked thread adds
    /// at most one call (or one `map`'s window) past the bound.
    Skip,
}

impl Inner {
    /// The worker for the next call, its load already counted: the first
    /// idle one from the warm worker on, else the least loaded.
    pub(super) fn pick(&self) -> Arc<Charge> {
        let count = self.slots.len();
        let weight = |index: usize| self.slots[index].read().weight();
        let warm = self.warm.load(Ordering::Relaxed) % count;
        let idle = (0..count)
            .map(|step| (warm + step) % count)
            .find(|&index| weight(index) == 0);
        let index = idle.unwrap_or_else(|| {
            // None idle: the least loaded, ties going to each in turn.
            let first = self.next.fetch_add(1, Ordering::Relaxed) % count;
            (0..count)
                .map(|step| (first + step) % count)
                .min_by_key(|&index| weight(index))
                .unwrap_or(first)
        });
        // Counted under the read lock, so a recycle that swaps the worker
        // out (under the write lock) sees every call sent to the old one.
        let guard = self.slots[index].read();
        Charge::new(index, guard.clone())
    }

    /// A call that `from`'s lost child never started goes to the least
    /// loaded other worker, and its load goes with it; `Some` gives it back
    /// if none takes it.
    pub(super) fn place_elsewhere(&self, job: Job, from: &Arc<WorkerState>) -> Option<Job> {
        let mut others: Vec<(usize, Arc<Worker>)> = self
            .slots
            .iter()
            .map(Slot::current)
            .enumerate()
            .filter(|(_, worker)| !Arc::ptr_eq(&worker.state, from))
            .filter(|(_, worker)| !worker.state.restarting.load(Ordering::SeqCst))
            .filter(|(_, worker)| !worker.retiring.load(Ordering::SeqCst))
            .collect();
        others.sort_by_key(|(_, worker)| worker.weight());
        let charge = job
            .follow
            .clone()
            .and_then(|follow| follow.downcast::<Charge>().ok());
        let origin = charge.as_ref().map(|charge| charge.holder());
        let mut job = job;
        for (index, worker) in others {
            // Moved before the push: once pushed, it may be answered at once.
            if let Some(charge) = &charge {
                charge.move_to(index, worker.clone());
            }
            match worker.runner.queue().push(job) {
                Ok(()) => return None,
                Err(refused) => job = refused,
            }
        }
        if let (Some(charge), Some((index, worker))) = (charge, origin) {
            charge.move_to(index, worker);
        }
        Some(job)
    }
}

impl PyPool {
    pub(super) async fn dispatch(&self, request: Request, admission: Admission) -> Reply {
        self.dispatch_limited(request, admission, None).await
    }

    /// [`dispatch`](Self::dispatch); `limit`, when given, instead of the
    /// pool's own (`Some(None)`: no limit).
    pub(crate) async fn dispatch_limited(
        &self,
        request: Request,
        admission: Admission,
        limit: Option<Option<std::time::Duration>>,
    ) -> Reply {
        let _admitted = match admission {
            Admission::Wait => match self.inner.admission.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => return Err(PyRunnerError::Stopped),
            },
            Admission::Skip => match self.inner.admission.try_acquire() {
                Ok(permit) => Some(permit),
                Err(TryAcquireError::NoPermits) => None,
                Err(TryAcquireError::Closed) => return Err(PyRunnerError::Stopped),
            },
        };
        let charge = self.inner.pick();
        let (_, worker) = charge.holder();
        let limit = limit.unwrap_or_else(|| worker.runner.limit());
        let reply = worker
            .runner
            .send_following(request, limit, charge.clone())
            .await;
        if !matches!(reply, Err(PyRunnerError::Stopped)) {
            // The worker that answered: another one, if the call moved.
            let (index, worker) = charge.holder();
            self.inner.answered(index, &worker);
        }
        reply
    }

    pub(super) async fn map_admitted(
        &self,
        name: &str,
        inputs: Vec<Vec<Value>>,
        admission: Admission,
    ) -> Vec<Result<Value, PyRunnerError>> {
        let calls = inputs.into_iter().map(|args| {
            Box::pin(
                async move { value_of(self.dispatch(Request::call(name, args)?, admission).await) },
            ) as BoxedCall<'_, Result<Value, PyRunnerError>>
        });
        let workers = self.workers();
        let (least, most) = (workers * MAP_WINDOW_MIN, workers * ADMITTED_PER_WORKER);
        let started = Instant::now();
        join_in_order(calls, |finished| {
            let rate = finished as f64 / started.elapsed().as_secs_f64();
            ((rate * MAP_QUEUED.as_secs_f64()) as usize).clamp(least, most)
        })
        .await
    }
}
