//! What a plain command needs: the runner's globals, the builtins, the
//! helpers and the value table, with none of the worker's mutable state
//! (its loop, its awaited calls, its streams, its watchdog).
//!
//! The worker serves plain commands through its [`Namespace`]; a nested
//! command (sent by a sync host function to the runner that waits for it,
//! see `super::host`) runs through a namespace bound again from a
//! [`HeldNamespace`], while the worker's own `execute` is suspended further
//! up the stack.

use std::ffi::CString;

use pyo3::exceptions::PyNameError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyModule, PyString, PyTuple};
use serde_json::Value;

use super::convert::{to_args, to_value, ToValueError};
use super::typed;
use crate::command::{path_arg, Answer, Invoke, PathArg, Reply, Request, Returns};
use crate::error::PyRunnerError;

/// A runner's namespace, bound to the attached thread.
pub(super) struct Namespace<'py> {
    pub py: Python<'py>,
    pub globals: Bound<'py, PyDict>,
    pub builtins: Bound<'py, PyModule>,
    pub helpers: Helpers<'py>,
}

/// Functions of the worker's in-process helpers (`python/helpers.py`), looked up once.
pub(super) struct Helpers<'py> {
    pub module: Bound<'py, PyModule>,
    pub run_code: Bound<'py, PyAny>,
    pub eval_expr: Bound<'py, PyAny>,
    pub run_file: Bound<'py, PyAny>,
    pub set_venv: Bound<'py, PyAny>,
    pub describe_error: Bound<'py, PyAny>,
    pub table_form: Bound<'py, PyAny>,
}

impl<'py> Helpers<'py> {
    /// Loads a fresh copy of the helpers (each runner has its own).
    pub fn load(py: Python<'py>) -> PyResult<Self> {
        let source =
            CString::new(crate::worker_source::HELPERS_PY).expect("helpers.py holds no NUL byte");
        let module = PyModule::from_code(py, &source, c"async_py/worker.py", c"async_py_worker")?;
        Helpers::of(module)
    }

    fn of(module: Bound<'py, PyModule>) -> PyResult<Self> {
        Ok(Helpers {
            run_code: module.getattr("run_code")?,
            eval_expr: module.getattr("eval_expr")?,
            run_file: module.getattr("run_file")?,
            set_venv: module.getattr("set_venv")?,
            describe_error: module.getattr("describe_error")?,
            table_form: module.getattr("table_form")?,
            module,
        })
    }
}

/// A [`Namespace`] held by no thread: what a nested command binds again.
pub(super) struct HeldNamespace {
    globals: Py<PyDict>,
    builtins: Py<PyModule>,
    helpers: Py<PyModule>,
}

impl HeldNamespace {
    pub fn bind<'py>(&self, py: Python<'py>) -> PyResult<Namespace<'py>> {
        Ok(Namespace {
            py,
            globals: self.globals.bind(py).clone(),
            builtins: self.builtins.bind(py).clone(),
            helpers: Helpers::of(self.helpers.bind(py).clone())?,
        })
    }
}

impl<'py> Namespace<'py> {
    pub fn hold(&self) -> HeldNamespace {
        HeldNamespace {
            globals: self.globals.clone().unbind(),
            builtins: self.builtins.clone().unbind(),
            helpers: self.helpers.module.clone().unbind(),
        }
    }

    /// A plain command: one that runs to its end here and needs nothing
    /// but the namespace.
    pub fn run_request(&self, request: Request) -> Reply {
        match request {
            Request::Run { code } | Request::Broadcast { code, .. } => self
                .run_helper(&self.helpers.run_code, &code)
                .map(|_| Answer::Value(Value::Null)),
            Request::RunFile { path } => self
                .helpers
                .run_file
                .call1((self.path_arg(&path), &self.globals))
                .map(|_| Answer::Value(Value::Null))
                .map_err(|err| self.python_error(err)),
            Request::Eval { expr } => {
                let result = self.run_helper(&self.helpers.eval_expr, &expr)?;
                self.to_value(&result)
            }
            Request::ReadVariable { name } => {
                let value = self.resolve(&name).map_err(|err| self.python_error(err))?;
                self.to_value(&value)
            }
            Request::CallFunction { name, args } => {
                let function = self.resolve(&name).map_err(|err| self.python_error(err))?;
                let args = to_args(self.py, &args)?;
                let result = function.call1(args).map_err(|err| self.python_error(err))?;
                self.to_value(&result)
            }
            Request::SetVenv { dir } => self.set_venv(&dir).map(|_| Answer::Value(Value::Null)),
            Request::RunCaptured { code } => self.run_captured(&self.output_router()?, &code),
            Request::CallAsyncFunction { .. }
            | Request::Invoke(_)
            | Request::Cancel(_)
            | Request::Stream(_)
            | Request::HostDone { .. }
            | Request::Stop => {
                unreachable!("not a plain command: the worker serves it")
            }
        }
    }

    /// The interpreter's output router (see `python/output.py`).
    pub fn output_router(&self) -> Result<Bound<'py, PyAny>, PyRunnerError> {
        self.helpers
            .module
            .getattr(intern!(self.py, "output_router"))
            .and_then(|make| make.call1((crate::tuning::CAPTURE_CAP,)))
            .map_err(|err| self.python_error(err))
    }

    /// Calls the function an invoke names with its arguments. The
    /// arguments come back with the result, to be dropped after the reply:
    /// freeing a large argument (100 000 ints, say) takes as long as
    /// making it, and the caller need not wait for that.
    pub fn call_invoked(
        &self,
        invoke: &Invoke,
    ) -> Result<(Bound<'py, PyAny>, Spent<'py>), PyRunnerError> {
        let function = self
            .resolve(&invoke.name)
            .map_err(|err| self.python_error(err))?;
        let args = typed::args_to_python(self.py, &invoke.args)?;
        let kwargs = typed::kwargs_to_python(self.py, &invoke.kwargs)?;
        let result = function
            .call(&args, kwargs.as_ref())
            .map_err(|err| self.python_error(err))?;
        Ok((result, (args, kwargs)))
    }

    /// A result, read as the call asked.
    pub fn read_result(&self, obj: &Bound<'py, PyAny>, returns: Returns) -> Reply {
        let Returns::Typed(readers) = returns else {
            return self.to_value(obj);
        };
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (readers.pyo3)(obj, &self.helpers.table_form)
        }));
        let Ok(read) = read else {
            return Err(PyRunnerError::Conversion(
                "the value changed while it was being read".into(),
            ));
        };
        read.map(Answer::Typed).map_err(|err| match err {
            ToValueError::Python(err) => self.python_error(err),
            ToValueError::Conversion(why) => PyRunnerError::Conversion(why),
        })
    }

    pub fn run_helper(
        &self,
        helper: &Bound<'py, PyAny>,
        text: &str,
    ) -> Result<Bound<'py, PyAny>, PyRunnerError> {
        helper
            .call1((text, &self.globals))
            .map_err(|err| self.python_error(err))
    }

    pub fn set_venv(&self, dir: &std::path::Path) -> Result<(), PyRunnerError> {
        self.helpers
            .set_venv
            .call1((self.path_arg(dir),))
            .map(drop)
            .map_err(|err| self.python_error(err))
    }

    /// A path for the helpers (see [`PathArg`]).
    fn path_arg(&self, path: &std::path::Path) -> Bound<'py, PyAny> {
        match path_arg(path) {
            PathArg::Text(text) => PyString::new(self.py, text).into_any(),
            PathArg::Bytes(bytes) => PyBytes::new(self.py, &bytes).into_any(),
        }
    }

    /// `a.b.c`: `a` from the runner's globals (or builtins), then attributes.
    pub fn resolve(&self, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let mut parts = name.split('.');
        let first = parts.next().unwrap_or_default();
        let mut target = match self.globals.get_item(first)? {
            Some(found) => found,
            None => match self.builtins.getattr(first) {
                Ok(found) if !first.is_empty() => found,
                _ => {
                    return Err(PyNameError::new_err(format!(
                        "name '{first}' is not defined"
                    )))
                }
            },
        };
        for part in parts {
            target = target.getattr(part)?;
        }
        Ok(target)
    }

    pub fn to_value(&self, obj: &Bound<'py, PyAny>) -> Reply {
        // Reading Python objects runs their code (`__str__`), which can
        // change them under the reader; should that ever panic in pyo3,
        // the command fails, not the runner's thread.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            to_value(obj, &self.helpers.table_form)
        }));
        let Ok(read) = read else {
            return Err(PyRunnerError::Conversion(
                "the value changed while it was being read".into(),
            ));
        };
        read.map(Answer::Value).map_err(|err| match err {
            ToValueError::Python(err) => self.python_error(err),
            ToValueError::Conversion(why) => PyRunnerError::Conversion(why),
        })
    }

    pub fn python_error(&self, err: PyErr) -> PyRunnerError {
        let exception = err.into_value(self.py).into_bound(self.py);
        self.exception_error(exception.as_any())
    }

    pub fn exception_error(&self, exception: &Bound<'py, PyAny>) -> PyRunnerError {
        match self
            .helpers
            .describe_error
            .call1((exception,))
            .and_then(|d| d.extract::<(String, String, Option<String>)>())
        {
            Ok((kind, message, traceback)) => PyRunnerError::Python {
                kind,
                message,
                traceback,
            },
            Err(_) => {
                PyRunnerError::python("Exception", "an exception that could not be described")
            }
        }
    }
}

/// A call's arguments, kept until its reply is sent.
pub(super) type Spent<'py> = (Bound<'py, PyTuple>, Option<Bound<'py, PyDict>>);
