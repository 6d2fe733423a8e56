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

/// One step of the path into a value, for [`placed`].
#[derive(Clone, Copy)]
pub(crate) enum Step<'a> {
    /// An item of a sequence: `[2]`.
    Index(usize),
    /// A map's key, a struct's field or an enum's variant: `name`.
    Key(&'a str),
    /// A step serde_path_to_error could not name: `?` (its paths are
    /// read only by the tests, as the form this one follows).
    #[cfg(test)]
    Unknown,
}

/// A serde error about a typed result (one that does not fit its type),
/// after the place it was found: `[2].name: invalid type: string "x",
/// expected u32`. At the top, or where no step has a name, the message
/// alone. Paths read as serde_path_to_error shows them.
pub(crate) fn placed<'a>(
    path: impl IntoIterator<Item = Step<'a>>,
    message: &dyn std::fmt::Display,
) -> String {
    use std::fmt::Write;

    let mut text = String::new();
    let mut named = false;
    for (at, step) in path.into_iter().enumerate() {
        let separator = if at == 0 { "" } else { "." };
        let _ = match step {
            Step::Index(index) => write!(text, "[{index}]"),
            Step::Key(key) => write!(text, "{separator}{key}"),
            #[cfg(test)]
            Step::Unknown => {
                let _ = write!(text, "{separator}?");
                continue;
            }
        };
        named = true;
    }
    if named {
        format!("{text}: {message}")
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

/// Whether `value` nests past [`MAX_DEPTH`].
#[cfg(feature = "subprocess")]
pub(crate) fn nests_too_deep(value: &Value) -> bool {
    nests_past(value, 0)
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

    use super::{placed, Step};

    /// [`placed`] for a path serde_path_to_error tracked: the form the
    /// reader's paths follow.
    fn at_path(path: &serde_path_to_error::Path, message: &dyn std::fmt::Display) -> String {
        use serde_path_to_error::Segment;

        let steps = path.iter().map(|segment| match segment {
            Segment::Seq { index } => Step::Index(*index),
            Segment::Map { key } => Step::Key(key),
            Segment::Enum { variant } => Step::Key(variant),
            Segment::Unknown => Step::Unknown,
        });
        placed(steps, message)
    }

    /// `at_path` of what serde_path_to_error says of `json` read as `T`.
    fn path_message<T: for<'de> Deserialize<'de> + std::fmt::Debug>(json: &str) -> String {
        let mut input = serde_json::Deserializer::from_str(json);
        let err = serde_path_to_error::deserialize::<_, T>(&mut input)
            .expect_err("the input does not fit");
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
            path_message::<Vec<Item>>(r#"[{"name": 1}, {"name": 2}, {"name": "x"}]"#),
            "[2].name: invalid type: string \"x\", expected u32 at line 1 column 39"
        );
        assert_eq!(
            path_message::<std::collections::HashMap<String, Vec<u8>>>(r#"{"a": [1, 300]}"#),
            "a[1]: invalid value: integer `300`, expected u8 at line 1 column 13"
        );
    }

    #[test]
    fn paths_read_as_serde_path_to_error_shows_them() {
        let json = r#"{"a": [{"b": {"C": [0, "x"]}}]}"#;
        let mut input = serde_json::Deserializer::from_str(json);
        let err =
            serde_path_to_error::deserialize::<_, std::collections::HashMap<String, Vec<Deep>>>(
                &mut input,
            )
            .expect_err("the input does not fit");
        assert_eq!(
            at_path(err.path(), err.inner()),
            format!("{}: {}", err.path(), err.inner())
        );
        assert_eq!(at_path(err.path(), &"m"), "a[0].b.C[1]: m");
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Deep {
        b: Variant,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum Variant {
        C(Vec<u8>),
    }

    #[test]
    fn a_mismatch_at_the_top_is_the_message_alone() {
        assert_eq!(
            path_message::<u32>(r#""x""#),
            "invalid type: string \"x\", expected u32 at line 1 column 3"
        );
    }

    #[test]
    fn a_path_that_names_no_step_is_left_out() {
        assert_eq!(placed([], &"m"), "m");
        assert_eq!(placed([Step::Unknown], &"m"), "m");
        let steps = [
            Step::Key("a"),
            Step::Unknown,
            Step::Index(1),
            Step::Key("b"),
        ];
        assert_eq!(placed(steps, &"m"), "a.?[1].b: m");
    }
}
