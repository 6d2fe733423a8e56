//! Typed calls in process: packed arguments (see `crate::call::pack`) to
//! Python objects, and Python results to any `T: DeserializeOwned` by the
//! value table (see `crate::value::from_python`).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyOverflowError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::iter::{
    BoundDictIterator, BoundFrozenSetIterator, BoundListIterator, BoundTupleIterator,
};
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PyMemoryView, PySet,
    PyString, PyTuple,
};
use serde::de::{Deserialize, DeserializeOwned};

use super::convert::ToValueError;
use crate::call::Packed;
use crate::error::PyRunnerError;
use crate::value::from_python::{read, ReadError, ReadErrorKind, ReadRow, Row, TableObject};
use crate::value::{int_too_large, too_deep, LONE_SURROGATE, MAX_DEPTH};

/// The packed reader: values borrow from the bytes, so a bin is copied
/// once, into its `bytes` object.
type Input<'a> = rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'a, [u8]>>;

fn input(bytes: &[u8]) -> Input<'_> {
    let mut input = rmp_serde::Deserializer::from_read_ref(bytes);
    // As deep as the packer lets containers go: `MAX_DEPTH` of them.
    input.set_max_depth(MAX_DEPTH + 1);
    input
}

/// Positional arguments for a call, as a tuple. A value that cannot be
/// built (an unhashable map key, bytes that are not MessagePack) is a
/// `Conversion` error naming its argument, counted from 1.
pub(crate) fn args_to_python<'py>(
    py: Python<'py>,
    args: &Packed,
) -> Result<Bound<'py, PyTuple>, PyRunnerError> {
    let mut input = input(&args.bytes);
    let mut items = Vec::with_capacity(args.count);
    for position in 1..=args.count {
        let item = to_python(py, &mut input)
            .map_err(|why| PyRunnerError::Conversion(format!("argument {position}: {why}")))?;
        items.push(item);
    }
    PyTuple::new(py, items).map_err(|err| PyRunnerError::Conversion(err.to_string()))
}

/// Keyword arguments for a call, as a dict; `None` when there are none.
pub(crate) fn kwargs_to_python<'py>(
    py: Python<'py>,
    kwargs: &Packed,
) -> Result<Option<Bound<'py, PyDict>>, PyRunnerError> {
    if kwargs.count == 0 {
        return Ok(None);
    }
    let mut input = input(&kwargs.bytes);
    let dict = PyDict::new(py);
    for position in 1..=kwargs.count {
        let name = <&str>::deserialize(&mut input).map_err(|err| {
            PyRunnerError::Conversion(format!("keyword argument {position}: its name: {err}"))
        })?;
        let fail =
            |why: String| PyRunnerError::Conversion(format!("keyword argument '{name}': {why}"));
        let value = to_python(py, &mut input).map_err(fail)?;
        dict.set_item(name, value)
            .map_err(|err| fail(err.to_string()))?;
    }
    Ok(Some(dict))
}

/// The next packed value as a Python object: nil → `None`, bin → `bytes`,
/// array → `list`, map → `dict`, by pythonize.
fn to_python<'py>(py: Python<'py>, input: &mut Input<'_>) -> Result<Bound<'py, PyAny>, String> {
    serde_transcode::transcode(&mut *input, pythonize::Pythonizer::new(py)).map_err(|err| {
        // The reader's errors reach us as text, through the transcoder.
        let why = err.to_string();
        if why == rmp_serde::decode::Error::DepthLimitExceeded.to_string() {
            too_deep()
        } else {
            why
        }
    })
}

/// Reads a call's result as a `T`. `table_form` is the helpers' function
/// of that name. A Python exception raised while reading (by `str()` of an
/// object) is `Python`; a value with no faithful form, or one that does
/// not fit `T` (its message says where), is `Conversion`.
pub(crate) fn from_python<'py, T: DeserializeOwned>(
    obj: &Bound<'py, PyAny>,
    table_form: &Bound<'py, PyAny>,
) -> Result<T, ToValueError> {
    read(obj.clone(), table_form).map_err(|err| match err.into_kind() {
        ReadErrorKind::Python(err) => ToValueError::Python(err),
        ReadErrorKind::Conversion(why) => ToValueError::Conversion(why),
        ReadErrorKind::Mismatch(mismatch) => ToValueError::Conversion(mismatch.to_string()),
    })
}

impl<'py> TableObject for Bound<'py, PyAny> {
    type Exception = PyErr;
    type Items = Items<'py>;
    type Entries = BoundDictIterator<'py>;

    /// The common exact types first, one pointer compare each, inline;
    /// then the table's order, where subclasses count too (as in `to_value`).
    #[inline(always)]
    fn row<R: ReadRow<Self>>(&self, read: R) -> Result<Result<R::Value, ReadError<PyErr>>, R> {
        if let Ok(int) = self.cast_exact::<PyInt>() {
            let mut overflow = 0;
            // SAFETY: `int` is a live `int` (the `Bound` holds a reference,
            // and the GIL); `overflow` is a valid place to write a flag.
            let i = unsafe { ffi::PyLong_AsLongLongAndOverflow(int.as_ptr(), &mut overflow) };
            // For an `int` itself, -1 is an error only with one set, which
            // `int_row` turns into a `Python` error.
            if overflow == 0 && i != -1 {
                return Ok(read.read(Row::Int(i)));
            }
            return Ok(int_row(int).and_then(|row| read.read(row)));
        }
        if let Ok(s) = self.cast_exact::<PyString>() {
            return Ok(text(s).and_then(|s| read.read(Row::Str(s))));
        }
        if let Ok(float) = self.cast_exact::<PyFloat>() {
            return Ok(read.read(Row::Float(float.value())));
        }
        if let Ok(list) = self.cast_exact::<PyList>() {
            return Ok(read.read(Row::Items(Items::List(list.clone().into_iter()))));
        }
        match row_in_table_order(self) {
            Ok(Some(row)) => Ok(read.read(row)),
            Ok(None) => Err(read),
            Err(err) => Ok(Err(err)),
        }
    }

    fn key_text<R>(&self, read: impl FnOnce(&str) -> R) -> Result<R, ReadError<PyErr>> {
        match self.cast::<PyString>() {
            Ok(s) => text(s).map(read),
            Err(_) => text(&self.str()?).map(read),
        }
    }

    fn table_form(&self, table_form: &Self) -> Result<Self, ReadError<PyErr>> {
        Ok(table_form.call1((self,))?)
    }
}

/// The table's rows in its order, for what is not one of the common
/// exact types.
fn row_in_table_order<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
) -> Result<Option<Row<'a, Bound<'py, PyAny>>>, ReadError<PyErr>> {
    if obj.is_none() {
        return Ok(Some(Row::Null));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Some(Row::Bool(b.is_true())));
    }
    if let Ok(int) = obj.cast::<PyInt>() {
        return int_row(int).map(Some);
    }
    if let Ok(float) = obj.cast::<PyFloat>() {
        return Ok(Some(Row::Float(float.value())));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return text(s).map(|s| Some(Row::Str(s)));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        return Ok(Some(Row::Items(Items::List(list.clone().into_iter()))));
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return Ok(Some(Row::Items(Items::Tuple(tuple.clone().into_iter()))));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        // A copy: `str()` of a key or item may change the dict itself.
        return Ok(Some(Row::Entries(dict.copy()?.into_iter())));
    }
    if let Ok(set) = obj.cast::<PySet>() {
        // Frozen first, for the same reason.
        let frozen = obj.py().get_type::<PyFrozenSet>().call1((set,))?;
        let frozen = frozen.cast_into::<PyFrozenSet>().map_err(PyErr::from)?;
        return Ok(Some(Row::Items(Items::Set(frozen.into_iter()))));
    }
    if let Ok(set) = obj.cast::<PyFrozenSet>() {
        return Ok(Some(Row::Items(Items::Set(set.clone().into_iter()))));
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(Some(Row::Bytes(bytes.as_bytes())));
    }
    if let Ok(bytes) = obj.cast::<PyByteArray>() {
        return Ok(Some(Row::ByteBuf(bytes.to_vec())));
    }
    if obj.cast::<PyMemoryView>().is_ok() {
        return Ok(Some(Row::ByteBuf(view_bytes(obj)?)));
    }
    Ok(None)
}

/// The items of a list (read by index, so one that changes while an item
/// is read ends early rather than reading freed memory), a tuple or a
/// frozen set.
pub(crate) enum Items<'py> {
    List(BoundListIterator<'py>),
    Tuple(BoundTupleIterator<'py>),
    Set(BoundFrozenSetIterator<'py>),
}

impl<'py> Iterator for Items<'py> {
    type Item = Bound<'py, PyAny>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Items::List(items) => items.next(),
            Items::Tuple(items) => items.next(),
            Items::Set(items) => items.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Items::List(items) => items.size_hint(),
            Items::Tuple(items) => items.size_hint(),
            Items::Set(items) => items.size_hint(),
        }
    }
}

fn int_row<'a, 'py>(
    int: &Bound<'py, PyInt>,
) -> Result<Row<'a, Bound<'py, PyAny>>, ReadError<PyErr>> {
    match int.extract::<i64>() {
        Ok(i) => return Ok(Row::Int(i)),
        Err(err) if !err.is_instance_of::<PyOverflowError>(int.py()) => return Err(err.into()),
        Err(_) => {}
    }
    if let Ok(u) = int.extract::<u64>() {
        return Ok(Row::UInt(u));
    }
    let bits: u64 = int.call_method0("bit_length")?.extract()?;
    Err(ReadError::conversion(int_too_large(bits)))
}

/// The text of a `str`; one UTF-8 cannot carry is a `Conversion` error.
fn text<'a>(s: &'a Bound<'_, PyString>) -> Result<&'a str, ReadError<PyErr>> {
    s.to_str()
        .map_err(|_| ReadError::conversion(LONE_SURROGATE.into()))
}

/// A memoryview's bytes, copied once where its items are bytes; others
/// (`array('i')`'s, say) through `tobytes()`.
fn view_bytes(view: &Bound<'_, PyAny>) -> Result<Vec<u8>, ReadError<PyErr>> {
    match PyBuffer::<u8>::get(view) {
        Ok(buffer) => Ok(buffer.to_vec(view.py())?),
        Err(_) => {
            let bytes = view.call_method0("tobytes")?;
            let bytes = bytes.cast::<PyBytes>().map_err(PyErr::from)?;
            Ok(bytes.as_bytes().to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use pyo3::prelude::*;
    use pyo3::types::{PyDict, PyModule};
    use serde::de::DeserializeOwned;

    use super::{args_to_python, from_python, kwargs_to_python};
    use crate::error::PyRunnerError;
    use crate::pyo3_backend::convert::ToValueError;

    /// Runs `f` attached to CPython, started as the crate starts it, with
    /// the helpers' `table_form`.
    fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>, &Bound<'py, PyAny>) -> R) -> R {
        crate::pyo3_backend::init::start_interpreter().expect("CPython starts");
        Python::attach(|py| {
            let source = CString::new(crate::worker_source::HELPERS_PY).expect("no NUL");
            let helpers =
                PyModule::from_code(py, &source, c"async_py/worker.py", c"async_py_worker")
                    .expect("the helpers load");
            let table_form = helpers.getattr("table_form").expect("table_form");
            f(py, &table_form)
        })
    }

    /// Runs `code`; its result is its variable `value`.
    fn run<'py>(py: Python<'py>, code: &str) -> Bound<'py, PyAny> {
        let globals = PyDict::new(py);
        let code = CString::new(code).expect("no NUL");
        py.run(&code, Some(&globals), None)
            .expect("the test's code runs");
        globals
            .get_item("value")
            .expect("a dict lookup")
            .expect("the code sets `value`")
    }

    fn typed<T: DeserializeOwned>(code: &str) -> Result<T, Failure> {
        with_python(|py, table_form| {
            let value = run(py, code);
            from_python::<T>(&value, table_form).map_err(|err| match err {
                ToValueError::Python(err) => Failure::Python(
                    err.get_type(py)
                        .name()
                        .map(|name| name.to_string())
                        .unwrap_or_default(),
                ),
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

    fn args_repr(args: &Packed) -> Result<String, String> {
        with_python(|py, _| {
            let args = args_to_python(py, args).map_err(conversion_message)?;
            Ok(args.repr().expect("repr").to_string())
        })
    }

    fn kwargs_repr(kwargs: &Packed) -> Result<String, String> {
        with_python(
            |py, _| match kwargs_to_python(py, kwargs).map_err(conversion_message)? {
                Some(kwargs) => Ok(kwargs.repr().expect("repr").to_string()),
                None => Ok("None".to_owned()),
            },
        )
    }

    crate::value::from_python::conformance::tests!();

    /// The best of `rounds` runs of `f`, in microseconds; dropping what it
    /// made is not counted.
    fn best_of<R>(rounds: usize, mut f: impl FnMut() -> R) -> f64 {
        (0..rounds)
            .map(|_| {
                let start = std::time::Instant::now();
                let made = std::hint::black_box(f());
                let took = start.elapsed().as_secs_f64() * 1e6;
                drop(made);
                took
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// Figures, for a release build:
    /// `cargo test --release --lib pyo3_backend::typed::tests::speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement; run it in a release build"]
    fn speed() {
        use crate::value::from_python::conformance::push;
        with_python(|py, table_form| {
            let ints = run(py, "value = list(range(100_000))");
            let typed = best_of(50, || {
                from_python::<Vec<i64>>(&ints, table_form).ok().unwrap()
            });
            let value = best_of(50, || {
                super::super::convert::to_value(&ints, table_form)
                    .ok()
                    .unwrap()
            });
            println!("list of 100 000 ints -> Vec<i64>: {typed:.0} us (to_value: {value:.0} us)");

            let mut args = Packed::default();
            push(&mut args, &(0..100_000i64).collect::<Vec<_>>());
            let packed = best_of(50, || args_to_python(py, &args).unwrap());
            let direct = best_of(50, || pyo3::types::PyList::new(py, 0..100_000i64).unwrap());
            let range = pyo3::types::PyRange::new(py, 0, 100_000).unwrap();
            let list = py.get_type::<pyo3::types::PyList>();
            let python = best_of(50, || list.call1((&range,)).unwrap());
            println!(
                "packed Vec<i64> of 100 000 -> args: {packed:.0} us \
                 (a list built from the ints directly: {direct:.0} us; \
                 CPython's own list(range(100_000)): {python:.0} us)"
            );

            let big = run(py, "value = bytes(range(256)) * (8 << 20 >> 8)");
            let raw = big.cast::<pyo3::types::PyBytes>().unwrap().as_bytes();
            assert_eq!(raw.len(), 8 << 20);
            let copy = best_of(20, || raw.to_vec());
            let read = best_of(20, || {
                from_python::<serde_bytes::ByteBuf>(&big, table_form)
                    .ok()
                    .unwrap()
            });
            let mut args = Packed::default();
            push(&mut args, serde_bytes::Bytes::new(raw));
            let write = best_of(20, || args_to_python(py, &args).unwrap());
            println!(
                "8 MiB: bytes -> ByteBuf {read:.0} us, bin -> bytes {write:.0} us \
                 (one copy, to_vec: {copy:.0} us)"
            );
        });
    }
}
