//! The value table shared by every backend.
//!
//! | Python | [`Value`](serde_json::Value) |
//! |---|---|
//! | `None` | `null` |
//! | `bool` | bool (checked before `int`) |
//! | `int` | number in `i64` or `u64` range, else a `Conversion` error |
//! | `float` | number; NaN and ±inf become `null` |
//! | `str` | string |
//! | `list`, `tuple`, `set`, `frozenset` | array |
//! | `dict` | object; keys that are not `str` become `str(key)` |
//! | `bytes`, `bytearray` | array of numbers 0..=255 |
//! | anything else | string: `str(obj)` |
//!
//! Rust to Python: `null`→`None`, bool, numbers (`i64`/`u64` to `int`, others
//! to `float`), string→`str`, array→`list`, object→`dict`.

use serde_json::Value;

use crate::error::PyRunnerError;

/// How deeply values may nest. Deeper values (and self-containing ones,
/// `a = []; a.append(a)`) are a `Conversion` error instead of a stack overflow.
pub(crate) const MAX_DEPTH: usize = 200;

#[cfg(any(feature = "pyo3", feature = "rustpython"))]
/// The message of a `Conversion` error for an `int` that fits in neither
/// `i64` nor `u64`.
pub(crate) fn int_too_large(bits: u64) -> String {
    format!("int of {bits} bits does not fit in a 64-bit integer (i64 or u64)")
}

#[cfg(any(feature = "pyo3", feature = "rustpython"))]
/// The message of a `Conversion` error for a `str` UTF-8 cannot carry.
pub(crate) const LONE_SURROGATE: &str = "str holds a lone surrogate, which UTF-8 cannot carry";

pub(crate) fn too_deep() -> String {
    format!("value nests deeper than {MAX_DEPTH} levels (or contains itself)")
}

/// Refuses arguments that nest past [`MAX_DEPTH`], on the caller's thread and
/// before anything else touches them: serde_json drops, clones and
/// serializes a `Value` recursively, so one nested 100 000 deep would
/// overflow a 2 MiB stack on the way to the backend.
pub(crate) fn checked_args(args: Vec<Value>) -> Result<Vec<Value>, PyRunnerError> {
    if args.iter().any(|arg| nests_past(arg, 0)) {
        dismantle(args);
        return Err(PyRunnerError::Conversion(too_deep()));
    }
    Ok(args)
}

/// Whether `value`, found at `depth`, reaches past [`MAX_DEPTH`]. The
/// recursion stops there, so its own depth is bounded.
fn nests_past(value: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    match value {
        Value::Array(items) => items.iter().any(|item| nests_past(item, depth + 1)),
        Value::Object(map) => map.values().any(|item| nests_past(item, depth + 1)),
        _ => false,
    }
}

/// Drops values of any depth with a heap stack instead of the call stack.
fn dismantle(values: Vec<Value>) {
    let mut pending = values;
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => pending.extend(map.into_iter().map(|(_, item)| item)),
            _ => {}
        }
    }
}
