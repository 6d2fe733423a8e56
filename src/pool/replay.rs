//! The pool's runs: each `run` reaches every worker, is logged, and is
//! replayed on every child started later, unless it failed somewhere.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::thread;

use super::join::{join_in_order, BoxedCall};
use super::Inner;
use crate::command::{Reply, Request};
use crate::error::PyRunnerError;
use crate::tuning::RETIRE_POLL;

/// The code of every `run` sent to a pool, in order: each child a worker
/// starts runs them all (after `startup`) before its first call. A run that
/// failed anywhere is blanked, so it is not replayed.
#[derive(Default)]
pub(crate) struct ReplayLog {
    entries: Mutex<Vec<Option<LoggedRun>>>,
}

pub(super) struct LoggedRun {
    code: String,
    /// Settled, awaited or given up (a blanked run has no entry).
    state: RunState,
}

/// A logged run, as [`ReplayLog::state`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunState {
    /// It ran on every worker without raising.
    Settled,
    /// Its outcome is not recorded yet, and its caller waits for it.
    Awaited,
    /// Its caller dropped it before its outcome: it never gets one.
    GivenUp,
    /// It failed somewhere (or there is no such run): it is not replayed.
    Blank,
}

impl ReplayLog {
    /// Adds a run; its index.
    pub fn push(&self, code: &str) -> usize {
        let mut entries = self.lock();
        entries.push(Some(LoggedRun {
            code: code.to_owned(),
            state: RunState::Awaited,
        }));
        entries.len() - 1
    }

    /// Keeps a run that failed from being replayed.
    pub fn blank(&self, index: usize) {
        if let Some(entry) = self.lock().get_mut(index) {
            *entry = None;
        }
    }

    /// Marks a run that every worker ran without raising: one that raises
    /// when replayed would leave that child unlike the others.
    pub fn settle(&self, index: usize) {
        if let Some(Some(run)) = self.lock().get_mut(index) {
            run.state = RunState::Settled;
        }
    }

    /// Notes that the caller of a run still awaited dropped it.
    pub fn give_up(&self, index: usize) {
        if let Some(Some(run)) = self.lock().get_mut(index) {
            if run.state == RunState::Awaited {
                run.state = RunState::GivenUp;
            }
        }
    }

    /// Where the run at `index` stands.
    pub fn state(&self, index: usize) -> RunState {
        match self.lock().get(index) {
            Some(Some(run)) => run.state,
            _ => RunState::Blank,
        }
    }

    /// Whether the run at `index` ran on every worker without raising.
    pub fn is_settled(&self, index: usize) -> bool {
        self.state(index) == RunState::Settled
    }

    /// Whether the run at `index` is still in progress on the pool: neither
    /// settled nor blanked.
    pub fn is_pending(&self, index: usize) -> bool {
        matches!(self.state(index), RunState::Awaited | RunState::GivenUp)
    }

    /// The code of every entry so far (blanked ones as `None`).
    pub fn snapshot(&self) -> Vec<Option<String>> {
        self.lock()
            .iter()
            .map(|entry| entry.as_ref().map(|run| run.code.clone()))
            .collect()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<LoggedRun>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Marks a logged run given up if its caller drops it before its outcome
/// is recorded.
pub(super) struct RunAwaited<'a>(&'a Inner, usize);

impl Drop for RunAwaited<'_> {
    fn drop(&mut self) {
        self.0.log.give_up(self.1);
    }
}

impl Inner {
    /// Whether a replacement that raised in logged run `run` must not serve:
    /// the run ran on every worker without raising. A run still in flight
    /// is waited for; one whose caller gave up on it never gets an outcome,
    /// and does not count.
    pub(super) fn requires(&self, run: usize) -> bool {
        loop {
            match self.log.state(run) {
                RunState::Settled => return true,
                RunState::Blank | RunState::GivenUp => return false,
                RunState::Awaited if self.stopped.load(Ordering::SeqCst) => return false,
                RunState::Awaited => thread::sleep(RETIRE_POLL),
            }
        }
    }

    /// `PyPool::run`: `code` on every worker now, logged for every child
    /// started later.
    pub(super) async fn broadcast(&self, code: &str) -> Result<(), PyRunnerError> {
        let (index, sends, verdicts, _awaited) = {
            let _runs = self.broadcasts();
            if self.stopped.load(Ordering::SeqCst) {
                return Err(PyRunnerError::Stopped);
            }
            let index = self.log.push(code);
            // Queued on every worker (and every replacement catching up)
            // before the lock is let go: the next run lands behind this one
            // everywhere.
            let mut sends = Vec::new();
            let mut verdicts = Vec::new();
            for slot in &self.slots {
                let joining = slot.joining().clone();
                let targets = std::iter::once((slot.current(), None))
                    .chain(joining.map(|joining| (joining.worker, Some(joining.verdict))));
                for (worker, verdict) in targets {
                    let request = Request::Broadcast {
                        code: code.to_owned(),
                        index,
                    };
                    sends.push(Box::pin(worker.runner.queue_now(request)) as BoxedCall<'_, Reply>);
                    verdicts.push(verdict);
                }
            }
            (index, sends, verdicts, RunAwaited(self, index))
        };
        let replies = join_in_order(sends, |_| usize::MAX).await;
        let mut failure = None;
        for (reply, verdict) in replies.into_iter().zip(verdicts) {
            let Err(err) = reply else {
                continue;
            };
            if let Some(mut verdict) = verdict {
                // A replacement that raised while it caught up counts only
                // if it takes over: one given up leaves no child behind.
                let takes_over = matches!(
                    verdict.wait_for(Option::is_some).await.as_deref(),
                    Ok(Some(true))
                );
                if !takes_over {
                    continue;
                }
            }
            failure = failure.or(Some(err));
        }
        match failure {
            Some(err) => {
                self.log.blank(index);
                Err(err)
            }
            None => {
                self.log.settle(index);
                Ok(())
            }
        }
    }
}
