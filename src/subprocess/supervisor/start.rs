//! Starting a child: its start, what it replays, and what a death soon
//! after a start means for the next one.

use super::*;

impl Core {
    /// Starts a child, runs the startup code, then replays what the runner
    /// did (or what the companion says), and counts failures.
    pub(super) fn start_child(&mut self) -> Result<(), PyRunnerError> {
        // A result for the last child's host calls is not this one's.
        self.host_forget_child();
        self.reader = FrameReader::new(self.settings.frame_limit);
        self.outgoing.clear();
        // What a lost child's captured requests wrote has no reply to join.
        self.written.clear();
        let started = ChildProcess::start(&self.settings.spec, &mut self.reader)
            .and_then(|child| {
                self.child = Some(child);
                match self.settings.startup.clone() {
                    Some(code) => self
                        .run_at_start(&Request::Run { code }, "the startup code", None)?
                        .map_err(|err| {
                            PyRunnerError::Startup(format!("startup code failed: {err}"))
                        }),
                    None => Ok(()),
                }
            })
            .and_then(|()| self.replay_for_companion())
            .and_then(|()| self.replay_remembered());
        match started {
            Ok(()) => {
                // Not a loop's end yet: that is judged when the child dies
                // (see `replace_child`).
                self.ready_at = Some((Instant::now(), self.handed_out));
                self.crash_loop = None;
                self.retry_at = None;
                if let (Some(companion), Some(child)) = (&self.settings.companion, &self.child) {
                    companion.serving(child.pid);
                }
                Ok(())
            }
            Err(err) => {
                self.failed_starts += 1;
                self.retry_at = None;
                if let Some(mut child) = self.child.take() {
                    child.kill_group();
                }
                // Commands a host function sent during the start: no child
                // runs them now, and a fresh one must not be judged by them.
                for (_, flight) in self.flights.take_nested() {
                    flight.item.reply.send(Err(err.clone()));
                }
                self.host_forget_child();
                if let Some(companion) = &self.settings.companion {
                    // Its companion takes its work elsewhere until a start
                    // succeeds; it tries again on its own.
                    companion.unavailable(false);
                    let wait = backoff(START_RETRY, self.failed_starts);
                    self.retry_at = Some(Instant::now() + wait);
                }
                Err(err)
            }
        }
    }

    /// A supervisor with a companion: the fresh child runs what the
    /// companion says it must hold.
    pub(super) fn replay_for_companion(&mut self) -> Result<(), PyRunnerError> {
        let Some(companion) = self.settings.companion.clone() else {
            return Ok(());
        };
        let limit = self.settings.timeout;
        companion.replay(&mut |request| self.run_at_start(request, "a replayed run", limit))
    }

    /// A runner's fresh child: does again what the runner did, in order (see
    /// `PyRunnerBuilder::replay`). A command that raises now is forgotten and
    /// the replay goes on; one that kills the child is forgotten and fails
    /// the start, and the next start goes without it. Either way the next
    /// command hears of it, through `replay_failure`.
    pub(super) fn replay_remembered(&mut self) -> Result<(), PyRunnerError> {
        let Some(remembered) = self.remembered.take() else {
            return Ok(());
        };
        let total = remembered.len();
        let limit = self.settings.timeout;
        let mut kept = Vec::with_capacity(total);
        let mut failures = Vec::new();
        let mut child_lost = false;
        let mut commands = remembered.into_iter().enumerate();
        for (index, request) in commands.by_ref() {
            let label = format!(
                "command {} of {total} ({}) on a fresh child",
                index + 1,
                describe_command(&request)
            );
            match self.run_at_start(&request, &label, limit) {
                Ok(Ok(())) => kept.push(request),
                Ok(Err(raised)) => failures.push(format!("replaying {label}: {raised}")),
                Err(lost) => {
                    let why = match lost {
                        PyRunnerError::Startup(why) => why,
                        other => format!("{label}: {other}"),
                    };
                    failures.push(format!("replaying {why}"));
                    child_lost = true;
                    break;
                }
            }
        }
        // Those the dead child never got to wait for the next one.
        kept.extend(commands.map(|(_, request)| request));
        self.remembered = Some(kept);
        if failures.is_empty() {
            return Ok(());
        }
        let failure = PyRunnerError::Startup(format!(
            "{}; forgotten, so later children do not replay it",
            failures.join("; ")
        ));
        self.replay_failure = Some(failure.clone());
        if child_lost {
            Err(failure)
        } else {
            Ok(())
        }
    }

    /// Runs a `run`, `run_file` or `set_venv` synchronously, before any
    /// queued command. The outer error is a failed start (the child died,
    /// broke the protocol or took too long, `limit` or else a minute at
    /// least); the inner one is what the command raised.
    pub(super) fn run_at_start(
        &mut self,
        request: &Request,
        what: &str,
        limit: Option<Duration>,
    ) -> Result<Result<(), PyRunnerError>, PyRunnerError> {
        let id = self.take_id();
        let failed = |why: String| PyRunnerError::Startup(format!("{what}: {why}"));
        self.writer
            .encode(ToChild::new(id, request, None), &mut self.outgoing)
            .map_err(|err| failed(err.to_string()))?;
        let deadline = Instant::now()
            + limit.unwrap_or(
                self.settings
                    .spec
                    .hello_timeout
                    .max(Duration::from_secs(60)),
            );
        let late = || failed("did not finish in time".into());
        // The whole request first: code larger than the pipe goes out as
        // the child reads it.
        loop {
            if let Err(err) = self.flush() {
                // No reader left is, as a rule, a child that is ending: a
                // contained one's pipes close with all of it, just before
                // its end shows.
                let child = self.child.as_mut().expect("started above");
                if child.wait_for_exit(PIPE_END_GRACE).is_some() {
                    let reason = child.kill_and_describe();
                    return Err(failed(format!("the child died running it: {reason}")));
                }
                return Err(failed(format!("the child stopped reading: {err}")));
            }
            if self.outgoing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(late());
            }
            let child = self.child.as_mut().expect("started above");
            child.wait_writable(deadline);
            // Dead, it reads no more: a copy it forked may keep the pipe
            // open, and full.
            if child.exited() {
                let reason = child.kill_and_describe();
                return Err(failed(format!("the child died running it: {reason}")));
            }
        }
        loop {
            // While the child waits for a host function, the runner's queue
            // is looked at too, for its result and the commands it sends.
            let look_until = if self.host.any_pending() {
                deadline.min(Instant::now() + HOST_START_LOOK)
            } else {
                deadline
            };
            let child = self.child.as_mut().expect("started above");
            let message = match child.next_message(&mut self.reader, look_until) {
                Ok(message) => message,
                Err(NoFrame::Late) if Instant::now() < deadline => {
                    self.serve_host_at_start()
                        .map_err(|err| failed(format!("writing to the child failed: {err}")))?;
                    continue;
                }
                Err(NoFrame::Late) => return Err(late()),
                Err(NoFrame::Closed) => {
                    let reason = child.kill_and_describe();
                    return Err(failed(format!("the child died running it: {reason}")));
                }
                Err(NoFrame::Io(err)) => {
                    return Err(failed(format!("reading from the child failed: {err}")))
                }
                Err(NoFrame::Bad(err)) => return Err(failed(err.to_string())),
            };
            if let FromChild::OutputMark = message {
                child.forward_stderr();
            }
            if let FromChild::Output { stream, lines } = message {
                output::hand_on_lines(self.settings.spec.output.as_ref(), stream, lines);
                continue;
            }
            match message {
                FromChild::Reply { id: got, outcome } if got == id => {
                    return match outcome {
                        Outcome::Done(done) => Ok(done.map(drop)),
                        Outcome::TimedOut => Err(failed("timed out".into())),
                    };
                }
                // A command a host function sent.
                FromChild::Reply { id: got, outcome } if self.flights.contains(got) => {
                    self.answer_reply(got, outcome, None)
                        .map_err(|err| failed(err.to_string()))?;
                }
                FromChild::Host {
                    hid,
                    name,
                    args,
                    kwargs,
                } => {
                    self.host_call(hid, name, args, kwargs)
                        .map_err(|err| failed(err.to_string()))?;
                    self.serve_host_at_start()
                        .map_err(|err| failed(format!("writing to the child failed: {err}")))?;
                }
                FromChild::HostCancel { hid } => self.host_cancelled(hid),
                _ => {}
            }
        }
    }

    /// While a start's request waits for a host function: its result goes
    /// to the child, and so do the commands it sent to this runner; the
    /// rest of the queue waits for the start to end.
    fn serve_host_at_start(&mut self) -> io::Result<()> {
        self.queue.take_all(&mut self.backlog);
        let jobs: Vec<Job> = self.backlog.drain(..).collect();
        for job in jobs {
            match job.request {
                Request::HostDone { .. } => self.send_host_done(job),
                _ if job.nested => self.send_nested(job),
                _ => self.backlog.push_back(job),
            }
        }
        self.flush()
    }

    /// Whether the child is young: it answered nothing yet, and was ready
    /// less than [`QUICK_DEATH`] ago.
    pub(super) fn child_is_young(&self) -> bool {
        self.child.is_some()
            && self.ready_at.is_some_and(|(at, handed_out)| {
                self.handed_out == handed_out && at.elapsed() < QUICK_DEATH
            })
    }

    /// After a child died young: the next start waits, longer after each
    /// such death in a row. After [`MAX_FAILED_STARTS`] of them a runner
    /// starts no more children on its own, and the next command hears of
    /// the loop; one with a companion tries again as after a failed start,
    /// the companion taking its calls meanwhile.
    pub(super) fn back_off(&mut self, reason: &str) {
        let deaths = self.failed_starts;
        let wait = if deaths < MAX_FAILED_STARTS {
            Some(backoff(QUICK_DEATH_RETRY, deaths))
        } else {
            self.crash_loop = Some(PyRunnerError::Startup(format!(
                "the child died {deaths} times in a row within {} s of starting, \
                 before it answered anything (a crash loop); the last time: {reason}",
                QUICK_DEATH.as_secs()
            )));
            self.settings
                .companion
                .is_some()
                .then(|| backoff(START_RETRY, deaths - MAX_FAILED_STARTS + 1))
        };
        self.retry_at = wait.map(|wait| Instant::now() + wait);
    }

    /// A worker left without a child tries a start on its own once its
    /// wait is over, so that it serves again without a call to make it.
    pub(super) fn retry_start(&mut self) {
        let due = self.retry_at.is_some_and(|at| Instant::now() >= at);
        if due && self.child.is_none() && !self.stop_sent {
            let _ = self.start_child();
        }
    }
}

/// The wait before the next start after `failures` in a row: `first`,
/// doubled for each further one, up to [`START_RETRY_MAX`].
pub(super) fn backoff(first: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(5);
    (first * (1 << doublings)).min(START_RETRY_MAX)
}

/// Whether a command that succeeded is one a runner's fresh child replays.
pub(super) fn changes_child(request: &Request) -> bool {
    matches!(
        request,
        Request::Run { .. }
            | Request::RunCaptured { .. }
            | Request::RunFile { .. }
            | Request::SetVenv { .. }
    )
}

/// A remembered command as an error names it: its op and its path, or the
/// first line of its code.
pub(super) fn describe_command(request: &Request) -> String {
    const SHOWN: usize = 80;
    match request {
        Request::RunFile { path } => format!("run_file {}", path.display()),
        Request::SetVenv { dir } => format!("set_venv {}", dir.display()),
        Request::Run { code } | Request::RunCaptured { code } | Request::Broadcast { code, .. } => {
            let first = code.trim_start().lines().next().unwrap_or("");
            let mut shown: String = first.chars().take(SHOWN).collect();
            if shown.len() < code.trim().len() {
                shown.push_str(" ...");
            }
            format!("run `{shown}`")
        }
        other => format!("{other:?}"),
    }
}
