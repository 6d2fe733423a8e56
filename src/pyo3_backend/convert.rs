//! The value table (see `crate::value`) for the in-process backend.

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString,
    PyTuple,
};
use serde_json::{Map, Number, Value};

use crate::error::PyRunnerError;
use crate::value::{int_too_large, too_deep, LONE_SURROGATE, MAX_DEPTH};

/// Either a Python exception raised while converting (by `str()` of an
/// object, say) or a value with no faithful form.
pub(crate) enum ToValueError {
    Python(PyErr),
    Conversion(String),
}

impl From<PyErr> for ToValueError {
    fn from(err: PyErr) -> Self {
        ToValueError::Python(err)
    }
}

/// Python to Rust. `table_form` is the helpers' function of that name: the
/// rows of the table after the exact types (numpy values, dataclasses, ...).
pub(crate) fn to_value<'py>(
    obj: &Bound<'py, PyAny>,
    table_form: &Bound<'py, PyAny>,
) -> Result<Value, ToValueError> {
    to_value_at(obj, table_form, 0)
}

fn to_value_at<'py>(
    obj: &Bound<'py, PyAny>,
    table_form: &Bound<'py, PyAny>,
    depth: usize,
) -> Result<Value, ToValueError> {
    if depth > MAX_DEPTH {
        return Err(ToValueError::Conversion(too_deep()));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(int) = obj.cast::<PyInt>() {
        return int_to_value(int);
    }
    if let Ok(float) = obj.cast::<PyFloat>() {
        return Ok(Number::from_f64(float.value()).map_or(Value::Null, Value::Number));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return utf8(s).map(Value::String);
    }
    if let Ok(list) = obj.cast::<PyList>() {
        return array_of(list.iter(), table_form, depth);
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return array_of(tuple.iter(), table_form, depth);
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        // A copy: `str()` of a key or item may change the dict itself.
        let dict = dict.copy()?;
        let mut map = Map::with_capacity(dict.len());
        for (key, item) in dict.iter() {
            let key = match key.cast::<PyString>() {
                Ok(s) => utf8(s)?,
                Err(_) => utf8(&key.str()?)?,
            };
            map.insert(key, to_value_at(&item, table_form, depth + 1)?);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(set) = obj.cast::<PySet>() {
        // Frozen first, for the same reason.
        let frozen = obj.py().get_type::<PyFrozenSet>().call1((set,))?;
        return array_of(
            frozen.cast::<PyFrozenSet>().map_err(PyErr::from)?.iter(),
            table_form,
            depth,
        );
    }
    if let Ok(set) = obj.cast::<PyFrozenSet>() {
        return array_of(set.iter(), table_form, depth);
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(bytes_to_value(bytes.as_bytes()));
    }
    if let Ok(bytes) = obj.cast::<PyByteArray>() {
        return Ok(bytes_to_value(&bytes.to_vec()));
    }
    to_value_at(&table_form.call1((obj,))?, table_form, depth + 1)
}

/// The text of a `str` (a dict key, or `str()` of an object, too); one that
/// UTF-8 cannot carry is a `Conversion` error, as in the child.
fn utf8(s: &Bound<'_, PyString>) -> Result<String, ToValueError> {
    s.to_str()
        .map(str::to_owned)
        .map_err(|_| ToValueError::Conversion(LONE_SURROGATE.into()))
}

fn array_of<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    table_form: &Bound<'py, PyAny>,
    depth: usize,
) -> Result<Value, ToValueError> {
    items
        .map(|item| to_value_at(&item, table_form, depth + 1))
        .collect::<Result<_, _>>()
        .map(Value::Array)
}

fn int_to_value(int: &Bound<'_, PyInt>) -> Result<Value, ToValueError> {
    match int.extract::<i64>() {
        Ok(i) => return Ok(Value::from(i)),
        Err(err) if !err.is_instance_of::<PyOverflowError>(int.py()) => return Err(err.into()),
        Err(_) => {}
    }
    if let Ok(u) = int.extract::<u64>() {
        return Ok(Value::from(u));
    }
    let bits: u64 = int.call_method0("bit_length")?.extract()?;
    Err(ToValueError::Conversion(int_too_large(bits)))
}

fn bytes_to_value(bytes: &[u8]) -> Value {
    Value::Array(bytes.iter().map(|&b| Value::from(b)).collect())
}

/// Rust to Python.
pub(crate) fn to_python<'py>(
    py: Python<'py>,
    value: &Value,
) -> Result<Bound<'py, PyAny>, PyRunnerError> {
    to_python_at(py, value, 0)
}

fn to_python_at<'py>(
    py: Python<'py>,
    value: &Value,
    depth: usize,
) -> Result<Bound<'py, PyAny>, PyRunnerError> {
    if depth > MAX_DEPTH {
        return Err(PyRunnerError::Conversion(too_deep()));
    }
    let fail = |err: PyErr| PyRunnerError::Conversion(err.to_string());
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py).map_err(|e| fail(e.into()))?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py).map_err(|e| fail(e.into()))?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python_at(py, item, depth + 1)?)
                    .map_err(fail)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, to_python_at(py, item, depth + 1)?)
                    .map_err(fail)?;
            }
            dict.into_any()
        }
    })
}

/// Arguments for a call, as a tuple.
pub(crate) fn to_args<'py>(
    py: Python<'py>,
    args: &[Value],
) -> Result<Bound<'py, PyTuple>, PyRunnerError> {
    let items = args
        .iter()
        .map(|arg| to_python(py, arg))
        .collect::<Result<Vec<_>, _>>()?;
    PyTuple::new(py, items).map_err(|err| PyRunnerError::Conversion(err.to_string()))
}
