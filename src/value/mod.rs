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
//!
//! Typed results (any `T: DeserializeOwned`) are read by the same rows, with
//! one difference: `bytes`, `bytearray` and `memoryview` are bytes (a serde
//! byte string), so `serde_bytes::ByteBuf` or `bytes::Bytes` take them whole;
//! a `Vec<u8>` still gets one `u8` per byte. See `from_python`.

use serde_json::Value;

use crate::error::PyRunnerError;

#[cfg(any(feature = "pyo3", feature = "rustpython"))]
pub(crate) mod from_python;

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

/// A serde error about a typed result (one that does not fit its type),
/// with the place it was found: `[2].name: invalid type: string "x",
/// expected u32`. At the top, where serde_path_to_error's path is empty (it
/// shows as "."), or says nothing but "?", the message alone.
// Built without either in-process backend, it waits for the child's typed
// results, which read theirs with rmp-serde and serde_path_to_error too.
#[cfg_attr(not(any(feature = "pyo3", feature = "rustpython")), allow(dead_code))]
pub(crate) fn at_path(path: &serde_path_to_error::Path, message: &dyn std::fmt::Display) -> String {
    let says_where = path
        .iter()
        .any(|segment| !matches!(segment, serde_path_to_error::Segment::Unknown));
    if says_where {
        format!("{path}: {message}")
    } else {
        message.to_string()
    }
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

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::at_path;

    /// `at_path` of what serde_path_to_error says of `json` read as `T`.
    fn placed<T: for<'de> Deserialize<'de>>(json: &str) -> String {
        let mut input = serde_json::Deserializer::from_str(json);
        let err = serde_path_to_error::deserialize::<_, T>(&mut input)
            .err()
            .expect("the input does not fit");
        at_path(err.path(), err.inner())
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        name: u32,
    }

    #[test]
    fn a_mismatch_inside_says_where() {
        assert_eq!(
            placed::<Vec<Item>>(r#"[{"name": 1}, {"name": 2}, {"name": "x"}]"#),
            "[2].name: invalid type: string \"x\", expected u32 at line 1 column 41"
        );
        assert_eq!(
            placed::<std::collections::HashMap<String, Vec<u8>>>(r#"{"a": [1, 300]}"#),
            "a[1]: invalid value: integer `300`, expected u8 at line 1 column 13"
        );
    }

    #[test]
    fn a_mismatch_at_the_top_is_the_message_alone() {
        assert_eq!(
            placed::<u32>(r#""x""#),
            "invalid type: string \"x\", expected u32 at line 1 column 3"
        );
    }
}
