//! Deadlines and losses: a limit that passed, a child that died or broke
//! the protocol, and the end of it all.

use super::*;

impl Core {
    pub(super) fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        if self.tend_link(now) {
            return;
        }
        if let Some(since) = self.interrupting {
            if now >= since + INTERRUPT_GRACE {
                self.replace_child(Loss::TimedOut);
            }
            return;
        }
        if !self.flights.any_timed() {
            return; // no limit in flight: nothing to look at
        }
        if self.flights.stop_overdue(now) {
            // Stopped by a signal, wedged, or not reading: ask no more.
            if let Some(child) = self.child.as_mut() {
                child.kill_group();
            }
            if let Some(stop) = self.flights.take_head() {
                self.stop_done = Some(stop.item);
            }
            return;
        }
        // With a ring the child says when it is in its event loop, where no
        // request runs (then only a coroutine can be what holds it up), or
        // in a sync stream's slice (then only that stream).
        let at = self
            .child
            .as_ref()
            .and_then(|child| child.ring.as_ref())
            .map(|ring| ring.child_at());
        let (seen, last_coroutine) = match at {
            None => (Seen::Unknown, None),
            Some(ChildAt::Outside { last_coroutine }) => (Seen::Outside, Some(last_coroutine)),
            Some(ChildAt::Loop { last_coroutine }) => (Seen::Loop, Some(last_coroutine)),
            Some(ChildAt::Stream {
                last_coroutine,
                stream,
                slice,
            }) => (Seen::Stream { id: stream, slice }, Some(last_coroutine)),
            // Replies to take first; the thread is back as soon as it has.
            Some(ChildAt::Unsure) => return,
        };
        match self.flights.judge(now, seen) {
            Due::Nothing => {}
            Due::Sync { id, limit } => {
                if let Some(companion) = &self.settings.companion {
                    // From here the child only unwinds and exits: the
                    // caller's next call (made as soon as it hears) is
                    // better sent elsewhere.
                    companion.unavailable(false);
                }
                // The caller hears at the deadline; the child gets to unwind.
                if let Some(running) = self.flights.get(id) {
                    running
                        .item
                        .reply
                        .slot()
                        .complete(Err(PyRunnerError::Timeout(limit)));
                }
                self.interrupted_nested = self
                    .flights
                    .get(id)
                    .is_some_and(|running| running.kind == Kind::Nested);
                if let Some(child) = &self.child {
                    child.interrupt(id);
                }
                self.interrupted = Some(id);
                self.interrupting = Some(now);
            }
            Due::Coroutine { id } => {
                self.interrupted = Some(id);
                // Without a ring, any coroutine in flight may have run.
                self.replace_child(Loss::CoroutineStuck {
                    last_coroutine: last_coroutine.unwrap_or(u64::MAX),
                    sync_started: None,
                });
            }
        }
    }

    /// A launched child's link: one silent for [`LINK_SILENCE_BEATS`]
    /// heartbeats while idle, or [`BUSY_SILENCE_BEATS`] while a request is
    /// in flight, is given up, as a dead child is (true then); one this
    /// side was quiet on for a heartbeat gets a beat.
    fn tend_link(&mut self, now: Instant) -> bool {
        let silence = self.link_silence();
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        let (Some(beat), Some(silence)) = (child.launched, silence) else {
            return false;
        };
        let quiet = now.saturating_duration_since(child.last_heard);
        if quiet >= silence {
            child.link_lost = Some(format!(
                "its link was silent for {quiet:.1?}, past the {silence:?} allowed"
            ));
            self.replace_child(Loss::Died);
            return true;
        }
        if now.saturating_duration_since(child.last_sent) >= beat && self.outgoing.is_empty() {
            self.encode_small(ToChild::Beat);
        }
        false
    }

    /// How long a launched child's link may be silent now. A child busy
    /// with a request beats from a thread of its own, which a C call that
    /// holds the GIL for long holds up too: it is given longer, and its
    /// request's limit, if it has one, ends it first.
    fn link_silence(&self) -> Option<Duration> {
        let beat = self.child.as_ref()?.launched?;
        let beats = if self.flights.is_empty() {
            LINK_SILENCE_BEATS
        } else {
            BUSY_SILENCE_BEATS
        };
        Some(beat.saturating_mul(beats))
    }

    /// When [`tend_link`](Self::tend_link) next has something to do. A beat
    /// is not due while bytes wait for room in the pipe: that wait is
    /// watched already, and would otherwise be a due time always past.
    pub(super) fn link_due(&self) -> Option<Instant> {
        let child = self.child.as_ref()?;
        let beat = child.launched?;
        let dead = child.last_heard.checked_add(self.link_silence()?);
        let beat_due = if self.outgoing.is_empty() {
            child.last_sent.checked_add(beat)
        } else {
            None
        };
        match (dead, beat_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Kills the child; fails the requests it had started and queues the
    /// ones it had not for a fresh child, which starts at once.
    pub(super) fn replace_child(&mut self, mut loss: Loss) {
        if let Some(companion) = &self.settings.companion {
            companion.unavailable(true);
        }
        self.interrupting = None;
        let interrupted = self.interrupted.take();
        let young = matches!(loss, Loss::Died | Loss::Protocol(_)) && self.child_is_young();
        let died_young = young && self.flights.is_empty();
        if died_young {
            self.failed_starts += 1;
        } else if !young && self.child.is_some() {
            self.failed_starts = 0;
        }
        let reason = match self.child.as_mut() {
            Some(child) => child.kill_and_describe(),
            None => "there was no child".into(),
        };
        let mut last_started = interrupted;
        if let (Loss::TimedOut, Some(target)) = (&loss, interrupted) {
            last_started = self.look_after_interrupt(target);
        }
        if std::mem::take(&mut self.interrupted_nested) {
            // A nested request ran inside its caller's wait: the requests
            // between the two, put aside by the wait, had not run; the
            // caller, the line's head, had.
            last_started = None;
        }
        if let Loss::CoroutineStuck {
            last_coroutine,
            sync_started,
        } = &mut loss
        {
            self.look_after_death(last_coroutine, sync_started);
        }
        self.child = None;
        self.outgoing.clear();
        // The child runs requests in order: everything up to and including
        // the first sync request in flight had started, the rest had not. A
        // child that stopped a request for SIGINT starts nothing after it.
        let reached = match loss {
            // No coroutine after the last one the child started had run,
            // nor any sync request but the one it may have gone on to after
            // the look that judged it.
            Loss::CoroutineStuck {
                last_coroutine,
                sync_started,
            } => Reached::Coroutines {
                last_coroutine,
                sync_started,
            },
            // A child waiting for a sync host function runs only the
            // requests its host functions sent (nested ones, started once
            // sent): the requests behind the one that waits had not run.
            _ => Reached::Upto(last_started.or(self.flights.head())),
        };
        // Its host calls are forgotten: a result that comes later is dropped.
        self.host_forget_child();
        let (started, replay) = self.flights.drain_after_loss(reached);
        for (id, flight) in started {
            let job = flight.item;
            if let Some(companion) = &self.settings.companion {
                companion.lost_running(&job.request);
            }
            let err = match &loss {
                _ if flight.kind == Kind::Stop => {
                    self.stop_done = Some(job);
                    continue;
                }
                Loss::Died => PyRunnerError::WorkerDied {
                    reason: reason.clone(),
                },
                Loss::Protocol(why) => {
                    PyRunnerError::Protocol(format!("{why}; the child was replaced"))
                }
                Loss::TimedOut | Loss::CoroutineStuck { .. } if Some(id) == interrupted => {
                    PyRunnerError::Timeout(flight.limit.unwrap_or_default())
                }
                Loss::TimedOut => PyRunnerError::WorkerDied {
                    reason: format!(
                        "the child was killed after a command ran past its limit; {reason}"
                    ),
                },
                Loss::CoroutineStuck { .. } => PyRunnerError::WorkerDied {
                    reason: format!(
                        "the child was killed after a coroutine ran on past its limit \
                         (it held the event loop, or would not stop); {reason}"
                    ),
                },
            };
            if let Err(reply) = self.end_stream(id, Err(err)) {
                job.reply.send(reply);
            }
        }
        // Every open stream was in flight, and has ended above.
        debug_assert!(self.streams.is_empty());
        for job in replay.into_iter().rev() {
            self.backlog.push_front(job);
        }
        if self.stop_sent || self.queue.is_closed() {
            return;
        }
        self.hand_back_unstarted();
        if died_young && (self.backlog.is_empty() || self.failed_starts >= MAX_FAILED_STARTS) {
            self.back_off(&reason);
            return;
        }
        // A fresh child now, so the next command does not wait for a start.
        // (Its companion counts it unavailable until one has started.)
        if let Err(err) = self.start_child() {
            if self.failed_starts >= MAX_FAILED_STARTS && !self.backlog.is_empty() {
                self.replay_failure = None;
                for job in self.backlog.drain(..) {
                    job.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// A child killed for a stuck coroutine was judged by a look at its ring
    /// taken before the kill; what it did in between is read now that it is
    /// dead. Its last replies are answered, and if it had left its loop
    /// since, the sync request it went on to may have started: that one is
    /// not sent again.
    pub(super) fn look_after_death(
        &mut self,
        last_coroutine: &mut u64,
        sync_started: &mut Option<u64>,
    ) {
        let _ = self.read_replies(None);
        let Some(ring) = self.child.as_ref().and_then(|child| child.ring.clone()) else {
            return;
        };
        match ring.child_at() {
            // A sync stream's slice, like the loop, runs no request.
            ChildAt::Loop {
                last_coroutine: last,
            }
            | ChildAt::Stream {
                last_coroutine: last,
                ..
            } => *last_coroutine = last,
            ChildAt::Outside {
                last_coroutine: last,
            } => {
                *last_coroutine = last;
                *sync_started = self.flights.head();
            }
            // Replies it could not read: the look before the kill stands.
            ChildAt::Unsure => {}
        }
    }

    /// A child killed at the end of its grace after SIGINT may have
    /// answered the request the signal was for just before: what it
    /// published is read now that it is dead. The last request it started
    /// is `target`, or, if it answered that one without stopping it for the
    /// signal, the first sync request in flight (`None`), which is then not
    /// sent again.
    pub(super) fn look_after_interrupt(&mut self, target: u64) -> Option<u64> {
        let _ = self.read_replies(None);
        let went_on = !self.flights.contains(target)
            && self
                .child
                .as_ref()
                .and_then(|child| child.ring.as_ref())
                .is_some_and(|ring| !ring.took_interrupt(target));
        (!went_on).then_some(target)
    }

    /// A supervisor with a companion offers it the requests its lost child
    /// never started, rather than make them wait for a new child; what it
    /// gives back stays.
    pub(super) fn hand_back_unstarted(&mut self) {
        let Some(companion) = self.settings.companion.clone() else {
            return;
        };
        self.queue.take_all(&mut self.backlog);
        let mut kept = VecDeque::new();
        for mut job in self.backlog.drain(..) {
            // No child of another worker waits for a host function of this one's.
            job.nested = false;
            if let Some(job) = companion.hand_back(job) {
                kept.push_back(job);
            }
        }
        self.backlog = kept;
    }

    /// Ends the child: on `stop`, after it has answered; when dropped, by end
    /// of file on its requests and then, after a grace, by force.
    pub(super) fn shut_down(&mut self) {
        // The replies read below may hold host calls: none starts now.
        self.host.refuse();
        self.host_forget_child();
        for job in self.queue.close() {
            job.reply.send(Err(PyRunnerError::Stopped));
        }
        for job in self.backlog.drain(..) {
            job.reply.send(Err(PyRunnerError::Stopped));
        }
        if let Some(child) = self.child.as_mut() {
            // A stopped child exits by itself after its reply, once its
            // pending coroutines have unwound; a dropped one on end of file.
            child.close_requests();
            child.wait_for_exit(EXIT_GRACE);
            child.kill_group();
        }
        if self.settings.spec.output.is_some() {
            // The lines it sent as it ended (a coroutine's `finally`).
            let _ = self.read_replies(None);
        }
        if let Some(child) = self.child.take() {
            // All it printed is out before `stop` (or the drop) returns.
            child.forward_last_stderr();
        }
        let flights: Vec<_> = self.flights.drain().collect();
        for (id, flight) in flights {
            let reply = if flight.kind == Kind::Stop {
                Ok(Answer::Value(Value::Null))
            } else {
                Err(PyRunnerError::Stopped)
            };
            if let Err(reply) = self.end_stream(id, reply) {
                flight.item.reply.send(reply);
            }
        }
        if let Some(stop) = self.stop_done.take() {
            stop.reply.send(Ok(Answer::Value(Value::Null)));
        }
    }
}
