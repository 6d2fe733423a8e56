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
