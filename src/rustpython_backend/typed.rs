//! Typed calls on RustPython: packed arguments (see `crate::call::pack`) to
//! Python objects, and Python results to any `T: DeserializeOwned` by the
//! value table (see `crate::value::from_python`).
//!
//! Arguments are built by a small serde visitor of this file's own rather
//! than RustPython's `py_serde`: that one has no `bytes` (a bin would
//! arrive as a list of ints) and panics on a map key Python cannot hash.

use std::fmt;

use rustpython_vm::builtins::{
    PyBaseExceptionRef, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList,
    PyListRef, PyMemoryView, PySet, PyStr, PyTuple, PyTupleRef,
};
use rustpython_vm::convert::TryFromBorrowedObject;
use rustpython_vm::protocol::PyBuffer;
use rustpython_vm::{AsObject, PyObject, PyObjectRef, VirtualMachine};
use serde::de::{self, Deserialize, DeserializeOwned, DeserializeSeed, Deserializer, Visitor};

use super::convert::{exception_text, ToValueError};
use crate::call::Packed;
use crate::error::PyRunnerError;
use crate::value::from_python::{read, ReadError, ReadErrorKind, ReadRow, Row, TableObject};
use crate::value::{int_too_large, too_deep, LONE_SURROGATE, MAX_DEPTH};

/// The packed reader: values borrow from the bytes.
type Input<'a> = rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'a, [u8]>>;

fn input(bytes: &[u8]) -> Input<'_> {
    let mut input = rmp_serde::Deserializer::from_read_ref(bytes);
    // As deep as the packer lets containers go: `MAX_DEPTH` of them.
    input.set_max_depth(MAX_DEPTH + 1);
    input
}

/// Positional arguments for a call. A value that cannot be built (an
/// unhashable map key, bytes that are not MessagePack) is a `Conversion`
/// error naming its argument, counted from 1.
pub(crate) fn args_to_python(
    vm: &VirtualMachine,
    args: &Packed,
) -> Result<Vec<PyObjectRef>, PyRunnerError> {
    let mut input = input(&args.bytes);
    (1..=args.count)
        .map(|position| {
            to_python(vm, &mut input)
                .map_err(|why| PyRunnerError::Conversion(format!("argument {position}: {why}")))
        })
        .collect()
}

/// Keyword arguments for a call, in order, ready to collect into
/// `KwArgs`; empty when there are none.
pub(crate) fn kwargs_to_python(
    vm: &VirtualMachine,
    kwargs: &Packed,
) -> Result<Vec<(String, PyObjectRef)>, PyRunnerError> {
    let mut input = input(&kwargs.bytes);
    (1..=kwargs.count)
        .map(|position| {
            let name = <&str>::deserialize(&mut input).map_err(|err| {
                PyRunnerError::Conversion(format!("keyword argument {position}: its name: {err}"))
            })?;
            let value = to_python(vm, &mut input).map_err(|why| {
                PyRunnerError::Conversion(format!("keyword argument '{name}': {why}"))
            })?;
            Ok((name.to_owned(), value))
        })
        .collect()
}

/// The next packed value as a Python object.
fn to_python(vm: &VirtualMachine, input: &mut Input<'_>) -> Result<PyObjectRef, String> {
    Builder { vm }
        .deserialize(&mut *input)
        .map_err(|err| match err {
            rmp_serde::decode::Error::DepthLimitExceeded => too_deep(),
            err => err.to_string(),
        })
}

/// Builds one Python object from a MessagePack value: nil → `None`, bin →
/// `bytes`, array → `list`, map → `dict` (keys of any type Python can hash).
#[derive(Clone, Copy)]
struct Builder<'vm> {
    vm: &'vm VirtualMachine,
}

impl<'de> DeserializeSeed<'de> for Builder<'_> {
    type Value = PyObjectRef;

    fn deserialize<D: Deserializer<'de>>(self, input: D) -> Result<PyObjectRef, D::Error> {
        input.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Builder<'_> {
    type Value = PyObjectRef;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack value")
    }

    fn visit_unit<E>(self) -> Result<PyObjectRef, E> {
        Ok(self.vm.ctx.none())
    }

    fn visit_none<E>(self) -> Result<PyObjectRef, E> {
        Ok(self.vm.ctx.none())
    }

    fn visit_some<D: Deserializer<'de>>(self, input: D) -> Result<PyObjectRef, D::Error> {
        input.deserialize_any(self)
    }

    fn visit_bool<E>(self, b: bool) -> Result<PyObjectRef, E> {
        Ok(self.vm.ctx.new_bool(b).into())
    }

    fn visit_i64<E>(self, i: i64) -> Result<PyObjectRef, E> {
        Ok(self.vm.ctx.new_int(i).into())
    }

    fn visit_u64<E>(self, u: u64) -> Result<PyObjectRef, E> {
        Ok(self.vm.ctx.new_int(u).into())
    }

    fn visit_f64<E>(self, f: f64) -> Result<PyObjectRef, E> {
        Ok(self.vm.ctx.new_float(f).into())
    }

    fn visit_str<E>(self, s: &str) -> Result<PyObjectRef, E> {
        Ok(self.vm.ctx.new_str(s).into())
    }

    fn visit_bytes<E>(self, bytes: &[u8]) -> Result<PyObjectRef, E> {
        Ok(self.vm.ctx.new_bytes(bytes.to_vec()).into())
    }

    fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<PyObjectRef, E> {
        Ok(self.vm.ctx.new_bytes(bytes).into())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PyObjectRef, A::Error> {
        // The declared length is only trusted so far.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(self.vm.ctx.new_list(items).into())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<PyObjectRef, A::Error> {
        let vm = self.vm;
        let dict = vm.ctx.new_dict();
        while let Some(key) = map.next_key_seed(self)? {
            let value = map.next_value_seed(self)?;
            dict.set_item(&*key, value, vm)
                .map_err(|exc| de::Error::custom(described(vm, &exc)))?;
        }
        Ok(dict.into())
    }
}

/// `TypeError: unhashable type: 'list'`, as pyo3 shows an exception.
fn described(vm: &VirtualMachine, exc: &PyBaseExceptionRef) -> String {
    format!("{}: {}", exc.class().name(), exception_text(vm, exc))
}

/// Reads a call's result as a `T`. `table_form` is the helpers' function
/// of that name. A Python exception raised while reading (by `str()` of an
/// object) is `Python`; a value with no faithful form, or one that does
/// not fit `T` (its message says where), is `Conversion`.
pub(crate) fn from_python<T: DeserializeOwned>(
    vm: &VirtualMachine,
    obj: &PyObject,
    table_form: &PyObject,
) -> Result<T, ToValueError> {
    let obj = Object {
        vm,
        obj: obj.to_owned(),
    };
    let table_form = Object {
        vm,
        obj: table_form.to_owned(),
    };
    read(obj, &table_form).map_err(|err| match err.into_kind() {
        ReadErrorKind::Python(exc) => ToValueError::Python(exc),
        ReadErrorKind::Conversion(why) => ToValueError::Conversion(why),
        ReadErrorKind::Mismatch(mismatch) => ToValueError::Conversion(mismatch.to_string()),
    })
}

/// A RustPython object, with the VM that reads it.
pub(crate) struct Object<'vm> {
    vm: &'vm VirtualMachine,
    obj: PyObjectRef,
}

impl<'vm> TableObject for Object<'vm> {
    type Exception = PyBaseExceptionRef;
    type Items = Items<'vm>;
    type Entries = Entries<'vm>;

    fn row<R: ReadRow<Self>>(
        &self,
        read: R,
    ) -> Result<Result<R::Value, ReadError<PyBaseExceptionRef>>, R> {
        match self.row_in_table_order() {
            Ok(Some(row)) => Ok(read.read(row)),
            Ok(None) => Err(read),
            Err(err) => Ok(Err(err)),
        }
    }

    fn key_text<R>(
        &self,
        read: impl FnOnce(&str) -> R,
    ) -> Result<R, ReadError<PyBaseExceptionRef>> {
        match self.obj.downcast_ref::<PyStr>() {
            Some(s) => text(s).map(read),
            None => {
                let s = self.obj.str(self.vm)?;
                text(&s).map(read)
            }
        }
    }

    fn table_form(&self, table_form: &Self) -> Result<Self, ReadError<PyBaseExceptionRef>> {
        let obj = table_form.obj.call((self.obj.clone(),), self.vm)?;
        Ok(Object { vm: self.vm, obj })
    }
}

impl<'vm> Object<'vm> {
    /// The row of the table that fits, in its order; `None` if none does.
    #[allow(clippy::type_complexity)]
    fn row_in_table_order(&self) -> Result<Option<Row<'_, Self>>, ReadError<PyBaseExceptionRef>> {
        let vm = self.vm;
        let obj = &*self.obj;
        if vm.is_none(obj) {
            return Ok(Some(Row::Null));
        }
        if obj.class().is(vm.ctx.types.bool_type) {
            return Ok(Some(Row::Bool(obj.is(&vm.ctx.true_value))));
        }
        // `downcast_ref` also accepts subclasses: they read as the value they hold.
        if let Some(int) = obj.downcast_ref::<PyInt>() {
            return int_row(vm, int).map(Some);
        }
        if let Some(float) = obj.downcast_ref::<PyFloat>() {
            return Ok(Some(Row::Float(float.to_f64())));
        }
        if let Some(s) = obj.downcast_ref::<PyStr>() {
            return text(s).map(|s| Some(Row::Str(s)));
        }
        if let Some(list) = obj.downcast_ref::<PyList>() {
            return Ok(Some(Row::Items(Items::List {
                vm,
                list: list.to_owned(),
                next: 0,
            })));
        }
        if let Some(tuple) = obj.downcast_ref::<PyTuple>() {
            return Ok(Some(Row::Items(Items::Tuple {
                vm,
                tuple: tuple.to_owned(),
                next: 0,
            })));
        }
        if let Some(dict) = obj.downcast_ref::<PyDict>() {
            // A copy: `str()` of a key or item may change the dict itself.
            return Ok(Some(Row::Entries(Entries {
                vm,
                entries: dict.items_vec().into_iter(),
            })));
        }
        if let Some(set) = obj.downcast_ref::<PySet>() {
            return Ok(Some(Row::Items(Items::Copied {
                vm,
                items: set.elements().into_iter(),
            })));
        }
        if let Some(set) = obj.downcast_ref::<PyFrozenSet>() {
            return Ok(Some(Row::Items(Items::Copied {
                vm,
                items: set.elements().into_iter(),
            })));
        }
        if let Some(bytes) = obj.downcast_ref::<PyBytes>() {
            return Ok(Some(Row::Bytes(bytes.as_bytes())));
        }
        if let Some(bytes) = obj.downcast_ref::<PyByteArray>() {
            return Ok(Some(Row::ByteBuf(bytes.borrow_buf().to_vec())));
        }
        if obj.downcast_ref::<PyMemoryView>().is_some() {
            let buffer = PyBuffer::try_from_borrowed_object(vm, obj)?;
            let mut bytes = Vec::with_capacity(buffer.desc.len);
            buffer.append_to(&mut bytes);
            return Ok(Some(Row::ByteBuf(bytes)));
        }
        Ok(None)
    }
}

/// The items of a list (read by index under its lock, so one that changes
/// while an item is read ends early or skips, never fails), a tuple, or a
/// copy of a set's.
pub(crate) enum Items<'vm> {
    List {
        vm: &'vm VirtualMachine,
        list: PyListRef,
        next: usize,
    },
    Tuple {
        vm: &'vm VirtualMachine,
        tuple: PyTupleRef,
        next: usize,
    },
    Copied {
        vm: &'vm VirtualMachine,
        items: std::vec::IntoIter<PyObjectRef>,
    },
}

impl<'vm> Iterator for Items<'vm> {
    type Item = Object<'vm>;

    fn next(&mut self) -> Option<Object<'vm>> {
        let (vm, obj) = match self {
            Items::List { vm, list, next } => {
                let item = list.borrow_vec().get(*next).cloned();
                *next += 1;
                (*vm, item?)
            }
            Items::Tuple { vm, tuple, next } => {
                let item = tuple.as_slice().get(*next).cloned();
                *next += 1;
                (*vm, item?)
            }
            Items::Copied { vm, items } => (*vm, items.next()?),
        };
        Some(Object { vm, obj })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Items::List { list, next, .. } => {
                let left = list.borrow_vec().len().saturating_sub(*next);
                (left, Some(left))
            }
            Items::Tuple { tuple, next, .. } => {
                let left = tuple.len().saturating_sub(*next);
                (left, Some(left))
            }
            Items::Copied { items, .. } => items.size_hint(),
        }
    }
}

/// A copy of a dict's entries.
pub(crate) struct Entries<'vm> {
    vm: &'vm VirtualMachine,
    entries: std::vec::IntoIter<(PyObjectRef, PyObjectRef)>,
}

impl<'vm> Iterator for Entries<'vm> {
    type Item = (Object<'vm>, Object<'vm>);

    fn next(&mut self) -> Option<Self::Item> {
        let vm = self.vm;
        let (key, value) = self.entries.next()?;
        Some((Object { vm, obj: key }, Object { vm, obj: value }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for Entries<'_> {}

fn int_row<'a, 'vm>(
    vm: &VirtualMachine,
    int: &PyInt,
) -> Result<Row<'a, Object<'vm>>, ReadError<PyBaseExceptionRef>> {
    if let Ok(i) = int.try_to_primitive::<i64>(vm) {
        return Ok(Row::Int(i));
    }
    if let Ok(u) = int.try_to_primitive::<u64>(vm) {
        return Ok(Row::UInt(u));
    }
    Err(ReadError::conversion(int_too_large(int.as_bigint().bits())))
}

/// The text of a `str`; one UTF-8 cannot carry is a `Conversion` error.
fn text(s: &PyStr) -> Result<&str, ReadError<PyBaseExceptionRef>> {
    s.to_str()
        .ok_or_else(|| ReadError::conversion(LONE_SURROGATE.into()))
}

#[cfg(test)]
mod tests {
    use rustpython_vm::builtins::PyBaseExceptionRef;
    use rustpython_vm::compiler::Mode;
    use rustpython_vm::scope::Scope;
    use rustpython_vm::{AsObject, PyObject, PyObjectRef, VirtualMachine};
    use serde::de::DeserializeOwned;

    use super::{args_to_python, from_python, kwargs_to_python};
    use crate::error::PyRunnerError;
    use crate::rustpython_backend::convert::{exception_text, ToValueError};

    /// Runs `f` in a RustPython interpreter set up as the backend sets one
    /// up, with the helpers' `table_form`, on a thread with the room an
    /// unoptimised RustPython needs.
    fn with_vm<R: Send>(f: impl FnOnce(&VirtualMachine, &PyObject) -> R + Send) -> R {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn_scoped(scope, || {
                    let (_signals, receiver) = rustpython_vm::signal::user_signal_channel();
                    let interpreter = crate::rustpython_backend::interpreter(receiver);
                    interpreter.enter(|vm| {
                        let helpers = run_source(vm, crate::worker_source::HELPERS_PY);
                        let table_form = helpers
                            .get_item("table_form", vm)
                            .expect("the helpers define table_form");
                        f(vm, &table_form)
                    })
                })
                .expect("a test thread starts")
                .join()
                .expect("the test thread ends")
        })
    }

    /// The namespace `source` leaves behind.
    fn run_source(vm: &VirtualMachine, source: &str) -> rustpython_vm::builtins::PyDictRef {
        let fail = |err: PyBaseExceptionRef| -> ! { panic!("{}", exception_text(vm, &err)) };
        let namespace = vm.ctx.new_dict();
        namespace
            .set_item("__name__", vm.ctx.new_str("async_py_test").into(), vm)
            .unwrap_or_else(|err| fail(err));
        let code = vm
            .compile(source, Mode::Exec, "<test>".to_owned())
            .expect("the test's code compiles");
        vm.run_code_obj(code, Scope::with_builtins(None, namespace.clone(), vm))
            .unwrap_or_else(|err| fail(err));
        namespace
    }

    /// Runs `code`; its result is its variable `value`.
    fn run(vm: &VirtualMachine, code: &str) -> PyObjectRef {
        run_source(vm, code)
            .get_item("value", vm)
            .expect("the code sets `value`")
    }

    fn typed<T: DeserializeOwned + Send>(code: &str) -> Result<T, Failure> {
        with_vm(|vm, table_form| {
            let value = run(vm, code);
            from_python::<T>(vm, &value, table_form).map_err(|err| match err {
                ToValueError::Python(exc) => Failure::Python(exc.class().name().to_string()),
                ToValueError::Conversion(why) => Failure::Conversion(why),
            })
        })
    }

    fn conversion_message(err: PyRunnerError) -> String {
        match err {
            PyRunnerError::Conversion(why) => why,
            other => panic!("not a Conversion error: {other:?}"),
        }
    }

    fn repr(vm: &VirtualMachine, obj: &PyObject) -> String {
        obj.repr(vm)
            .expect("repr")
            .to_str()
            .expect("UTF-8")
            .to_owned()
    }

    fn args_repr(args: &Packed) -> Result<String, String> {
        with_vm(|vm, _| {
            let args = args_to_python(vm, args).map_err(conversion_message)?;
            Ok(repr(vm, vm.ctx.new_tuple(args).as_object()))
        })
    }

    fn kwargs_repr(kwargs: &Packed) -> Result<String, String> {
        with_vm(|vm, _| {
            let kwargs = kwargs_to_python(vm, kwargs).map_err(conversion_message)?;
            if kwargs.is_empty() {
                return Ok("None".to_owned());
            }
            let dict = vm.ctx.new_dict();
            for (name, value) in kwargs {
                dict.set_item(name.as_str(), value, vm).expect("a str key");
            }
            Ok(repr(vm, dict.as_object()))
        })
    }

    crate::value::from_python::conformance::tests!();
}
