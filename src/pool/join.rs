//! Many futures joined with a bounded number in flight, each woken on its
//! own: `map`'s calls, `run`'s shares and `stop`'s ends.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub(super) type BoxedCall<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs the futures with at most `window(finished so far)` in flight; their
/// outputs in input order.
///
/// Each future gets a waker of its own, and a poll of the whole polls only
/// the futures that were woken (and those just started). Polling every one
/// on every wake-up would make each pending call of a `map` take its
/// worker's driver's seat and spin for its reply whenever any other call
/// finished, and wake that worker's thread when it gave up: on two cores
/// those threads ran on the cores of the children doing the work.
pub(super) async fn join_in_order<'a, T>(
    futures: impl IntoIterator<Item = BoxedCall<'a, T>>,
    mut window: impl FnMut(usize) -> usize,
) -> Vec<T> {
    let mut waiting = futures.into_iter().peekable();
    let woken = Arc::new(Woken::default());
    // By input index: the future and its waker while it runs; its length
    // is how many have started. A slot per input, as `done` and the inputs
    // have: a lookup by index costs less than a hash per poll, which a map
    // of trivial calls felt.
    let mut running: Vec<Option<Running<T>>> = Vec::new();
    let mut done: Vec<Option<T>> = Vec::new();
    let mut finished = 0;
    let mut to_poll = Vec::new();
    poll_fn(|cx| {
        woken.set_task(cx.waker());
        // Woken since the last poll; futures woken during this poll (one
        // that parked its worker's seat to let other tasks run first asks
        // for another poll at once) wait for the next, unless one finishes.
        woken.take_into(&mut to_poll);
        loop {
            let limit = window(finished);
            while running.len() - finished < limit {
                let Some(future) = waiting.next() else {
                    break;
                };
                let index = running.len();
                let note = Arc::new(FutureWaker {
                    index,
                    queued: AtomicBool::new(false),
                    woken: woken.clone(),
                });
                let waker = Waker::from(note.clone());
                running.push(Some(Running {
                    future,
                    note,
                    waker,
                }));
                done.push(None);
                to_poll.push(index);
            }
            let before = finished;
            for index in to_poll.drain(..) {
                let Some(run) = &mut running[index] else {
                    continue; // finished, and woken again since
                };
                // Cleared first, so that a wake-up during the poll counts.
                run.note.queued.swap(false, Ordering::AcqRel);
                let mut cx = Context::from_waker(&run.waker);
                if let Poll::Ready(output) = run.future.as_mut().poll(&mut cx) {
                    done[index] = Some(output);
                    running[index] = None;
                    finished += 1;
                }
            }
            if finished == running.len() && waiting.peek().is_none() {
                return Poll::Ready(());
            }
            if finished == before {
                return Poll::Pending;
            }
            woken.take_into(&mut to_poll);
        }
    })
    .await;
    done.into_iter()
        .map(|output| output.expect("every future ran to the end"))
        .collect()
}

/// A future of [`join_in_order`] that has yet to finish, with its waker.
pub(super) struct Running<'a, T> {
    future: BoxedCall<'a, T>,
    note: Arc<FutureWaker>,
    waker: Waker,
}

/// The futures of one [`join_in_order`] that asked to be polled, and the
/// task that polls them.
#[derive(Default)]
pub(super) struct Woken {
    indices: Mutex<Vec<usize>>,
    task: Mutex<Option<Waker>>,
}

impl Woken {
    pub(super) fn indices(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.indices.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn task(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_task(&self, waker: &Waker) {
        let mut task = self.task();
        if !task.as_ref().is_some_and(|task| task.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }

    /// Moves the indices woken so far to `into`; both keep their buffers.
    pub(super) fn take_into(&self, into: &mut Vec<usize>) {
        into.append(&mut self.indices());
    }
}

/// The waker of one future in a [`join_in_order`]: notes its index, once
/// until it is polled, and wakes the task.
pub(super) struct FutureWaker {
    index: usize,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for FutureWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.woken.indices().push(self.index);
        }
        // Woken outside the lock: an executor may poll the task at once.
        let task = self.woken.task().clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread;
    use std::time::Duration;

    /// A future that stays pending until its gate opens, counting its polls.
    /// With `bounce`, its first poll wakes itself and returns pending, as a
    /// call that parks its worker's seat does.
    struct Gate {
        open: AtomicBool,
        polls: AtomicUsize,
        waker: Mutex<Option<Waker>>,
        bounce: bool,
    }

    impl Gate {
        fn new(bounce: bool) -> Arc<Gate> {
            Arc::new(Gate {
                open: AtomicBool::new(false),
                polls: AtomicUsize::new(0),
                waker: Mutex::new(None),
                bounce,
            })
        }

        fn open(&self) {
            self.open.store(true, Ordering::SeqCst);
            if let Some(waker) = self.waker.lock().unwrap().take() {
                waker.wake();
            }
        }

        fn wait(self: Arc<Self>, output: usize) -> BoxedCall<'static, usize> {
            Box::pin(poll_fn(move |cx| {
                let polls = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
                if self.bounce && polls == 1 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                // Checked after the waker is stored: an opening in between
                // finds it, or is seen here.
                if self.open.load(Ordering::SeqCst) {
                    return Poll::Ready(output);
                }
                Poll::Pending
            }))
        }
    }

    /// Runs the join of the gates' futures on a current-thread runtime while
    /// `open` opens them; a join that never ends fails after 10 s.
    fn join_gates(
        gates: &[Arc<Gate>],
        window: usize,
        open: impl FnOnce(Vec<Arc<Gate>>) -> tokio::task::JoinHandle<()>,
    ) -> Vec<usize> {
        let futures: Vec<_> = gates
            .iter()
            .enumerate()
            .map(|(i, gate)| gate.clone().wait(i * 10))
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let opener = open(gates.to_vec());
            let joined = join_in_order(futures, |_| window);
            let outputs = tokio::time::timeout(Duration::from_secs(10), joined)
                .await
                .expect("the join ends once every gate is open");
            opener.await.unwrap();
            outputs
        })
    }

    #[test]
    fn only_the_futures_woken_are_polled_again() {
        let gates: Vec<_> = (0..8).map(|_| Gate::new(false)).collect();
        let outputs = join_gates(&gates, usize::MAX, |gates| {
            tokio::spawn(async move {
                // Out of order, one per turn of the runtime.
                for index in [3, 0, 7, 1, 6, 2, 5, 4] {
                    tokio::task::yield_now().await;
                    gates[index].open();
                }
            })
        });
        assert_eq!(outputs, (0..8).map(|i| i * 10).collect::<Vec<_>>());
        for (index, gate) in gates.iter().enumerate() {
            // Once when started, once after its own wake-up.
            assert_eq!(gate.polls.load(Ordering::SeqCst), 2, "future {index}");
        }
    }

    #[test]
    fn no_more_than_the_window_runs_at_once() {
        let gates: Vec<_> = (0..6).map(|_| Gate::new(false)).collect();
        let most = Arc::new(AtomicUsize::new(0));
        let seen = most.clone();
        let outputs = join_gates(&gates, 2, move |gates| {
            tokio::spawn(async move {
                for index in [1, 0, 3, 2, 5, 4] {
                    // Waits for the join to start it.
                    while gates[index].polls.load(Ordering::SeqCst) == 0 {
                        tokio::task::yield_now().await;
                    }
                    let started = gates.iter().filter(|g| g.polls.load(Ordering::SeqCst) > 0);
                    let open = gates.iter().filter(|g| g.open.load(Ordering::SeqCst));
                    seen.fetch_max(started.count() - open.count(), Ordering::SeqCst);
                    gates[index].open();
                }
            })
        });
        assert_eq!(outputs, vec![0, 10, 20, 30, 40, 50]);
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn futures_woken_from_other_threads_or_by_themselves_all_finish() {
        let gates: Vec<_> = (0..64).map(|i| Gate::new(i % 2 == 0)).collect();
        let outputs = join_gates(&gates, 16, |gates| {
            tokio::task::spawn_blocking(move || {
                // From another thread, in reverse: most wake-ups come while
                // the join runs or sleeps.
                for _ in 0..1000 {
                    for gate in gates.iter().rev() {
                        if gate.polls.load(Ordering::SeqCst) > 0 {
                            gate.open();
                        }
                    }
                    if gates.iter().all(|g| g.open.load(Ordering::SeqCst)) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            })
        });
        assert_eq!(outputs, (0..64).map(|i| i * 10).collect::<Vec<_>>());
    }
}
