//! Placeholder until the in-process readers land (same branch series).
use rustpython_vm::{PyObject, PyObjectRef, VirtualMachine};

use super::convert::ToValueError;
use crate::call::Packed;
use crate::error::PyRunnerError;

pub(crate) fn args_to_python(
    _vm: &VirtualMachine,
    _args: &Packed,
) -> Result<Vec<PyObjectRef>, PyRunnerError> {
    Err(PyRunnerError::Unsupported("not yet".into()))
}

pub(crate) fn kwargs_to_python(
    _vm: &VirtualMachine,
    _kwargs: &Packed,
) -> Result<Vec<(String, PyObjectRef)>, PyRunnerError> {
    Err(PyRunnerError::Unsupported("not yet".into()))
}

pub(crate) fn from_python<T: serde::de::DeserializeOwned>(
    _vm: &VirtualMachine,
    _obj: &PyObject,
    _table_form: &PyObject,
) -> Result<T, ToValueError> {
    Err(ToValueError::Conversion("not yet".into()))
}
