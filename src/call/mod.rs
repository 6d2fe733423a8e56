//! One builder for a call: positional and keyword arguments of any serde
//! type, a limit for this call alone, and a typed result.

pub(crate) mod pack;
mod stream;

use std::any::{Any, TypeId};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub(crate) use pack::Packed;
pub(crate) use stream::{hook_on, Feed};
pub use stream::{BlockingIter, PyStream};

use crate::command::{block_on, user_limit, Answer, Invoke, Readers, Request, Returns, Submission};
use crate::error::PyRunnerError;
use crate::output::Captured;
#[cfg(feature = "subprocess")]
use crate::pool::{block_on_pool, Admission, PyPool};
use crate::runner::PyRunner;

/// Where a call goes.
#[derive(Clone, Copy)]
enum Target<'a> {
    Runner(&'a PyRunner),
    #[cfg(feature = "subprocess")]
    Pool(&'a PyPool),
}

/// A call being put together: made by [`PyRunner::call`] or
/// [`PyPool::call`], finished by `.await` or [`wait`](Call::wait).
///
/// ```no_run
/// # async fn demo(runner: async_py::PyRunner) -> Result<(), async_py::PyRunnerError> {
/// use std::time::Duration;
///
/// #[derive(serde::Deserialize)]
/// struct Row {
///     name: String,
///     score: f64,
/// }
///
/// let rows: Vec<Row> = runner
///     .call("report.top")               // a function, by dotted name
///     .arg("physics")                   // one positional argument (any serde type)
///     .args((10, true))                 // one positional argument per element
///     .kwarg("order", "desc")           // one keyword argument
///     .kwargs(serde_json::json!({"min": 0.5}))  // one per entry of a map or field of a struct
///     .timeout(Duration::from_secs(5))  // this call only, instead of the runner's limit
///     .returns::<Vec<Row>>()            // the result's type (default: `Value`)
///     .await?;
/// # Ok(()) }
/// ```
///
/// - Arguments are packed when they are given; one that cannot be (an
///   integer past 64 bits, `args` of something that is not a sequence,
///   `kwargs` of something that is not a map or struct) makes the call
///   fail with [`PyRunnerError::Conversion`] naming the argument when it
///   is finished. Builders never panic.
/// - Values cross by the value table (see the crate docs). A serde byte
///   string (`serde_bytes::ByteBuf`, `bytes::Bytes`) becomes Python
///   `bytes`, and `bytes`, `bytearray` or `memoryview` returned into a serde
///   byte type arrive as bytes. Only a `Value` result turns bytes into an
///   array of numbers.
/// - A result that does not fit the type is a `Conversion` error naming
///   where: `"[2].name: invalid type: string \"x\", expected u32"`.
/// - A function that returns an awaitable (an `async def`'s coroutine, a
///   `Future`, a `Task`) is awaited on the runner's event loop, as
///   [`call_async_function`](PyRunner::call_async_function) does
///   (RustPython: `Unsupported`). A generator result is a `Conversion`
///   error.
///
/// # Cancellation
/// Dropping the future of an unfinished call cancels it: a call not yet
/// started never starts; a coroutine it started gets `CancelledError` at
/// its await point (its `finally` runs), in-process and in a child alike;
/// synchronous Python code that is running finishes, and the next command
/// waits for it.
#[must_use = "a call does nothing until it is awaited or `.wait()`ed"]
pub struct Call<'a, R = Value> {
    target: Target<'a>,
    name: String,
    args: Packed,
    kwargs: Packed,
    /// `Some`: this call's limit instead of the handle's (`Some(None)`: none).
    limit: Option<Option<Duration>>,
    /// The first argument that could not be packed.
    error: Option<PyRunnerError>,
    returns: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Call<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("name", &self.name)
            .field("args", &self.args.count)
            .field("kwargs", &self.kwargs.count)
            .field("limit", &self.limit)
            .field("error", &self.error)
            .finish()
    }
}

impl<'a> Call<'a, Value> {
    pub(crate) fn on_runner(runner: &'a PyRunner, name: &str) -> Self {
        Call::new(Target::Runner(runner), name)
    }

    #[cfg(feature = "subprocess")]
    pub(crate) fn on_pool(pool: &'a PyPool, name: &str) -> Self {
        Call::new(Target::Pool(pool), name)
    }

    fn new(target: Target<'a>, name: &str) -> Self {
        Call {
            target,
            name: name.to_owned(),
            args: Packed::default(),
            kwargs: Packed::default(),
            limit: None,
            error: None,
            returns: PhantomData,
        }
    }
}

impl<'a, R> Call<'a, R> {
    /// Adds one positional argument.
    pub fn arg<T: Serialize>(mut self, value: T) -> Self {
        if self.error.is_none() {
            let position = self.args.count + 1;
            if let Err(why) = self.args.push(&value) {
                self.fail(format!("argument {position}: {why}"));
            }
        }
        self
    }

    /// Adds one positional argument per element of a tuple, array or
    /// `Vec` (`()` adds none).
    pub fn args<T: Serialize>(mut self, values: T) -> Self {
        if self.error.is_none() {
            if let Err(why) = self.args.spread(&values) {
                self.fail(format!("args: {why}"));
            }
        }
        self
    }

    /// Adds one keyword argument.
    pub fn kwarg<T: Serialize>(mut self, name: &str, value: T) -> Self {
        if self.error.is_none() {
            if self.kwargs.names.iter().any(|given| given == name) {
                self.fail(format!("keyword argument '{name}' given twice"));
            } else if let Err(why) = self.kwargs.push_named(name, &value) {
                self.fail(format!("keyword argument '{name}': {why}"));
            }
        }
        self
    }

    /// Adds one keyword argument per entry of a map (whose keys are
    /// strings) or field of a struct.
    pub fn kwargs<T: Serialize>(mut self, values: T) -> Self {
        if self.error.is_none() {
            let before = self.kwargs.count;
            match self.kwargs.spread_named(&values) {
                Err(why) => self.fail(format!("kwargs: {why}")),
                Ok(()) if before > 0 || self.kwargs.count > 1 => self.check_names_once(),
                Ok(()) => {}
            }
        }
        self
    }

    /// The limit of this call alone, instead of the runner's or pool's
    /// (`Duration::MAX`: none). A zero limit times out without running it.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.limit = Some(user_limit(limit));
        self
    }

    /// Reads the result into `T` instead of a `Value`.
    pub fn returns<T>(self) -> Call<'a, T>
    where
        T: DeserializeOwned + Send + 'static,
    {
        Call {
            target: self.target,
            name: self.name,
            args: self.args,
            kwargs: self.kwargs,
            limit: self.limit,
            error: self.error,
            returns: PhantomData,
        }
    }

    fn fail(&mut self, why: String) {
        self.error = Some(PyRunnerError::Conversion(why));
    }

    fn check_names_once(&mut self) {
        let names = &self.kwargs.names;
        let twice = (1..names.len()).find(|&at| names[..at].contains(&names[at]));
        if let Some(at) = twice {
            let why = format!("keyword argument '{}' given twice", names[at]);
            self.fail(why);
        }
    }
}

impl<'a, R> Call<'a, R>
where
    R: DeserializeOwned + Send + 'static,
{
    /// Finishes the call and blocks until it is answered: the blocking twin
    /// of `.await`, safe in any context, inside a tokio runtime or not.
    pub fn wait(self) -> Result<R, PyRunnerError> {
        match self.target {
            Target::Runner(_) => block_on(self.finish(Admission::Skip, Finish::Plain)),
            #[cfg(feature = "subprocess")]
            Target::Pool(_) => block_on_pool(self.finish(Admission::Skip, Finish::Plain)),
        }
    }

    /// Returns what the function's Python code writes to `sys.stdout` and
    /// `sys.stderr` while it runs, with its result, instead of printing it.
    /// See [`Captured`] for what is captured on each backend.
    pub fn capture_output(self) -> CapturedCall<'a, R> {
        CapturedCall { call: self }
    }

    /// Iterates what the function returns (a generator, an iterator, an
    /// async generator or async iterator, or any iterable) and hands its
    /// items over one by one as Python makes them. See [`PyStream`].
    ///
    /// ```no_run
    /// # async fn demo(runner: async_py::PyRunner) -> Result<(), async_py::PyRunnerError> {
    /// use futures_util::StreamExt;
    ///
    /// let mut tokens = runner.call("model.generate").arg("Once upon").returns::<String>().stream();
    /// while let Some(token) = tokens.next().await {
    ///     print!("{}", token?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream(self) -> PyStream<R> {
        let feed = Feed::new(crate::tuning::STREAM_WINDOW);
        let (error, target, limit) = (self.error.clone(), self.target, self.limit);
        if let Some(err) = error {
            return PyStream::failed(err);
        }
        let request = self.request(Some(feed.clone()), false);
        let start: stream::Start = match target {
            Target::Runner(runner) => {
                let limit = limit.unwrap_or_else(|| runner.limit());
                match runner.submission(request, limit) {
                    Ok(submission) => Box::pin(submission),
                    Err(err) => return PyStream::failed(err),
                }
            }
            #[cfg(feature = "subprocess")]
            Target::Pool(pool) => {
                let pool = pool.clone();
                Box::pin(tokio::task::unconstrained(async move {
                    pool.dispatch_limited(request, Admission::Wait, limit).await
                }))
            }
        };
        PyStream::new(start, feed)
    }

    fn request(self, stream: Option<std::sync::Arc<Feed>>, capture: bool) -> Request {
        Request::Invoke(Invoke {
            name: self.name,
            args: self.args,
            kwargs: self.kwargs,
            returns: returns_of::<R>(),
            stream,
            capture,
        })
    }

    fn finish(self, admission: Admission, finish: Finish) -> CallFuture<'a, R> {
        CallFuture {
            sending: self.send(admission, finish),
            returns: PhantomData,
        }
    }

    fn send(mut self, admission: Admission, finish: Finish) -> Sending<'a> {
        let capture = matches!(finish, Finish::Captured);
        let (target, limit) = (self.target, self.limit);
        let request = match self.error.take() {
            Some(err) => return Sending::Failed(Some(err)),
            None => self.request(None, capture),
        };
        #[cfg(not(feature = "subprocess"))]
        let _ = admission;
        match target {
            // A runner's call is its submission itself: no box on the way.
            Target::Runner(runner) => {
                let limit = limit.unwrap_or_else(|| runner.limit());
                match runner.submission(request, limit) {
                    Ok(submission) => Sending::Runner(submission),
                    Err(err) => Sending::Failed(Some(err)),
                }
            }
            #[cfg(feature = "subprocess")]
            Target::Pool(pool) => {
                Sending::Pool(Box::pin(pool.dispatch_limited(request, admission, limit)))
            }
        }
    }
}

/// How a call is finished.
#[derive(Clone, Copy)]
enum Finish {
    Plain,
    Captured,
}

#[cfg(not(feature = "subprocess"))]
#[derive(Clone, Copy)]
enum Admission {
    Wait,
    Skip,
}

impl<'a, R> IntoFuture for Call<'a, R>
where
    R: DeserializeOwned + Send + 'static,
{
    type Output = Result<R, PyRunnerError>;
    type IntoFuture = CallFuture<'a, R>;

    fn into_future(self) -> CallFuture<'a, R> {
        self.finish(Admission::Wait, Finish::Plain)
    }
}

/// A call whose output is captured, made by [`Call::capture_output`];
/// finished by `.await` or [`wait`](CapturedCall::wait) into a
/// [`Captured`].
#[must_use = "a call does nothing until it is awaited or `.wait()`ed"]
#[derive(Debug)]
pub struct CapturedCall<'a, R = Value> {
    call: Call<'a, R>,
}

impl<'a, R> CapturedCall<'a, R>
where
    R: DeserializeOwned + Send + 'static,
{
    /// The blocking twin of `.await`, safe in any context.
    pub fn wait(self) -> Result<Captured<R>, PyRunnerError> {
        let reply = match self.call.target {
            Target::Runner(_) => block_on(self.call.send(Admission::Skip, Finish::Captured)),
            #[cfg(feature = "subprocess")]
            Target::Pool(_) => block_on_pool(self.call.send(Admission::Skip, Finish::Captured)),
        };
        read_captured(reply?, read_answer)
    }
}

impl<'a, R> IntoFuture for CapturedCall<'a, R>
where
    R: DeserializeOwned + Send + 'static,
{
    type Output = Result<Captured<R>, PyRunnerError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let sending = self.call.send(Admission::Wait, Finish::Captured);
        Box::pin(async move { read_captured(sending.await?, read_answer) })
    }
}

/// A captured command's answer: its own, read by `read`, and what it wrote.
fn read_captured<R>(
    answer: Answer,
    read: impl FnOnce(Answer) -> Result<R, PyRunnerError>,
) -> Result<Captured<R>, PyRunnerError> {
    let Answer::Captured(both) = answer else {
        return Err(PyRunnerError::Protocol(
            "a captured command answered without its output".into(),
        ));
    };
    let (answer, written) = *both;
    Ok(Captured {
        value: read(answer)?,
        stdout: written.stdout,
        stderr: written.stderr,
    })
}

/// The future of a [`Call`]. Dropping it before it is ready cancels the
/// call (see [`Call`], "Cancellation").
#[must_use = "futures do nothing unless polled"]
pub struct CallFuture<'a, R> {
    sending: Sending<'a>,
    returns: PhantomData<fn() -> R>,
}

/// Where a call's reply comes from. A runner's call is its submission
/// itself, unboxed: an allocation is a good part of a fast call's cost.
#[allow(clippy::large_enum_variant)]
enum Sending<'a> {
    Failed(Option<PyRunnerError>),
    Runner(Submission),
    #[cfg(feature = "subprocess")]
    Pool(Pin<Box<dyn Future<Output = crate::command::Reply> + Send + 'a>>),
    #[cfg(not(feature = "subprocess"))]
    #[allow(dead_code)]
    Never(PhantomData<&'a ()>),
}

impl Future for Sending<'_> {
    type Output = crate::command::Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Sending::Failed(err) => Poll::Ready(Err(err.take().unwrap_or(PyRunnerError::Stopped))),
            Sending::Runner(submission) => Pin::new(submission).poll(cx),
            #[cfg(feature = "subprocess")]
            Sending::Pool(reply) => reply.as_mut().poll(cx),
            #[cfg(not(feature = "subprocess"))]
            Sending::Never(_) => Poll::Pending,
        }
    }
}

impl<R> fmt::Debug for CallFuture<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallFuture")
    }
}

impl<R> Future for CallFuture<'_, R>
where
    R: DeserializeOwned + Send + 'static,
{
    type Output = Result<R, PyRunnerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let sending = &mut self.get_mut().sending;
        Pin::new(sending).poll(cx).map(|reply| read_answer(reply?))
    }
}

/// How a result of type `R` is read: a `Value` by the value table, any
/// other type with bytes kept.
fn returns_of<R: DeserializeOwned + Send + 'static>() -> Returns {
    if TypeId::of::<R>() == TypeId::of::<Value>() {
        Returns::Value
    } else {
        Returns::Typed(Readers::of::<R>())
    }
}

/// The answer as an `R`.
fn read_answer<R: DeserializeOwned + 'static>(answer: Answer) -> Result<R, PyRunnerError> {
    match answer {
        // Asked for only when `R` is `Value` (see `returns_of`).
        Answer::Value(value) => (Box::new(value) as Box<dyn Any>)
            .downcast::<R>()
            .map(|result| *result)
            .map_err(|_| PyRunnerError::Protocol("a Value answer to a typed call".into())),
        #[cfg(feature = "subprocess")]
        Answer::Packed(bytes) => crate::wire::read_data(&bytes),
        #[cfg(not(feature = "subprocess"))]
        Answer::Packed(_) => Err(PyRunnerError::Protocol(
            "a child's answer with no subprocess backend".into(),
        )),
        Answer::Captured(_) => Err(PyRunnerError::Protocol(
            "output came with a command that did not capture it".into(),
        )),
        Answer::Typed(result) => result.downcast::<R>().map(|result| *result).map_err(|_| {
            PyRunnerError::Conversion(format!(
                "the backend read a result that is not a {}",
                std::any::type_name::<R>()
            ))
        }),
    }
}

/// `run` with options, made by [`PyRunner::exec`]; finished by `.await` or
/// [`wait`](Exec::wait).
#[must_use = "an exec does nothing until it is awaited or `.wait()`ed"]
#[derive(Debug)]
pub struct Exec<'a> {
    runner: &'a PyRunner,
    code: String,
    limit: Option<Option<Duration>>,
}

impl<'a> Exec<'a> {
    pub(crate) fn new(runner: &'a PyRunner, code: &str) -> Self {
        Exec {
            runner,
            code: code.to_owned(),
            limit: None,
        }
    }

    /// The limit of this command alone, instead of the runner's
    /// (`Duration::MAX`: none).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.limit = Some(user_limit(limit));
        self
    }

    /// Runs the code and blocks until it has run: the blocking twin of
    /// `.await`, safe in any context.
    pub fn wait(self) -> Result<(), PyRunnerError> {
        block_on(self.into_future())
    }

    /// Returns what the code writes to `sys.stdout` and `sys.stderr` while
    /// it runs instead of printing it. See [`Captured`].
    pub fn capture_output(self) -> CapturedExec<'a> {
        CapturedExec { exec: self }
    }
}

/// An exec whose output is captured, made by [`Exec::capture_output`];
/// finished by `.await` or [`wait`](CapturedExec::wait).
#[must_use = "an exec does nothing until it is awaited or `.wait()`ed"]
#[derive(Debug)]
pub struct CapturedExec<'a> {
    exec: Exec<'a>,
}

impl CapturedExec<'_> {
    /// The blocking twin of `.await`, safe in any context.
    pub fn wait(self) -> Result<Captured<()>, PyRunnerError> {
        block_on(self.into_future())
    }
}

impl<'a> IntoFuture for CapturedExec<'a> {
    type Output = Result<Captured<()>, PyRunnerError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let Exec {
            runner,
            code,
            limit,
        } = self.exec;
        Box::pin(async move {
            let limit = limit.unwrap_or_else(|| runner.limit());
            let answer = runner
                .send_limited(Request::RunCaptured { code }, limit)
                .await?;
            read_captured(answer, |_| Ok(()))
        })
    }
}

impl<'a> IntoFuture for Exec<'a> {
    type Output = Result<(), PyRunnerError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<(), PyRunnerError>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let Exec {
            runner,
            code,
            limit,
        } = self;
        Box::pin(async move {
            let limit = limit.unwrap_or_else(|| runner.limit());
            runner
                .send_limited(Request::Run { code }, limit)
                .await
                .map(drop)
        })
    }
}
