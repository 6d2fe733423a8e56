//! The seat: which of the child's callers drives it, and the supervisor
//! thread that drives it when none does.

use super::*;

/// What the supervisor thread polls for; -1 skips an fd.
pub(super) struct WaitPlan {
    pub(super) replies: i32,
    /// The child's reply ring, if replies come through one.
    pub(super) ring: Option<Arc<ReplyRing>>,
    /// The child's pidfd, readable once it has exited.
    pub(super) exit: i32,
    pub(super) requests: i32,
    pub(super) limit: Option<Duration>,
}

impl WaitPlan {
    /// Whether replies wait to be read: in the ring, else in the pipe.
    pub(super) fn replies_ready(&self) -> bool {
        if let Some(ring) = &self.ring {
            return ring.pending();
        }
        let mut fds = [libc::pollfd {
            fd: self.replies,
            events: libc::POLLIN,
            revents: 0,
        }];
        poll(&mut fds, Some(Duration::ZERO));
        fds[0].revents != 0
    }
}

/// The state, the seat of the driving caller, and the thread's wake-up socket.
pub(crate) struct Shared {
    core: Mutex<Core>,
    queue: Arc<CommandQueue>,
    /// The driver's seat: 0 when free, else the holder's token shifted left
    /// by one, with the low bit set while the seat is parked.
    seat: AtomicU64,
    tokens: AtomicU64,
    /// The thread sleeps without watching the child's replies (a caller drives).
    blind: AtomicBool,
    /// ... and that sleep ends within [`BLIND_LOOK`].
    blind_bounded: AtomicBool,
    /// A caller's turn left work, a deadline or a loss for the thread.
    thread_needed: AtomicBool,
    /// `Core::outstanding` as of the last pump, readable without the lock.
    outstanding: AtomicUsize,
    line_busy: AtomicBool,
    /// The thread's poll saw the child's pidfd fire: it has exited.
    exit_seen: AtomicBool,
    wake: Mutex<UnixStream>,
    /// How long a driving caller spins for a reply, and how often it yields.
    caller_spin: (Duration, u32),
    /// How long the thread spins for work before it sleeps.
    thread_spin: Duration,
    /// Callers leave their first poll's job to the holder of a parked seat
    /// (see [`Drive::leave_to_parked`] and `tuning::Supervision`).
    batch_behind_parked: bool,
    /// When the seat was last parked, in nanoseconds from `started`.
    parked_at: AtomicU64,
    started: Instant,
}

impl Shared {
    /// Starts the first child and wires the queue to this state.
    pub fn start(
        queue: Arc<CommandQueue>,
        settings: Settings,
        first_start_by: Option<Instant>,
    ) -> Result<Arc<Shared>, PyRunnerError> {
        let (wake, wake_write) = UnixStream::pair().map_err(|err| {
            PyRunnerError::Startup(format!("could not make a wake-up socket: {err}"))
        })?;
        wake.set_nonblocking(true)
            .and_then(|_| wake_write.set_nonblocking(true))
            .map_err(|err| {
                PyRunnerError::Startup(format!("could not set up the wake-up socket: {err}"))
            })?;
        let tune = settings.supervision;
        let core = Core::start(queue.clone(), settings, first_start_by)?;
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            queue: queue.clone(),
            seat: AtomicU64::new(0),
            tokens: AtomicU64::new(1),
            blind: AtomicBool::new(false),
            blind_bounded: AtomicBool::new(false),
            thread_needed: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            line_busy: AtomicBool::new(false),
            exit_seen: AtomicBool::new(false),
            wake: Mutex::new(wake),
            caller_spin: (tune.caller_spin, tune.caller_yield_every),
            thread_spin: tune.thread_spin,
            batch_behind_parked: tune.batch_behind_parked,
            parked_at: AtomicU64::new(0),
            started: Instant::now(),
        });
        queue.set_loop_wake(wake_write);
        let driver: Arc<dyn Drive> = shared.clone();
        queue.set_driver(Arc::downgrade(&driver));
        Ok(shared)
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The supervisor thread. Returns when the runner is stopped or dropped.
    pub fn run(&self) {
        loop {
            let mut core = self.lock();
            if self.exit_seen.swap(false, Ordering::SeqCst) {
                core.next_exit_look = None;
            }
            if self.queue.is_closed() && !core.stop_sent {
                core.shut_down();
                return;
            }
            core.pump(None);
            core.retry_start();
            self.thread_needed.store(false, Ordering::SeqCst);
            if let Some(loss) = core.lost.take() {
                core.replace_child(loss);
                continue;
            }
            if core.stop_done.is_some() || (core.stop_sent && core.child.is_none()) {
                core.shut_down();
                return;
            }
            core.enforce_deadlines();
            if let Some(loss) = core.lost.take() {
                core.replace_child(loss);
                continue;
            }
            if core.stop_done.is_some() {
                core.shut_down();
                return;
            }
            self.outstanding.store(core.outstanding(), Ordering::SeqCst);
            let plan = core.wait_plan();
            drop(core);
            if let Some(plan) = plan {
                self.sleep(plan);
            }
        }
    }

    fn sleep(&self, plan: WaitPlan) {
        if self.outstanding.load(Ordering::SeqCst) > 0 && self.spin_for_work(&plan) {
            return;
        }
        let wake = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        self.queue.wait_in_loop(|| {
            // Replies matter only with calls in flight, and a driving caller
            // reads them itself: waking for them too would put a third
            // thread on two cores. Announce the blind spot first, then check;
            // a caller that sends or leaves the seat sees one or the other.
            self.blind.store(true, Ordering::SeqCst);
            self.blind_bounded.store(false, Ordering::SeqCst);
            let seated = self.seat.load(Ordering::SeqCst) != 0;
            let outstanding = self.outstanding.load(Ordering::SeqCst) > 0;
            let watch = !seated && outstanding;
            let mut limit = plan.limit;
            if watch {
                self.blind.store(false, Ordering::SeqCst);
            } else if seated || outstanding {
                // A caller that parks the seat, or leaves it after handing
                // out replies, does not wake this thread when it sleeps
                // bounded: look again soon in case nobody drives by then.
                limit = Some(limit.map_or(BLIND_LOOK, |limit| limit.min(BLIND_LOOK)));
                self.blind_bounded.store(true, Ordering::SeqCst);
            }
            let mut fds = [
                // Unwatched, the pipe still reports a hang-up: a child that
                // dies while idle is noticed and replaced at once.
                libc::pollfd {
                    fd: plan.replies,
                    events: if watch { libc::POLLIN } else { 0 },
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: plan.requests,
                    events: libc::POLLOUT,
                    revents: 0,
                },
                // A child's death wakes the thread even while a copy it
                // forked keeps its pipes open.
                libc::pollfd {
                    fd: plan.exit,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            match &plan.ring {
                Some(ring) if watch => ring.sleep(&mut fds, limit),
                _ => poll(&mut fds, limit),
            }
            if fds[3].revents != 0 {
                self.exit_seen.store(true, Ordering::SeqCst);
            }
            self.blind.store(false, Ordering::SeqCst);
        });
        drain(&wake);
    }
}

impl Shared {
    /// With calls in flight and no caller driving, the next reply or command
    /// is usually microseconds away: spin for it before paying for a wake-up
    /// (for as long as `tuning::Supervision::thread_spin` says).
    fn spin_for_work(&self, plan: &WaitPlan) -> bool {
        let start = Instant::now();
        while start.elapsed() < self.thread_spin {
            let seat = self.seat.load(Ordering::SeqCst);
            if seat != 0 && seat & 1 == 0 {
                return false; // a caller drives
            }
            if self.queue.has_jobs() {
                return true;
            }
            if plan.replies_ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }
}

impl Shared {
    /// One non-blocking turn on the caller's thread, unless the state is
    /// busy; how many replies it handed out. The answered callers' wakers
    /// go to `held`.
    fn pump_here(&self, held: &mut Vec<Waker>) -> usize {
        let mut core = match self.core.try_lock() {
            Ok(core) => core,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return 0,
        };
        let before = core.handed_out;
        core.pump(Some(held));
        self.outstanding.store(core.outstanding(), Ordering::SeqCst);
        self.line_busy
            .store(core.flights.line_busy(), Ordering::Relaxed);
        self.thread_needed
            .store(core.needs_thread(), Ordering::SeqCst);
        core.handed_out - before
    }

    /// Nanoseconds since this state was made, the clock of `parked_at`.
    fn since_start(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Wakes a caller that waits for a reply, so that it takes the seat this
    /// one left, instead of waking the thread: a task woken on the caller's
    /// own runtime is far cheaper than a thread. Not when the thread has
    /// its own work (a deadline, a lost child, unsent bytes), or when the
    /// state is busy. A woken caller that is not polled soon is covered by
    /// the thread's bounded look while it sleeps blind.
    fn pass_seat(&self) -> bool {
        let core = match self.core.try_lock() {
            Ok(core) => core,
            Err(_) => return false,
        };
        if core.only_thread_can() {
            return false;
        }
        let nudged = core
            .flights
            .in_line(4)
            .filter(|flight| !flight.item.reply.is_abandoned())
            .any(|flight| flight.item.reply.slot().nudge());
        nudged
    }

    /// Calls are in flight and the thread does not watch their replies: not
    /// at all, or (`bounded_will_do` false) not even within [`BLIND_LOOK`].
    fn replies_unwatched(&self, bounded_will_do: bool) -> bool {
        self.outstanding.load(Ordering::SeqCst) > 0
            && self.blind.load(Ordering::SeqCst)
            && !(bounded_will_do && self.blind_bounded.load(Ordering::SeqCst))
    }
}

impl Drive for Shared {
    fn try_begin(&self) -> Option<u64> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut seat = self.seat.load(Ordering::SeqCst);
        // Free, or parked by a holder that is not polling now.
        while seat == 0 || seat & 1 == 1 {
            match self
                .seat
                .compare_exchange(seat, token << 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(token),
                Err(now) => seat = now,
            }
        }
        None
    }

    fn resume(&self, token: u64) -> bool {
        let parked = token << 1 | 1;
        self.seat
            .compare_exchange(parked, token << 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn park(&self, token: u64) {
        // Before the seat shows parked: a caller that sees it parked sees
        // this time too, or a later one.
        self.parked_at.store(self.since_start(), Ordering::SeqCst);
        let _ = self.seat.compare_exchange(
            token << 1,
            token << 1 | 1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        if self.replies_unwatched(true) {
            self.queue.wake_consumer();
        }
    }

    fn drive(&self, held: &mut Vec<Waker>) -> usize {
        self.pump_here(held)
    }

    fn end(&self, token: u64, handed_out: bool, done: bool) {
        for held in [token << 1, token << 1 | 1] {
            let _ = self
                .seat
                .compare_exchange(held, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
        // After handing out replies, a thread that looks on its own soon is
        // left asleep; else a waiting caller takes over if there is one.
        if self.queue.has_jobs()
            || self.thread_needed.load(Ordering::SeqCst)
            || self.replies_unwatched(handed_out)
        {
            if done && self.pass_seat() {
                return;
            }
            self.queue.wake_consumer();
        }
    }

    fn spin(&self) -> (Duration, u32) {
        self.caller_spin
    }

    fn leave_to_parked(&self) -> bool {
        self.batch_behind_parked
            && self.seat.load(Ordering::SeqCst) & 1 == 1
            && self
                .since_start()
                .saturating_sub(self.parked_at.load(Ordering::SeqCst))
                < LEAVE_WINDOW_NANOS
    }

    fn line_busy(&self) -> bool {
        self.line_busy.load(Ordering::Relaxed)
    }
}

fn drain(mut wake: &UnixStream) {
    let mut sink = [0u8; 64];
    while matches!(wake.read(&mut sink), Ok(n) if n > 0) {}
}
