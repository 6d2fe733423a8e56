//! What is in flight to a child, as plain data: which request runs, whose
//! clock is running, which deadline has passed, and, after the child is
//! lost, which requests it had started and which it never did.
//!
//! No I/O and no clock of its own: every call that needs the time is given
//! it, so the tests below drive it with made-up instants. The supervisor
//! holds one [`Flights`] per child and acts on what it says.
//!
//! The child runs sync requests one at a time, in the order sent (its
//! "line"); coroutines run on its event loop between them. A sync request's
//! limit counts from when it reaches the head of the line; a coroutine's
//! limit is enforced in the child, and here only its backstop, past the
//! limit by [`COROUTINE_BACKSTOP`], is judged; so is an open stream's, for
//! each item.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::tuning::{COROUTINE_BACKSTOP, COROUTINE_RECHECK};

/// How a request runs in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// In the child's line, one at a time.
    Sync,
    /// On the child's event loop.
    Coroutine,
    /// `stop`: in the line; once at its head, a child that does not answer
    /// it within its limit is killed.
    Stop,
    /// An open stream: out of the line, its items made between requests
    /// (or on the event loop). Its limit is each item's, kept by the child;
    /// here only a backstop past it, while the child may send, is judged.
    /// It had always started.
    Stream,
    /// Sent by a host function to the child that waits for it: the child
    /// runs it at once, inside the request that called the host function,
    /// so it is not in the line (the caller of the host function is). Its
    /// limit runs from when it was sent. Once sent, it counts as started.
    Nested,
}

impl Kind {
    /// Whether it runs outside the child's line: judged by its backstop.
    fn off_the_line(self) -> bool {
        matches!(self, Kind::Coroutine | Kind::Stream)
    }

    /// Whether it waits its turn in the child's line.
    fn in_line(self) -> bool {
        matches!(self, Kind::Sync | Kind::Stop)
    }
}

/// One request in flight.
pub(super) struct Flight<T> {
    pub item: T,
    pub kind: Kind,
    pub limit: Option<Duration>,
    /// A sync request's runs from when it reached the head of the line; a
    /// coroutine's is its backstop.
    deadline: Option<Instant>,
    /// A stream whose items are made on the child's event loop, as a
    /// coroutine is, rather than in slices between requests.
    on_loop: bool,
    /// A sync stream's: the child's count of slices begun when its
    /// backstop last started (see [`Seen::Stream`]), if known.
    slice: Option<u64>,
}

impl<T> Flight<T> {
    /// Whether this flight (request `id`, off the line) can be what holds
    /// the child up when the child is `seen` there: a coroutine (or an
    /// async stream) in the event loop, a sync stream in its own slice;
    /// without a ring, anything off the line.
    fn may_hold(&self, id: u64, seen: Seen) -> bool {
        match (self.kind, seen) {
            (Kind::Coroutine, Seen::Unknown | Seen::Loop) => true,
            (Kind::Stream, Seen::Unknown) => true,
            (Kind::Stream, Seen::Loop) => self.on_loop,
            (Kind::Stream, Seen::Stream { id: making, .. }) => !self.on_loop && making == id,
            _ => false,
        }
    }
}

/// Where the child was seen when limits are judged (its ring says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// No ring: the child cannot say.
    Unknown,
    /// Outside its event loop: a sync request runs, or nothing does.
    Outside,
    /// In its event loop (or making a coroutine): no sync request runs.
    Loop,
    /// Making items of sync stream `id`, in the `slice`th slice of any
    /// stream it began: nothing else runs.
    Stream { id: u64, slice: u64 },
}

impl Seen {
    /// Whether no sync request can be running.
    fn off_the_line(self) -> bool {
        matches!(self, Seen::Loop | Seen::Stream { .. })
    }
}

/// A limit passed, as [`Flights::judge`] finds it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    Nothing,
    /// The sync request running in the child ran past its limit.
    Sync {
        id: u64,
        limit: Duration,
    },
    /// A coroutine ran on past its backstop: it holds the loop, or will
    /// not stop.
    Coroutine {
        id: u64,
    },
}

/// How far a lost child had got, for [`Flights::drain_after_loss`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Reached {
    /// Everything up to and including this request had started; nothing
    /// after it had. `None`: every coroutine had started, and no sync
    /// request was in flight.
    Upto(Option<u64>),
    /// No coroutine after `last_coroutine` had started, and no sync
    /// request but `sync_started`.
    Coroutines {
        last_coroutine: u64,
        sync_started: Option<u64>,
    },
}

/// The requests in flight to one child, by id (ids grow: this is also the
/// order they were sent in).
pub(super) struct Flights<T> {
    by_id: BTreeMap<u64, Flight<T>>,
    /// Ids of sync requests, in the order the child runs them.
    line: VecDeque<u64>,
    /// How many have a limit.
    timed: usize,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            by_id: BTreeMap::new(),
            line: VecDeque::new(),
            timed: 0,
        }
    }
}

impl<T> Flights<T> {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether a sync request is in flight: the child is not free to start
    /// the next one.
    pub fn line_busy(&self) -> bool {
        !self.line.is_empty()
    }

    /// Whether any request in flight has a limit, whose clock someone
    /// must keep.
    pub fn any_timed(&self) -> bool {
        self.timed > 0
    }

    /// The sync request the child runs now (or would run next).
    pub fn head(&self) -> Option<u64> {
        self.line.front().copied()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn get(&self, id: u64) -> Option<&Flight<T>> {
        self.by_id.get(&id)
    }

    /// The id of the request in flight whose item `is`.
    pub fn find(&self, is: impl Fn(&T) -> bool) -> Option<u64> {
        self.by_id
            .iter()
            .find(|(_, flight)| is(&flight.item))
            .map(|(id, _)| *id)
    }

    /// The first `count` sync requests in line, in order.
    pub fn in_line(&self, count: usize) -> impl Iterator<Item = &Flight<T>> {
        self.line
            .iter()
            .take(count)
            .filter_map(|id| self.by_id.get(id))
    }

    /// Notes a request sent at `now`.
    pub fn sent(&mut self, id: u64, item: T, kind: Kind, limit: Option<Duration>, now: Instant) {
        let deadline = match (kind, limit) {
            (Kind::Coroutine, Some(limit)) => Some(now + limit + COROUTINE_BACKSTOP),
            (Kind::Sync | Kind::Stop, Some(limit)) if self.line.is_empty() => Some(now + limit),
            (Kind::Nested, Some(limit)) => Some(now + limit),
            _ => None,
        };
        if kind.in_line() {
            self.line.push_back(id);
        }
        self.timed += usize::from(limit.is_some());
        self.by_id.insert(
            id,
            Flight {
                item,
                kind,
                limit,
                deadline,
                on_loop: kind == Kind::Coroutine,
                slice: None,
            },
        );
    }

    /// Takes the request `id`, just answered; the next sync request in line
    /// starts its clock at `now()` (asked only then: this is the reply
    /// path). `None`: no such request is in flight.
    pub fn answered(&mut self, id: u64, now: impl FnOnce() -> Instant) -> Option<Flight<T>> {
        let done = self.by_id.remove(&id)?;
        self.timed -= usize::from(done.limit.is_some());
        if done.kind.in_line() {
            if self.line.front() == Some(&id) {
                self.line.pop_front();
            } else {
                self.line.retain(|&queued| queued != id);
            }
            self.start_head_clock(now);
        }
        Some(done)
    }

    /// The sync request `id` (an invoke) has become a coroutine on the
    /// child's loop: it leaves the line, and from `now` on only its
    /// backstop is judged, as for any coroutine. The next in line starts
    /// its clock. False if no such sync request is in flight.
    pub fn became_coroutine(&mut self, id: u64, now: Instant) -> bool {
        let Some(flight) = self.by_id.get_mut(&id) else {
            return false;
        };
        if !matches!(flight.kind, Kind::Sync | Kind::Nested) {
            return false;
        }
        flight.kind = Kind::Coroutine;
        flight.deadline = flight.limit.map(|limit| now + limit + COROUTINE_BACKSTOP);
        self.line.retain(|&queued| queued != id);
        self.start_head_clock(|| now);
        true
    }

    /// The sync request `id` (a stream's invoke) has opened its stream: it
    /// leaves the line, and its backstop runs for the first item. Its
    /// items are made `on_loop` (an async iterator) or in slices between
    /// requests; `slice` is the child's count of slices begun, if known.
    /// False if no such sync request is in flight.
    pub fn became_stream(
        &mut self,
        id: u64,
        on_loop: bool,
        now: Instant,
        slice: Option<u64>,
    ) -> bool {
        let Some(flight) = self.by_id.get_mut(&id) else {
            return false;
        };
        if !matches!(flight.kind, Kind::Sync | Kind::Nested) {
            return false;
        }
        flight.kind = Kind::Stream;
        flight.on_loop = on_loop;
        flight.slice = slice;
        flight.deadline = flight.limit.map(|limit| now + limit + COROUTINE_BACKSTOP);
        self.line.retain(|&queued| queued != id);
        self.start_head_clock(|| now);
        true
    }

    /// Stream `id` sent an item or got credit at `now` (when the child had
    /// begun `slice` slices, if known): the backstop of its next item runs
    /// from then if the child `may_send`, else (it waits for credit) no
    /// clock runs.
    pub fn stream_moved(&mut self, id: u64, may_send: bool, now: Instant, slice: Option<u64>) {
        if let Some(flight) = self.by_id.get_mut(&id) {
            if flight.kind == Kind::Stream {
                flight.slice = slice;
                flight.deadline = match (may_send, flight.limit) {
                    (true, Some(limit)) => Some(now + limit + COROUTINE_BACKSTOP),
                    _ => None,
                };
            }
        }
    }

    fn start_head_clock(&mut self, now: impl FnOnce() -> Instant) {
        let Some(head) = self.line.front() else {
            return;
        };
        if let Some(next) = self.by_id.get_mut(head) {
            if let (None, Some(limit)) = (next.deadline, next.limit) {
                next.deadline = Some(now() + limit);
            }
        }
    }

    /// When a deadline next needs a look. A backstop that passed while a
    /// sync request runs waits for it to end (or for the child to be seen
    /// in its loop): it is looked at again every [`COROUTINE_RECHECK`]
    /// rather than at once, again and again.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.by_id
            .values()
            .filter_map(|flight| {
                let deadline = flight.deadline?;
                Some(if flight.kind.off_the_line() && deadline <= now {
                    now + COROUTINE_RECHECK
                } else {
                    deadline
                })
            })
            .min()
    }

    /// Whether `stop` is at the head of the line and has not been answered
    /// within its limit.
    pub fn stop_overdue(&self, now: Instant) -> bool {
        self.line
            .front()
            .and_then(|head| self.by_id.get(head))
            .is_some_and(|flight| {
                flight.kind == Kind::Stop && flight.deadline.is_some_and(|deadline| now >= deadline)
            })
    }

    /// Takes the request at the head of the line, without starting the
    /// next one's clock (its child is gone).
    pub fn take_head(&mut self) -> Option<Flight<T>> {
        let head = self.line.pop_front()?;
        let flight = self.by_id.remove(&head)?;
        self.timed -= usize::from(flight.limit.is_some());
        Some(flight)
    }

    /// Which limit has passed at `now`, with the child `seen` where its
    /// ring says. A limit counts while its command runs, not while it
    /// waits: a sync request past its deadline while the child is in its
    /// loop or a stream's slice has not started, and its clock starts
    /// again. Likewise a coroutine's or stream's backstop is judged only
    /// where it can be what holds the child (see `Flight::may_hold`); past
    /// it elsewhere, it starts again, for the child was busy with
    /// something else. A sync stream is judged in its own slice only, and
    /// only if that slice had begun when its backstop started: a slice
    /// begun since (the child went on to other things in between) starts
    /// it again. Without a ring (`Seen::Unknown`) a backstop waits while a
    /// sync request is in flight and is judged otherwise.
    pub fn judge(&mut self, now: Instant, seen: Seen) -> Due {
        let overdue = |deadline: Option<Instant>| deadline.is_some_and(|deadline| now >= deadline);
        if let Some(&head) = self.line.front() {
            if let Some(running) = self.by_id.get_mut(&head) {
                if overdue(running.deadline) {
                    let limit = running.limit.unwrap_or_default();
                    if !seen.off_the_line() {
                        return Due::Sync { id: head, limit };
                    }
                    running.deadline = Some(now + limit);
                }
            }
        }
        // A nested request runs as soon as the child reads it, inside the
        // request that waits for its host function.
        for (&id, flight) in self.by_id.iter_mut() {
            if flight.kind != Kind::Nested || !overdue(flight.deadline) {
                continue;
            }
            let limit = flight.limit.unwrap_or_default();
            if !seen.off_the_line() {
                return Due::Sync { id, limit };
            }
            flight.deadline = Some(now + limit);
        }
        if seen == Seen::Unknown && !self.line.is_empty() {
            return Due::Nothing;
        }
        let mut due = Due::Nothing;
        for (&id, flight) in self.by_id.iter_mut() {
            if !flight.kind.off_the_line() || !overdue(flight.deadline) {
                continue;
            }
            let limit = flight.limit.unwrap_or_default();
            let held = flight.may_hold(id, seen);
            if let (true, Seen::Stream { slice, .. }) = (held, seen) {
                if flight.slice != Some(slice) {
                    // Its slice began after its clock started.
                    flight.slice = Some(slice);
                    flight.deadline = Some(now + limit + COROUTINE_BACKSTOP);
                    continue;
                }
            }
            if held {
                if due == Due::Nothing {
                    due = Due::Coroutine { id };
                }
            } else {
                // It could not run: the child was busy elsewhere.
                flight.deadline = Some(now + limit + COROUTINE_BACKSTOP);
            }
        }
        due
    }

    /// Empties the flights of a lost child: those it had started, by id
    /// (their callers hear how it ended), and the items of those it never
    /// started, in the order sent (for a fresh child).
    pub fn drain_after_loss(&mut self, reached: Reached) -> (Vec<(u64, Flight<T>)>, Vec<T>) {
        self.line.clear();
        self.timed = 0;
        let mut started = Vec::new();
        let mut unstarted = Vec::new();
        for (id, flight) in std::mem::take(&mut self.by_id) {
            let never_started = match reached {
                Reached::Upto(head) => head.is_some_and(|head| id > head),
                Reached::Coroutines {
                    last_coroutine,
                    sync_started,
                } => match flight.kind {
                    Kind::Coroutine => id > last_coroutine,
                    Kind::Sync | Kind::Stop => Some(id) != sync_started,
                    Kind::Stream | Kind::Nested => false,
                },
            };
            // A nested request ran inside the one that waited for it.
            let never_started = never_started && flight.kind != Kind::Nested;
            // Items of an open stream went out: it is never run again.
            let never_started = never_started && flight.kind != Kind::Stream;
            if never_started {
                unstarted.push(flight.item);
            } else {
                started.push((id, flight));
            }
        }
        (started, unstarted)
    }

    /// Takes the nested requests in flight, in the order sent: a start
    /// whose child failed answers them (no child waits for them).
    pub fn take_nested(&mut self) -> Vec<(u64, Flight<T>)> {
        let ids: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, flight)| flight.kind == Kind::Nested)
            .map(|(&id, _)| id)
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let flight = self.by_id.remove(&id)?;
                self.timed -= usize::from(flight.limit.is_some());
                Some((id, flight))
            })
            .collect()
    }

    /// Empties them all, in the order sent.
    pub fn drain(&mut self) -> impl Iterator<Item = (u64, Flight<T>)> {
        self.line.clear();
        self.timed = 0;
        std::mem::take(&mut self.by_id).into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A fake clock: instants at whole milliseconds after a fixed start.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Clock {
            Clock(Instant::now())
        }

        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    #[test]
    fn a_sync_limit_runs_from_the_head_of_the_line() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, "first", Kind::Sync, Some(100 * MS), clock.at(0));
        flights.sent(2, "second", Kind::Sync, Some(100 * MS), clock.at(0));
        // The second waits: at 150 ms only the first is overdue.
        assert_eq!(
            flights.judge(clock.at(150), Seen::Unknown),
            Due::Sync {
                id: 1,
                limit: 100 * MS
            }
        );
        // Answered at 150 ms: the second's clock starts then.
        assert_eq!(flights.answered(1, || clock.at(150)).unwrap().item, "first");
        assert_eq!(flights.judge(clock.at(249), Seen::Unknown), Due::Nothing);
        assert_eq!(flights.next_deadline(clock.at(200)), Some(clock.at(250)));
        assert_eq!(
            flights.judge(clock.at(250), Seen::Unknown),
            Due::Sync {
                id: 2,
                limit: 100 * MS
            }
        );
    }

    #[test]
    fn a_sync_request_past_its_deadline_while_the_child_is_in_its_loop_starts_again() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, (), Kind::Sync, Some(100 * MS), clock.at(0));
        assert_eq!(flights.judge(clock.at(120), Seen::Loop), Due::Nothing);
        // Its clock started again at 120 ms.
        assert_eq!(flights.judge(clock.at(219), Seen::Unknown), Due::Nothing);
        assert_eq!(
            flights.judge(clock.at(220), Seen::Unknown),
            Due::Sync {
                id: 1,
                limit: 100 * MS
            }
        );
    }

    #[test]
    fn a_coroutine_is_judged_at_its_backstop_and_only_while_no_sync_request_runs() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, (), Kind::Coroutine, Some(100 * MS), clock.at(0));
        flights.sent(2, (), Kind::Sync, None, clock.at(0));
        let backstop = 100 + COROUTINE_BACKSTOP.as_millis() as u64;
        assert_eq!(
            flights.judge(clock.at(backstop - 1), Seen::Unknown),
            Due::Nothing
        );
        // Past its backstop, but a sync request runs: not its fault.
        assert_eq!(
            flights.judge(clock.at(backstop), Seen::Unknown),
            Due::Nothing
        );
        // ... looked at again later, not at once and again.
        let now = clock.at(backstop + 5);
        assert_eq!(flights.next_deadline(now), Some(now + COROUTINE_RECHECK));
        // In its loop, the child runs no sync request: the coroutine it is.
        assert_eq!(
            flights.judge(clock.at(backstop), Seen::Loop),
            Due::Coroutine { id: 1 }
        );
        flights.answered(2, || clock.at(backstop + 1));
        assert_eq!(
            flights.judge(clock.at(backstop + 1), Seen::Unknown),
            Due::Coroutine { id: 1 }
        );
    }

    #[test]
    fn untimed_requests_keep_no_clock() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, (), Kind::Sync, None, clock.at(0));
        flights.sent(2, (), Kind::Coroutine, None, clock.at(0));
        assert!(!flights.any_timed());
        assert_eq!(flights.next_deadline(clock.at(0)), None);
        assert_eq!(
            flights.judge(clock.at(1_000_000), Seen::Unknown),
            Due::Nothing
        );
        flights.sent(3, (), Kind::Sync, Some(MS), clock.at(0));
        assert!(flights.any_timed());
        flights.answered(3, || clock.at(1));
        assert!(!flights.any_timed());
    }

    #[test]
    fn stop_is_overdue_only_once_it_heads_the_line_and_its_limit_passed() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, "call", Kind::Sync, None, clock.at(0));
        flights.sent(2, "stop", Kind::Stop, Some(500 * MS), clock.at(0));
        assert!(!flights.stop_overdue(clock.at(10_000)));
        flights.answered(1, || clock.at(10_000));
        assert!(!flights.stop_overdue(clock.at(10_499)));
        assert!(flights.stop_overdue(clock.at(10_500)));
        assert_eq!(flights.take_head().unwrap().item, "stop");
        assert!(flights.is_empty() && !flights.any_timed());
    }

    #[test]
    fn an_answer_out_of_line_leaves_the_head_running() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, (), Kind::Sync, Some(100 * MS), clock.at(0));
        flights.sent(2, (), Kind::Sync, Some(100 * MS), clock.at(0));
        flights.answered(2, || clock.at(50));
        assert_eq!(flights.head(), Some(1));
        assert!(flights.answered(2, || clock.at(50)).is_none());
        assert_eq!(
            flights.judge(clock.at(100), Seen::Unknown),
            Due::Sync {
                id: 1,
                limit: 100 * MS
            }
        );
    }

    #[test]
    fn a_lost_child_had_started_everything_up_to_its_head() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, "coroutine", Kind::Coroutine, None, clock.at(0));
        flights.sent(2, "running", Kind::Sync, None, clock.at(0));
        flights.sent(3, "late coroutine", Kind::Coroutine, None, clock.at(0));
        flights.sent(4, "queued", Kind::Sync, None, clock.at(0));
        let (started, unstarted) = flights.drain_after_loss(Reached::Upto(flights.head()));
        let started: Vec<_> = started.into_iter().map(|(id, f)| (id, f.item)).collect();
        assert_eq!(started, [(1, "coroutine"), (2, "running")]);
        assert_eq!(unstarted, ["late coroutine", "queued"]);
        assert!(flights.is_empty() && !flights.line_busy());
    }

    #[test]
    fn with_no_sync_request_in_flight_every_coroutine_had_started() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, 'a', Kind::Coroutine, None, clock.at(0));
        flights.sent(2, 'b', Kind::Coroutine, None, clock.at(0));
        let (started, unstarted) = flights.drain_after_loss(Reached::Upto(None));
        assert_eq!(started.len(), 2);
        assert!(unstarted.is_empty());
    }

    #[test]
    fn a_stuck_coroutine_s_child_had_started_no_later_coroutine_nor_queued_sync_request() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, "stuck", Kind::Coroutine, Some(MS), clock.at(0));
        flights.sent(2, "sync it went on to", Kind::Sync, None, clock.at(0));
        flights.sent(3, "after", Kind::Coroutine, None, clock.at(0));
        flights.sent(4, "queued sync", Kind::Sync, None, clock.at(0));
        let (started, unstarted) = flights.drain_after_loss(Reached::Coroutines {
            last_coroutine: 1,
            sync_started: Some(2),
        });
        let started: Vec<_> = started.into_iter().map(|(_, f)| f.item).collect();
        assert_eq!(started, ["stuck", "sync it went on to"]);
        assert_eq!(unstarted, ["after", "queued sync"]);
    }

    #[test]
    fn an_open_stream_leaves_the_line_keeps_a_backstop_only_while_it_may_send_and_is_never_sent_again(
    ) {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, "stream", Kind::Sync, Some(100 * MS), clock.at(0));
        flights.sent(2, "queued", Kind::Sync, None, clock.at(0));
        assert!(flights.became_stream(1, false, clock.at(10), None));
        assert_eq!(flights.head(), Some(2));
        flights.answered(2, || clock.at(20));
        let backstop = 100 * MS + COROUTINE_BACKSTOP;
        assert_eq!(
            flights.judge(clock.at(10) + backstop - MS, Seen::Unknown),
            Due::Nothing
        );
        // An item came at 50 ms: the next one's backstop runs from then.
        flights.stream_moved(1, true, clock.at(50), None);
        assert_eq!(
            flights.judge(clock.at(10) + backstop, Seen::Unknown),
            Due::Nothing
        );
        assert_eq!(
            flights.judge(clock.at(50) + backstop, Seen::Unknown),
            Due::Coroutine { id: 1 }
        );
        // Out of credit, it waits for the consumer: no clock.
        flights.stream_moved(1, false, clock.at(60), None);
        assert_eq!(flights.next_deadline(clock.at(60)), None);
        assert_eq!(
            flights.judge(clock.at(1_000_000), Seen::Unknown),
            Due::Nothing
        );
        // A lost child had started it, whatever the ring said.
        flights.sent(3, "coroutine", Kind::Coroutine, None, clock.at(70));
        let (started, unstarted) = flights.drain_after_loss(Reached::Coroutines {
            last_coroutine: 0,
            sync_started: None,
        });
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].1.item, "stream");
        assert_eq!(unstarted, ["coroutine"]);
        assert!(!flights.became_stream(9, false, clock.at(80), None));
    }

    #[test]
    fn an_invoke_that_became_a_coroutine_leaves_the_line_for_its_backstop() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, "invoke", Kind::Sync, Some(100 * MS), clock.at(0));
        flights.sent(2, "queued", Kind::Sync, Some(10 * MS), clock.at(0));
        assert_eq!(flights.head(), Some(1));
        assert!(flights.became_coroutine(1, clock.at(20)));
        // The request behind it runs now, on its own clock.
        assert_eq!(flights.head(), Some(2));
        assert_eq!(
            flights.judge(clock.at(30), Seen::Unknown),
            Due::Sync {
                id: 2,
                limit: 10 * MS
            }
        );
        flights.answered(2, || clock.at(30));
        // Judged at its backstop, counted from when it left the line.
        assert_eq!(flights.judge(clock.at(120), Seen::Unknown), Due::Nothing);
        assert_eq!(
            flights.judge(clock.at(120) + COROUTINE_BACKSTOP, Seen::Unknown),
            Due::Coroutine { id: 1 }
        );
        // Only a sync request in flight can become one.
        assert!(!flights.became_coroutine(1, clock.at(130)));
        assert!(!flights.became_coroutine(9, clock.at(130)));
    }

    #[test]
    fn with_a_ring_a_backstop_is_judged_only_where_its_flight_can_hold_the_child() {
        let clock = Clock::new();
        let span = 100 * MS + COROUTINE_BACKSTOP;
        let after = |spans: u32| clock.at(0) + span * spans;
        let open = || {
            let mut flights = Flights::default();
            flights.sent(1, "sync stream", Kind::Sync, Some(100 * MS), clock.at(0));
            assert!(flights.became_stream(1, false, clock.at(0), Some(7)));
            flights.sent(2, "async stream", Kind::Sync, Some(100 * MS), clock.at(0));
            assert!(flights.became_stream(2, true, clock.at(0), Some(7)));
            flights.sent(3, "coroutine", Kind::Coroutine, Some(100 * MS), clock.at(0));
            flights
        };
        // A long call ran: nothing off the line could run, every clock
        // starts again.
        let mut flights = open();
        flights.sent(4, "long call", Kind::Sync, None, clock.at(0));
        assert_eq!(flights.judge(after(1), Seen::Outside), Due::Nothing);
        assert_eq!(flights.next_deadline(after(1)), Some(after(2)));
        flights.answered(4, || after(1));
        // Stream 1's slice, begun after its clock started: again; still
        // that slice at its next backstop: stream 1 holds the child.
        let slice_9 = Seen::Stream { id: 1, slice: 9 };
        assert_eq!(flights.judge(after(2), slice_9), Due::Nothing);
        assert_eq!(flights.judge(after(3), slice_9), Due::Coroutine { id: 1 });
        // In the loop a sync stream cannot run; the async one and the
        // coroutine can.
        let mut flights = open();
        assert_eq!(
            flights.judge(after(1), Seen::Loop),
            Due::Coroutine { id: 2 }
        );
        let mut flights = open();
        flights.answered(2, || after(0));
        assert_eq!(
            flights.judge(after(1), Seen::Loop),
            Due::Coroutine { id: 3 }
        );
        // Another stream's slice holds the child: none is blamed.
        let mut flights = open();
        let other = Seen::Stream { id: 5, slice: 7 };
        assert_eq!(flights.judge(after(1), other), Due::Nothing);
        assert_eq!(flights.next_deadline(after(1)), Some(after(2)));
        // Its own slice, the one its clock started in: blamed at once.
        let own = Seen::Stream { id: 1, slice: 7 };
        assert_eq!(flights.judge(after(2), own), Due::Coroutine { id: 1 });
    }

    #[test]
    fn a_nested_request_runs_past_the_line_on_its_own_clock_and_always_started() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(
            1,
            "waits for a host function",
            Kind::Sync,
            None,
            clock.at(0),
        );
        flights.sent(2, "queued behind", Kind::Sync, Some(50 * MS), clock.at(0));
        flights.sent(3, "nested", Kind::Nested, Some(100 * MS), clock.at(10));
        // Not in the line: the one that waits is still its head.
        assert_eq!(flights.head(), Some(1));
        assert_eq!(flights.judge(clock.at(109), Seen::Outside), Due::Nothing);
        assert_eq!(
            flights.judge(clock.at(110), Seen::Outside),
            Due::Sync {
                id: 3,
                limit: 100 * MS
            }
        );
        // Seen in the event loop, it cannot be running: its clock starts again.
        assert_eq!(flights.judge(clock.at(120), Seen::Loop), Due::Nothing);
        assert_eq!(flights.next_deadline(clock.at(120)), Some(clock.at(220)));
        // Lost while the first waited: the nested one had started; the one
        // queued behind had not.
        let (started, unstarted) = flights.drain_after_loss(Reached::Upto(Some(1)));
        let started: Vec<u64> = started.into_iter().map(|(id, _)| id).collect();
        assert_eq!(started, vec![1, 3]);
        assert_eq!(unstarted, vec!["queued behind"]);
    }

    #[test]
    fn nested_requests_are_taken_alone() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, "waits", Kind::Sync, Some(MS * 1000), clock.at(0));
        flights.sent(2, "nested", Kind::Nested, Some(MS * 100), clock.at(1));
        flights.sent(3, "behind", Kind::Sync, None, clock.at(1));
        let taken: Vec<u64> = flights
            .take_nested()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(taken, vec![2]);
        assert_eq!(flights.len(), 2);
        assert_eq!(flights.head(), Some(1));
        // Only the first one's clock is left.
        assert_eq!(flights.next_deadline(clock.at(2)), Some(clock.at(1000)));
    }

    #[test]
    fn a_nested_request_answered_leaves_the_line_as_it_was() {
        let clock = Clock::new();
        let mut flights = Flights::default();
        flights.sent(1, "waits", Kind::Sync, Some(MS * 1000), clock.at(0));
        flights.sent(2, "nested", Kind::Nested, None, clock.at(1));
        assert!(flights.answered(2, || clock.at(2)).is_some());
        assert_eq!(flights.head(), Some(1));
        assert!(flights.line_busy());
        assert!(flights.became_coroutine(1, clock.at(3)));
        assert!(!flights.line_busy());
    }
}
