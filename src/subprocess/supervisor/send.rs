//! Requests out: the backlog, one request at a time into the outgoing
//! buffer, and the buffer into the pipe.

use super::*;

impl Core {
    /// Sends what is queued, starting a child first if there is none.
    ///
    /// While the child runs a sync request, new requests wait here and go
    /// out together once it answers: the child would not start them sooner
    /// anyway, and one read of many requests (and one write of their
    /// replies) costs the child far less than many reads of one.
    ///
    /// Right after the child answered several callers at once, their next
    /// requests tend to arrive within microseconds of each other: they are
    /// gathered for up to [`GATHER`] so the child gets them in one read.
    pub(super) fn send_backlog(&mut self) {
        if self.flights.line_busy() || self.gathering() {
            self.send_signals();
            return;
        }
        if self.child.is_none() && self.retry_at.is_some() {
            // A supervisor whose child could not start: its companion takes
            // what it can; what is left gets a start of its own.
            self.hand_back_unstarted();
        }
        while let Some(job) = self.backlog.pop_front() {
            let Some(job) = refuse_nested(job) else {
                continue;
            };
            if let Request::Cancel(_) = &job.request {
                self.send_cancel(job);
                continue;
            }
            if let Request::HostDone { .. } = &job.request {
                self.send_host_done(job);
                continue;
            }
            if let Request::Stream(feed) = &job.request {
                self.stream_signal(feed);
                continue;
            }
            // The call builder never asks for both.
            let unsupported = match &job.request {
                Request::Invoke(invoke) if invoke.capture && invoke.stream.is_some() => {
                    Some("a stream's output cannot be captured")
                }
                _ => None,
            };
            if let Some(why) = unsupported {
                job.reply.send(Err(PyRunnerError::Unsupported(why.into())));
                continue;
            }
            // Some requests go out even if their caller gave up (the
            // companion says which).
            if job.reply.is_abandoned() && !self.must_run(&job.request) {
                continue;
            }
            if self.stop_sent {
                job.reply.send(Err(PyRunnerError::Stopped));
                continue;
            }
            if self.child.is_none() && matches!(job.request, Request::Stop) {
                // Nothing runs to be stopped: no child is started just to
                // end it (nor one left to start later, after `stop`).
                self.stop_sent = true;
                for late in self.queue.close() {
                    late.reply.send(Err(PyRunnerError::Stopped));
                }
                self.stop_done = Some(job);
                continue;
            }
            if self.child.is_none() {
                if let Some(failure) = self.crash_loop.take() {
                    // Heard once; the command after it gets a fresh try.
                    job.reply.send(Err(failure));
                    continue;
                }
                // A fresh command gets one fresh try even after a crash loop.
                self.failed_starts = self.failed_starts.min(MAX_FAILED_STARTS - 1);
                if let Err(err) = self.start_child() {
                    // It names a replay that failed, if that was why.
                    self.replay_failure = None;
                    job.reply.send(Err(err.clone()));
                    if self.failed_starts >= MAX_FAILED_STARTS {
                        for job in self.backlog.drain(..) {
                            job.reply.send(Err(err.clone()));
                        }
                    }
                    continue;
                }
            }
            if let Some(failure) = self.replay_failure.take() {
                if !matches!(job.request, Request::Stop) {
                    // The command that needed the fresh child hears what it
                    // lacks instead of running without it unawares.
                    job.reply.send(Err(failure));
                    continue;
                }
            }
            if matches!(job.request, Request::Stop) {
                self.stop_sent = true;
                // Later pushes are refused from here on; queued ones get
                // `Stopped`, but for host functions' results: the requests
                // before the stop wait for them.
                for late in self.queue.close() {
                    if let Request::HostDone { .. } = late.request {
                        self.backlog.push_back(late);
                    } else {
                        late.reply.send(Err(PyRunnerError::Stopped));
                    }
                }
            }
            self.send(job);
        }
    }

    /// Sends the cancels, stream signals, host replies and nested requests
    /// of the backlog now, leaving the other requests in it in order. The
    /// child reads the signals after the sync request it runs, before
    /// anything sent later: a consumer that left a stream whose function
    /// still runs is heard before the stream makes its first item. A host
    /// reply and a nested request are read while it runs: the request
    /// waits for a host function, which waits for the nested request.
    fn send_signals(&mut self) {
        let signal = |job: &Job| {
            job.nested
                || matches!(
                    job.request,
                    Request::Cancel(_) | Request::Stream(_) | Request::HostDone { .. }
                )
        };
        if !self.backlog.iter().any(signal) {
            return;
        }
        let jobs: Vec<Job> = self.backlog.drain(..).collect();
        for job in jobs {
            match &job.request {
                Request::Cancel(_) => self.send_cancel(job),
                Request::Stream(feed) => self.stream_signal(feed),
                Request::HostDone { .. } => self.send_host_done(job),
                _ if job.nested && self.child.is_some() => self.send_nested(job),
                _ => self.backlog.push_back(job),
            }
        }
    }

    pub(super) fn send_host_done(&mut self, job: Job) {
        if let Request::HostDone { token, result } = job.request {
            self.host_done(token, result);
        }
    }

    /// A command a host function sent to this runner while the child
    /// waits for it.
    pub(super) fn send_nested(&mut self, job: Job) {
        let Some(job) = refuse_nested(job) else {
            return;
        };
        if job.reply.is_abandoned() && !self.must_run(&job.request) {
            return;
        }
        if self.stop_sent {
            job.reply.send(Err(PyRunnerError::Stopped));
            return;
        }
        self.send(job);
    }

    pub(super) fn send(&mut self, mut job: Job) {
        if matches!(job.request, Request::Stop) {
            // Its clock runs, like a command's, once the child would get to
            // it: a child that answers nothing then is killed, so `stop`
            // always ends (see `enforce_deadlines`).
            job.timeout = Some(EXIT_GRACE);
        }
        if let Some(companion) = &self.settings.companion {
            match companion.before_send(job) {
                Some(unanswered) => job = unanswered,
                None => return,
            }
        }
        let id = self.take_id();
        let kind = match job.request {
            Request::CallAsyncFunction { .. } => Kind::Coroutine,
            Request::Stop => Kind::Stop,
            _ if job.nested => Kind::Nested,
            _ => Kind::Sync,
        };
        // An invoke runs in the line until its function returns; an
        // awaitable result then runs on the child's loop under this limit,
        // and a stream's items each under it.
        let may_await = matches!(job.request, Request::Invoke(_));
        let limit = if kind == Kind::Coroutine || may_await {
            job.timeout.map(|d| d.as_secs_f64())
        } else {
            None
        };
        let before = self.outgoing.len();
        // A launched child enforces a sync request's limit itself (no
        // signal crosses its link): it is told the limit first.
        let launched = self
            .child
            .as_ref()
            .is_some_and(|child| child.launched.is_some());
        if let (true, Some(timeout), Kind::Sync | Kind::Nested) = (launched, job.timeout, kind) {
            self.encode_small(ToChild::Limit {
                id,
                seconds: timeout.as_secs_f64(),
            });
        }
        if kind == Kind::Nested {
            // The child tells a request a host function sent from one that
            // merely waits behind the request that called: this note goes
            // right before it, in the same write.
            self.encode_small(ToChild::Nested { id });
        }
        if let Err(err) = self
            .writer
            .encode(ToChild::new(id, &job.request, limit), &mut self.outgoing)
        {
            self.outgoing.truncate(before);
            job.reply.send(Err(err.into()));
            return;
        }
        let timeout = job.timeout;
        self.flights.sent(id, job, kind, timeout, Instant::now());
    }

    /// Asks the child to cancel the coroutine of a request whose caller
    /// gave up. One still in the line (an invoke whose function runs) is
    /// asked too: the child takes the cancel after that function returns,
    /// and cancels the coroutine it made, if it made one. A request not in
    /// flight was answered already, or never sent.
    fn send_cancel(&mut self, cancel: Job) {
        let Request::Cancel(target) = &cancel.request else {
            return;
        };
        let Some(id) = self.flights.find(|job| target.is_for(&job.reply)) else {
            if let Some(companion) = &self.settings.companion {
                companion.stray_cancel(cancel);
            }
            return;
        };
        let may_await = self.flights.get(id).is_some_and(|flight| {
            matches!(
                flight.item.request,
                Request::Invoke(_) | Request::CallAsyncFunction { .. }
            )
        });
        if !may_await {
            return;
        }
        let cancel = ToChild::Cancel { id };
        if let Err(err) = self.writer.encode(cancel, &mut self.outgoing) {
            // Only a frame over the limit fails, and this one is tiny.
            debug_assert!(false, "a cancel did not encode: {err}");
        }
    }

    /// Writes what the pipe takes now; the rest waits for POLLOUT.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        let Some(child) = self.child.as_mut() else {
            self.outgoing.clear();
            return Ok(());
        };
        while !self.outgoing.is_empty() {
            match child.write_requests(&self.outgoing) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.outgoing.advance(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// A nested command that cannot be served while the request that waits for
/// its host function holds the child is answered `Unsupported` here (None
/// then); others come back.
fn refuse_nested(job: Job) -> Option<Job> {
    if !job.nested {
        return Some(job);
    }
    let why = match &job.request {
        Request::CallAsyncFunction { .. } => {
            "a coroutine sent from a sync host function would run on the child's event loop, \
             which turns only once the command that called the host function has ended"
        }
        Request::Invoke(invoke) if invoke.stream.is_some() => {
            "a stream sent from a sync host function would make its items only once the \
             command that called the host function has ended"
        }
        Request::Stop => {
            "a stop sent from a sync host function cannot be served while the command that \
             called it waits for it"
        }
        _ => return Some(job),
    };
    job.reply.send(Err(PyRunnerError::Unsupported(why.into())));
    None
}
