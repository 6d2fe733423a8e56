//! Replies in: read from the pipe or the ring, matched to their requests,
//! and handed to their callers.

use super::*;

impl Core {
    /// Whether the child has exited, looked at when the thread's poll saw
    /// its pidfd fire, else once in [`EXIT_CHECK`]: a look is a system
    /// call, and the thread may turn many times between two polls.
    pub(super) fn look_for_exit(&mut self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        let now = Instant::now();
        if self.next_exit_look.is_some_and(|at| now < at) {
            return false;
        }
        self.next_exit_look = Some(now + EXIT_CHECK);
        child.exited()
    }

    /// Flushes; on failure records the loss and returns false. A closed pipe
    /// means the child is gone (its exit status says why).
    pub(super) fn flush_or_lose(&mut self) -> bool {
        let Err(err) = self.flush() else {
            return true;
        };
        self.lost = Some(if err.kind() == io::ErrorKind::BrokenPipe {
            Loss::Died
        } else {
            Loss::Protocol(format!("writing to the child failed: {err}"))
        });
        false
    }

    /// Answers every reply that has arrived. `Ok(false)`: the child closed
    /// its end, so it is dead or dying. A caller's turn (`held` given)
    /// leaves a ring's doorbells and end of file to the thread, which polls
    /// for them anyway.
    pub(super) fn read_replies(
        &mut self,
        mut held: Option<&mut Vec<Waker>>,
    ) -> Result<bool, PyRunnerError> {
        let on_thread = held.is_none();
        loop {
            self.answer_frames(held.as_deref_mut())?;
            let Some(child) = self.child.as_mut() else {
                return Ok(true);
            };
            match child.receive(&mut self.reader, on_thread) {
                Ok(0) => {
                    self.answer_frames(held.as_deref_mut())?;
                    return Ok(false);
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    return Err(PyRunnerError::Protocol(format!(
                        "reading from the child failed: {err}"
                    )))
                }
            }
        }
    }

    /// Answers every whole reply frame read so far; with `held`, the
    /// answered callers' wakers go there instead of being woken.
    pub(super) fn answer_frames(
        &mut self,
        held: Option<&mut Vec<Waker>>,
    ) -> Result<(), PyRunnerError> {
        let before = self.handed_out;
        let result = self.answer_each_frame(held);
        let answered = self.handed_out - before;
        // Not beside others: the callers it answered send their next calls
        // to whichever sibling is least loaded (see `tuning::POOL_WORKER`).
        if answered >= 2 && !self.flights.line_busy() && self.settings.supervision.gathers {
            self.gather = Some((Instant::now() + GATHER, answered));
        }
        result
    }

    pub(super) fn answer_each_frame(
        &mut self,
        mut held: Option<&mut Vec<Waker>>,
    ) -> Result<(), PyRunnerError> {
        while let Some(message) = self.reader.next_message()? {
            let (id, outcome) = match message {
                FromChild::Reply { id, outcome } => (id, outcome),
                FromChild::OutputMark => {
                    // What the replies after it follow goes out before them.
                    if let Some(child) = &self.child {
                        child.forward_stderr();
                    }
                    continue;
                }
                // The link is alive; that it came is all it says.
                FromChild::Beat => continue,
                FromChild::Awaiting { id } => {
                    self.went_awaiting(id);
                    continue;
                }
                FromChild::Output { stream, lines } => {
                    output::hand_on_lines(self.settings.spec.output.as_ref(), stream, lines);
                    continue;
                }
                FromChild::Captured { id, written } => {
                    self.keep_written(id, written)?;
                    continue;
                }
                FromChild::Streaming { id, on_loop } => {
                    self.stream_opened(id, on_loop)?;
                    continue;
                }
                FromChild::Item { id, item } => {
                    self.stream_item(id, item)?;
                    continue;
                }
                FromChild::Host {
                    hid,
                    name,
                    args,
                    kwargs,
                } => {
                    self.host_call(hid, name, args, kwargs)?;
                    continue;
                }
                FromChild::HostCancel { hid } => {
                    self.host_cancelled(hid);
                    continue;
                }
                FromChild::Hello(_) => {
                    return Err(PyRunnerError::Protocol(
                        "a second hello from the child".into(),
                    ))
                }
            };
            self.answer_reply(id, outcome, held.as_deref_mut())?;
        }
        Ok(())
    }

    /// Answers the reply to request `id`; with `held`, its caller's waker
    /// goes there instead of being woken.
    pub(super) fn answer_reply(
        &mut self,
        id: u64,
        outcome: Outcome,
        held: Option<&mut Vec<Waker>>,
    ) -> Result<(), PyRunnerError> {
        let Some(Flight { item: done, .. }) = self.flights.answered(id, Instant::now) else {
            return Err(PyRunnerError::Protocol(format!(
                "a reply to unknown request {id}"
            )));
        };
        if self.interrupting.is_some() && self.interrupted == Some(id) {
            self.interrupted_request_answered(id);
        }
        if matches!(done.request, Request::Stop) {
            // Answered once the child is reaped, in `shut_down`.
            self.stop_done = Some(done);
            return Ok(());
        }
        let reply = match outcome {
            Outcome::Done(reply) => reply,
            Outcome::TimedOut => Err(PyRunnerError::Timeout(done.timeout.unwrap_or_default())),
        };
        if reply.is_ok()
            && super::streams::feed_of(&done.request).is_some()
            && !self.streams.contains_key(&id)
        {
            // A stream's result is its items: answered as a call, its
            // feed would never end.
            let why = format!(
                "malformed frame from the child: a result for stream request {id}, \
                     which never said it was streaming"
            );
            if let Some(companion) = &self.settings.companion {
                companion.answered(&done.request, false);
            }
            done.reply.send(Err(PyRunnerError::Protocol(why.clone())));
            return Err(PyRunnerError::Protocol(why));
        }
        let reply = self.with_written(id, &done.request, reply);
        if let Some(companion) = &self.settings.companion {
            companion.answered(&done.request, reply.is_ok());
        }
        // What follows the job (a pool's charge on this worker) ends
        // before its caller hears: a caller that sends its next call at
        // once must find this worker idle, not wait for this thread to
        // get round to dropping the job.
        let mut done = done;
        drop(done.follow.take());
        // An open stream's reply is its end; its start was answered
        // when it opened.
        let Err(reply) = self.end_stream(id, reply) else {
            self.handed_out += 1;
            return Ok(());
        };
        // Its caller heard `Timeout` already: that run killed the child.
        // A nested command is not remembered on its own: the command whose
        // host function sent it runs it again on replay, if remembered.
        let remember = reply.is_ok()
            && !done.nested
            && self.remembered.is_some()
            && changes_child(&done.request)
            && !done.reply.slot().is_ready();
        match held {
            Some(held) => held.extend(done.reply.send_unwoken(reply)),
            None => done.reply.send(reply),
        }
        if remember {
            if let Some(remembered) = &mut self.remembered {
                remembered.push(done.request);
            }
        }
        self.handed_out += 1;
        Ok(())
    }

    /// Invoke `id` returned an awaitable: it has left the line, and the
    /// requests behind it may go out. Its function had returned before a
    /// SIGINT for it came (the child ignores that one): the child goes on.
    /// A caller that has its answer already (`Timeout`) or gave up gets
    /// the coroutine cancelled rather than left running for nobody.
    pub(super) fn went_awaiting(&mut self, id: u64) {
        if self.interrupting.is_some() && self.interrupted == Some(id) {
            self.interrupted_request_answered(id);
        }
        self.flights.became_coroutine(id, Instant::now());
        let unwanted = self.flights.get(id).is_some_and(|flight| {
            flight.item.reply.slot().is_ready() || flight.item.reply.is_abandoned()
        });
        if unwanted {
            let _ = self
                .writer
                .encode(ToChild::Cancel { id }, &mut self.outgoing);
        }
    }

    /// Whether `request` goes to the child even if its caller gave up.
    pub(super) fn must_run(&self, request: &Request) -> bool {
        self.settings
            .companion
            .as_ref()
            .is_some_and(|companion| companion.must_run(request))
    }

    /// The request that SIGINT was sent for has answered during the grace.
    /// A child that did not stop it for the signal had ended it just before
    /// the signal came: it ignores the signal and goes on with the requests
    /// sent after it, so it is kept (replaced, it would have them run
    /// twice). One that stopped it starts nothing more and exits. Without a
    /// ring the child cannot tell which request a SIGINT is for; it is
    /// taken to have stopped this one, and is replaced.
    pub(super) fn interrupted_request_answered(&mut self, id: u64) {
        let missed = self
            .child
            .as_ref()
            .and_then(|child| child.ring.as_ref())
            .is_some_and(|ring| !ring.took_interrupt(id));
        if !missed {
            return;
        }
        self.interrupting = None;
        self.interrupted = None;
        self.interrupted_nested = false;
        if let Some(companion) = &self.settings.companion {
            companion.available();
        }
    }
}
