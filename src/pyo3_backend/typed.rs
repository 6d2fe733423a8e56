//! Placeholder until the in-process readers land (same branch series).
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::convert::ToValueError;
use crate::call::Packed;
use crate::error::PyRunnerError;

pub(crate) fn args_to_python<'py>(
    _py: Python<'py>,
    _args: &Packed,
) -> Result<Bound<'py, PyTuple>, PyRunnerError> {
    Err(PyRunnerError::Unsupported("not yet".into()))
}

pub(crate) fn kwargs_to_python<'py>(
    _py: Python<'py>,
    _kwargs: &Packed,
) -> Result<Option<Bound<'py, PyDict>>, PyRunnerError> {
    Err(PyRunnerError::Unsupported("not yet".into()))
}

pub(crate) fn from_python<'py, T: serde::de::DeserializeOwned>(
    _obj: &Bound<'py, PyAny>,
    _table_form: &Bound<'py, PyAny>,
) -> Result<T, ToValueError> {
    Err(ToValueError::Conversion("not yet".into()))
}
