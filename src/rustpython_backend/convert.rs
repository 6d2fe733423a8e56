//! The value table (see `crate::value`) for the RustPython backend.

use rustpython_vm::builtins::{
    PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyStr, PyTuple,
};
use rustpython_vm::{AsObject, PyObject, PyObjectRef, PyResult, VirtualMachine};
use serde_json::{Map, Number, Value};

use crate::error::PyRunnerError;
use crate::value::{int_too_large, too_deep, LONE_SURROGATE, MAX_DEPTH};

/// Either a Python exception raised while converting (by `str()` of an
/// object, say) or a value with no faithful form.
pub(crate) enum ToValueError {
    Python(rustpython_vm::builtins::PyBaseExceptionRef),
    Conversion(String),
}

impl From<rustpython_vm::builtins::PyBaseExceptionRef> for ToValueError {
    fn from(err: rustpython_vm::builtins::PyBaseExceptionRef) -> Self {
        ToValueError::Python(err)
    }
}

/// Python to Rust. `table_form` is the helpers' function of that name: the
/// rows of the table after the exact types (dataclasses, mappings, ...).
pub(crate) fn to_value(
    vm: &VirtualMachine,
    obj: &PyObject,
    table_form: &PyObject,
) -> Result<Value, ToValueError> {
    Reader { vm, table_form }.value(obj, 0)
}

struct Reader<'a> {
    vm: &'a VirtualMachine,
    table_form: &'a PyObject,
}

impl Reader<'_> {
    fn value(&self, obj: &PyObject, depth: usize) -> Result<Value, ToValueError> {
        let vm = self.vm;
        if depth > MAX_DEPTH {
            return Err(ToValueError::Conversion(too_deep()));
        }
        if vm.is_none(obj) {
            return Ok(Value::Null);
        }
        if obj.class().is(vm.ctx.types.bool_type) {
            return Ok(Value::Bool(obj.is(&vm.ctx.true_value)));
        }
        // `downcast_ref` also accepts subclasses: they cross as the value they hold.
        if let Some(int) = obj.downcast_ref::<PyInt>() {
            return int_to_value(vm, int);
        }
        if let Some(float) = obj.downcast_ref::<PyFloat>() {
            return Ok(Number::from_f64(float.to_f64()).map_or(Value::Null, Value::Number));
        }
        if let Some(s) = obj.downcast_ref::<PyStr>() {
            return utf8(s).map(Value::String);
        }
        if let Some(list) = obj.downcast_ref::<PyList>() {
            // A copy: `str()` of an item may run code that changes the list.
            let items = list.borrow_vec().to_vec();
            return self.array_of(&items, depth);
        }
        if let Some(tuple) = obj.downcast_ref::<PyTuple>() {
            return self.array_of(tuple.as_slice(), depth);
        }
        if let Some(dict) = obj.downcast_ref::<PyDict>() {
            let items = dict.items_vec();
            let mut map = Map::with_capacity(items.len());
            for (key, item) in items {
                let key = match key.downcast_ref::<PyStr>() {
                    Some(s) => utf8(s)?,
                    None => {
                        let text = key.str(vm)?;
                        utf8(&text)?
                    }
                };
                map.insert(key, self.value(&item, depth + 1)?);
            }
            return Ok(Value::Object(map));
        }
        if let Some(set) = obj.downcast_ref::<PySet>() {
            return self.array_of(&set.elements(), depth);
        }
        if let Some(set) = obj.downcast_ref::<PyFrozenSet>() {
            return self.array_of(&set.elements(), depth);
        }
        if let Some(bytes) = obj.downcast_ref::<PyBytes>() {
            return Ok(bytes_to_value(bytes.as_bytes()));
        }
        if let Some(bytes) = obj.downcast_ref::<PyByteArray>() {
            return Ok(bytes_to_value(&bytes.borrow_buf()));
        }
        let adapted = self.table_form.call((obj.to_owned(),), vm)?;
        self.value(&adapted, depth + 1)
    }

    fn array_of(&self, items: &[PyObjectRef], depth: usize) -> Result<Value, ToValueError> {
        items
            .iter()
            .map(|item| self.value(item, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::Array)
    }
}

/// The text of a `str`; one UTF-8 cannot carry is a `Conversion` error.
fn utf8(s: &PyStr) -> Result<String, ToValueError> {
    s.to_str()
        .map(str::to_owned)
        .ok_or_else(|| ToValueError::Conversion(LONE_SURROGATE.into()))
}

fn int_to_value(vm: &VirtualMachine, int: &PyInt) -> Result<Value, ToValueError> {
    if let Ok(i) = int.try_to_primitive::<i64>(vm) {
        return Ok(Value::from(i));
    }
    if let Ok(u) = int.try_to_primitive::<u64>(vm) {
        return Ok(Value::from(u));
    }
    Err(ToValueError::Conversion(int_too_large(
        int.as_bigint().bits(),
    )))
}

fn bytes_to_value(bytes: &[u8]) -> Value {
    Value::Array(bytes.iter().map(|&b| Value::from(b)).collect())
}

/// Rust to Python.
pub(crate) fn to_python(vm: &VirtualMachine, value: &Value) -> Result<PyObjectRef, PyRunnerError> {
    to_python_at(vm, value, 0)
}

fn to_python_at(
    vm: &VirtualMachine,
    value: &Value,
    depth: usize,
) -> Result<PyObjectRef, PyRunnerError> {
    if depth > MAX_DEPTH {
        return Err(PyRunnerError::Conversion(too_deep()));
    }
    Ok(match value {
        Value::Null => vm.ctx.none(),
        Value::Bool(b) => vm.ctx.new_bool(*b).into(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                vm.ctx.new_int(i).into()
            } else if let Some(u) = n.as_u64() {
                vm.ctx.new_int(u).into()
            } else {
                vm.ctx.new_float(n.as_f64().unwrap_or(f64::NAN)).into()
            }
        }
        Value::String(s) => vm.ctx.new_str(s.as_str()).into(),
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|item| to_python_at(vm, item, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            vm.ctx.new_list(items).into()
        }
        Value::Object(map) => {
            let dict = vm.ctx.new_dict();
            for (key, item) in map {
                let item = to_python_at(vm, item, depth + 1)?;
                dict.set_item(key.as_str(), item, vm)
                    .map_err(|err| PyRunnerError::Conversion(exception_text(vm, &err)))?;
            }
            dict.into()
        }
    })
}

/// Arguments for a call.
pub(crate) fn to_args(
    vm: &VirtualMachine,
    args: &[Value],
) -> Result<Vec<PyObjectRef>, PyRunnerError> {
    args.iter().map(|arg| to_python(vm, arg)).collect()
}

/// `str()` of an exception, for the rare failure that has no better report.
pub(crate) fn exception_text(
    vm: &VirtualMachine,
    exc: &rustpython_vm::builtins::PyBaseExceptionRef,
) -> String {
    let text: PyResult<_> = exc.as_object().str(vm);
    text.ok()
        .and_then(|s| s.to_str().map(str::to_owned))
        .unwrap_or_else(|| "an exception that could not be described".into())
}
