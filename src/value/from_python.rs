//! Typed results: a Python object read straight into any
//! `T: DeserializeOwned`, by the value table.
//!
//! [`read`] runs a serde `Deserializer` over the object, written once here
//! for both in-process backends; each backend says how its objects fit the
//! table's rows by implementing [`TableObject`]. The rows are `to_value`'s,
//! in its order, with one difference: `bytes`, `bytearray` and `memoryview`
//! are bytes (`visit_bytes`), so a `serde_bytes::ByteBuf` or `bytes::Bytes`
//! takes them in one copy, while a `Vec<u8>`, which asks for a sequence,
//! gets one `u8` per byte.
//!
//! No `serde_json::Value` is built on the way: each object is read once,
//! straight into the target.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{StrDeserializer, U8Deserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use super::{placed, too_deep, Step, MAX_DEPTH};

/// A Python object, as the value table reads it (a pyo3 `Bound`, or a
/// RustPython object with its VM).
pub(crate) trait TableObject: Sized {
    /// A Python exception, as the backend holds one.
    type Exception: fmt::Debug;
    /// The items of a list, tuple, set or frozenset, in order.
    type Items: Iterator<Item = Self>;
    /// The entries of a dict, of a copy of it: `str()` of a key may run
    /// code that changes the dict itself.
    type Entries: ExactSizeIterator<Item = (Self, Self)>;

    /// Hands `read` the row that fits this object by its type, checked in
    /// the table's order (`bool` before `int`), and returns what it made
    /// of it; gives `read` back (`Err`) when no row fits, and the object is
    /// read again as `table_form(obj)`.
    ///
    /// `read` is called where the row is found, rather than the row
    /// returned: inlined there, an `int` goes straight to `visit_i64`. A
    /// row returned as a value went through memory on its way to the
    /// visitor, and reading a list of ints took half as long again.
    #[allow(clippy::type_complexity)]
    fn row<R: ReadRow<Self>>(
        &self,
        read: R,
    ) -> Result<Result<R::Value, ReadError<Self::Exception>>, R>;

    /// The text of a dict key: the key's own for a `str`, else `str(key)`'s.
    fn key_text<R>(&self, read: impl FnOnce(&str) -> R) -> Result<R, ReadError<Self::Exception>>;

    /// `table_form(self)`: what the table reads an object of no row as.
    fn table_form(&self, table_form: &Self) -> Result<Self, ReadError<Self::Exception>>;
}

/// What reads an object's row (see [`TableObject::row`]).
pub(crate) trait ReadRow<O: TableObject>: Sized {
    type Value;

    fn read(self, row: Row<'_, O>) -> Result<Self::Value, ReadError<O::Exception>>;
}

/// One row of the value table, with what the object holds.
pub(crate) enum Row<'a, O: TableObject> {
    /// `None`.
    Null,
    Bool(bool),
    /// An `int` in `i64` range.
    Int(i64),
    /// An `int` past `i64`, in `u64` range.
    UInt(u64),
    /// A `float`; NaN and ±inf read as `None`, as in `to_value`.
    Float(f64),
    Str(&'a str),
    /// A `bytes`' own buffer.
    Bytes(&'a [u8]),
    /// A copy of a `bytearray`'s or `memoryview`'s bytes.
    #[cfg_attr(not(any(feature = "pyo3", feature = "rustpython")), allow(dead_code))]
    ByteBuf(Vec<u8>),
    /// A list, tuple, set or frozenset.
    Items(O::Items),
    /// A dict.
    Entries(O::Entries),
}

/// Why an object could not be read as the type asked for.
///
/// Boxed: errors are rare, and a small one keeps each `Result` the reader
/// passes along in registers.
#[derive(Debug)]
pub(crate) struct ReadError<X>(Box<ReadErrorKind<X>>);

#[derive(Debug)]
pub(crate) enum ReadErrorKind<X> {
    /// Python raised while the object was read (`str()` of an object, say).
    Python(X),
    /// A value that has no faithful form (the table's own errors:
    /// [`int_too_large`](super::int_too_large), [`too_deep`], ...).
    Conversion(String),
    /// The value does not fit the type.
    Mismatch(Mismatch),
}

impl<X> ReadError<X> {
    pub(crate) fn conversion(why: String) -> Self {
        ReadError(Box::new(ReadErrorKind::Conversion(why)))
    }

    pub(crate) fn into_kind(self) -> ReadErrorKind<X> {
        *self.0
    }

    /// The error, found inside `place`.
    fn within(mut self, place: impl FnOnce() -> Place) -> Self {
        if let ReadErrorKind::Mismatch(mismatch) = &mut *self.0 {
            mismatch.path.push(place());
        }
        self
    }
}

/// serde's message about a value that does not fit its type, and where it
/// was found.
#[derive(Debug)]
pub(crate) struct Mismatch {
    message: String,
    /// Innermost first: each sequence, map or variant the error travels
    /// out of adds its place.
    path: Vec<Place>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps = self.path.iter().rev().map(|place| match place {
            Place::Index(index) => Step::Index(*index),
            Place::Key(key) => Step::Key(key),
        });
        f.write_str(&placed(steps, &self.message))
    }
}

/// One step into a value: an item's index, or a key, field or variant.
#[derive(Debug)]
enum Place {
    Index(usize),
    Key(String),
}

impl<X> From<X> for ReadError<X> {
    fn from(err: X) -> Self {
        ReadError(Box::new(ReadErrorKind::Python(err)))
    }
}

impl<X> fmt::Display for ReadError<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            ReadErrorKind::Python(_) => {
                f.write_str("Python raised an exception while reading the value")
            }
            ReadErrorKind::Conversion(why) => f.write_str(why),
            ReadErrorKind::Mismatch(mismatch) => mismatch.fmt(f),
        }
    }
}

impl<X: fmt::Debug> std::error::Error for ReadError<X> {}

impl<X: fmt::Debug> de::Error for ReadError<X> {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ReadError(Box::new(ReadErrorKind::Mismatch(Mismatch {
            message: msg.to_string(),
            path: Vec::new(),
        })))
    }
}

/// Reads `obj` as a `T`. `table_form` is the helpers' function of that
/// name. A mismatch says where it was found (`[2].name: invalid type:
/// ...`, as serde_path_to_error shows it); the table's own errors and
/// Python's come out as they are.
///
/// The reader keeps the path itself, and only on the way out of an error:
/// wrapped in serde_path_to_error instead, a list of 100 000 ints took
/// twice as long to read.
pub(crate) fn read<T: DeserializeOwned, O: TableObject>(
    obj: O,
    table_form: &O,
) -> Result<T, ReadError<O::Exception>> {
    T::deserialize(Reader {
        obj,
        table_form,
        depth: 0,
    })
}

/// An object not read yet, `depth` levels into the value.
struct Reader<'t, O> {
    obj: O,
    table_form: &'t O,
    depth: usize,
}

impl<'t, O: TableObject> Reader<'t, O> {
    /// Hands the object's row to `read`; an object no row fits is read as
    /// `table_form(obj)`, one level deeper, as `to_value` does.
    #[inline(always)]
    fn with_row<R>(
        self,
        read: impl FnOnce(RowReader<'_, 't, O>) -> Result<R, ReadError<O::Exception>>,
    ) -> Result<R, ReadError<O::Exception>> {
        let Reader {
            mut obj,
            table_form,
            depth,
        } = self;
        let mut deliver = Deliver {
            read,
            table_form,
            depth,
            value: PhantomData,
        };
        loop {
            if deliver.depth > MAX_DEPTH {
                return Err(ReadError::conversion(too_deep()));
            }
            match obj.row(deliver) {
                Ok(value) => return value,
                Err(unread) => deliver = unread,
            }
            obj = obj.table_form(table_form)?;
            deliver.depth += 1;
        }
    }
}

/// Hands a row to `read` as a [`RowReader`] at `depth`.
struct Deliver<'t, O, F, R> {
    read: F,
    table_form: &'t O,
    depth: usize,
    value: PhantomData<fn() -> R>,
}

impl<'t, O, F, R> ReadRow<O> for Deliver<'t, O, F, R>
where
    O: TableObject,
    F: FnOnce(RowReader<'_, 't, O>) -> Result<R, ReadError<O::Exception>>,
{
    type Value = R;

    #[inline(always)]
    fn read(self, row: Row<'_, O>) -> Result<R, ReadError<O::Exception>> {
        (self.read)(RowReader {
            row,
            table_form: self.table_form,
            depth: self.depth,
        })
    }
}

/// Forwards `Deserializer` methods to the object's row.
macro_rules! by_row {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Self::Error> {
            self.with_row(move |row| row.$method($($arg,)* visitor))
        }
    )*};
}

impl<'de, O: TableObject> Deserializer<'de> for Reader<'_, O> {
    type Error = ReadError<O::Exception>;

    by_row! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    /// Skipped unread: nothing of it is needed, and reading it could run
    /// Python code (`str()`, `table_form`) for nothing.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }
}

/// An object whose row has been read, `depth` levels into the value.
struct RowReader<'a, 't, O: TableObject> {
    row: Row<'a, O>,
    table_form: &'t O,
    depth: usize,
}

impl<'de, O: TableObject> Deserializer<'de> for RowReader<'_, '_, O> {
    type Error = ReadError<O::Exception>;

    #[inline(always)]
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.row {
            Row::Null => visitor.visit_unit(),
            Row::Bool(b) => visitor.visit_bool(b),
            Row::Int(i) => visitor.visit_i64(i),
            Row::UInt(u) => visitor.visit_u64(u),
            Row::Float(f) if f.is_finite() => visitor.visit_f64(f),
            Row::Float(_) => visitor.visit_unit(),
            Row::Str(s) => visitor.visit_str(s),
            Row::Bytes(bytes) => visitor.visit_bytes(bytes),
            Row::ByteBuf(bytes) => visitor.visit_byte_buf(bytes),
            Row::Items(items) => {
                let mut seq = SeqReader {
                    items,
                    table_form: self.table_form,
                    depth: self.depth + 1,
                    count: 0,
                };
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Row::Entries(entries) => visitor.visit_map(MapReader {
                entries,
                key: String::new(),
                value: None,
                table_form: self.table_form,
                depth: self.depth + 1,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.row {
            Row::Null => visitor.visit_none(),
            Row::Float(f) if !f.is_finite() => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    /// Bytes are a sequence of `u8` to a target that asks for one (`Vec<u8>`,
    /// `[u8; 4]`), whose visitor takes no byte string.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.row {
            Row::Bytes(bytes) => visit_byte_items(bytes.iter().copied(), visitor),
            Row::ByteBuf(bytes) => visit_byte_items(bytes.into_iter(), visitor),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_seq(visitor)
    }

    /// A `str` is a unit variant; a dict of one entry is a variant (its key)
    /// with content (its value), as serde_json has them.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.row {
            Row::Str(s) => visitor.visit_enum(StrDeserializer::<Self::Error>::new(s)),
            Row::Entries(mut entries) => {
                let len = entries.len();
                match entries.next() {
                    Some((variant, content)) if len == 1 => visitor.visit_enum(EnumReader {
                        variant,
                        content: Reader {
                            obj: content,
                            table_form: self.table_form,
                            depth: self.depth + 1,
                        },
                    }),
                    _ => Err(de::Error::invalid_length(
                        len,
                        &"a dict of one entry, {variant: content}",
                    )),
                }
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct map struct identifier
    }
}

/// Serves bytes to a visitor that wants a sequence.
fn visit_byte_items<'de, V, X>(
    bytes: impl Iterator<Item = u8>,
    visitor: V,
) -> Result<V::Value, ReadError<X>>
where
    V: Visitor<'de>,
    X: fmt::Debug,
{
    let mut seq = ByteItems {
        bytes,
        count: 0,
        error: PhantomData::<X>,
    };
    let value = visitor.visit_seq(&mut seq)?;
    if seq.bytes.next().is_some() {
        let len = seq.count + 1 + seq.bytes.count();
        return Err(de::Error::invalid_length(len, &ItemsRead(seq.count)));
    }
    Ok(value)
}

/// Bytes as a sequence of `u8`.
struct ByteItems<I, X> {
    bytes: I,
    /// How many were read.
    count: usize,
    error: PhantomData<X>,
}

impl<'de, I: Iterator<Item = u8>, X: fmt::Debug> SeqAccess<'de> for ByteItems<I, X> {
    type Error = ReadError<X>;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Self::Error> {
        let Some(byte) = self.bytes.next() else {
            return Ok(None);
        };
        let index = self.count;
        self.count += 1;
        seed.deserialize(U8Deserializer::<Self::Error>::new(byte))
            .map(Some)
            .map_err(|err| err.within(|| Place::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        match self.bytes.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        }
    }
}

/// The items of a list, tuple or set.
struct SeqReader<'t, O: TableObject> {
    items: O::Items,
    table_form: &'t O,
    /// The items' depth.
    depth: usize,
    /// How many items were read.
    count: usize,
}

impl<O: TableObject> SeqReader<'_, O> {
    /// Items left over (a tuple of 2 read from a list of 3) do not fit.
    fn end(&mut self) -> Result<(), ReadError<O::Exception>> {
        if self.items.next().is_none() {
            return Ok(());
        }
        let len = self.count + 1 + self.items.by_ref().count();
        Err(de::Error::invalid_length(len, &ItemsRead(self.count)))
    }
}

/// What a sequence that was read in part was expected to hold.
struct ItemsRead(usize);

impl de::Expected for ItemsRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("1 element in sequence"),
            n => write!(f, "{n} elements in sequence"),
        }
    }
}

impl<'de, O: TableObject> SeqAccess<'de> for SeqReader<'_, O> {
    type Error = ReadError<O::Exception>;

    #[inline]
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Self::Error> {
        let Some(obj) = self.items.next() else {
            return Ok(None);
        };
        let index = self.count;
        self.count += 1;
        seed.deserialize(Reader {
            obj,
            table_form: self.table_form,
            depth: self.depth,
        })
        .map(Some)
        .map_err(|err| err.within(|| Place::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        match self.items.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        }
    }
}

/// The entries of a dict; keys are their text (`str(key)` for a key that
/// is not a `str`).
struct MapReader<'t, O: TableObject> {
    entries: O::Entries,
    /// The text of the key just read, for the path of an error in its value.
    key: String,
    /// The value of the key just read.
    value: Option<O>,
    table_form: &'t O,
    /// The values' depth.
    depth: usize,
}

impl<'de, O: TableObject> MapAccess<'de> for MapReader<'_, O> {
    type Error = ReadError<O::Exception>;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        let last = &mut self.key;
        key.key_text(|text| {
            last.clear();
            last.push_str(text);
            seed.deserialize(KeyText::<Self::Error>::new(text))
        })?
        .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        let obj = self.value.take().ok_or_else(|| {
            <Self::Error as de::Error>::custom("a dict value was asked for before its key")
        })?;
        seed.deserialize(Reader {
            obj,
            table_form: self.table_form,
            depth: self.depth,
        })
        .map_err(|err| err.within(|| Place::Key(self.key.clone())))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// A variant with content: `{variant: content}`.
struct EnumReader<'t, O> {
    variant: O,
    content: Reader<'t, O>,
}

impl<'de, 't, O: TableObject> EnumAccess<'de> for EnumReader<'t, O> {
    type Error = ReadError<O::Exception>;
    type Variant = ContentReader<'t, O>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), Self::Error> {
        let (value, variant) = self.variant.key_text(|text| {
            let value = seed.deserialize(StrDeserializer::<Self::Error>::new(text));
            (value, text.to_owned())
        })?;
        let content = ContentReader {
            content: self.content,
            variant,
        };
        Ok((value?, content))
    }
}

/// A variant's content; an error in it is found inside the variant.
struct ContentReader<'t, O> {
    content: Reader<'t, O>,
    variant: String,
}

impl<'de, O: TableObject> VariantAccess<'de> for ContentReader<'_, O> {
    type Error = ReadError<O::Exception>;

    /// `{variant: None}`.
    fn unit_variant(self) -> Result<(), Self::Error> {
        let variant = self.variant;
        de::Deserialize::deserialize(self.content).map_err(|err| err.within(|| Place::Key(variant)))
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        let variant = self.variant;
        seed.deserialize(self.content)
            .map_err(|err| err.within(|| Place::Key(variant)))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let variant = self.variant;
        self.content
            .deserialize_tuple(len, visitor)
            .map_err(|err| err.within(|| Place::Key(variant)))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let variant = self.variant;
        self.content
            .deserialize_struct("", fields, visitor)
            .map_err(|err| err.within(|| Place::Key(variant)))
    }
}

/// The tests every in-process backend runs, written once: `tests!()`
/// expands them where the backend's test module defines
/// `typed::<T>(code) -> Result<T, Failure>` (runs `code`, reads its
/// `value` as a `T`), and `args_repr(&Packed)`, `kwargs_repr(&Packed)`
/// (`repr()` of what the arguments became, `"None"` for no keywords; the
/// `Conversion` message on failure).
/// A dict key, whose text the table made (`str(key)` for a key that is
/// not a `str`). A type that asks for a number or a bool gets the text
/// parsed, as serde_json reads the keys of a `Value` (`{1: "a"}` into a
/// `HashMap<u32, String>`); anything else gets the text.
struct KeyText<'a, E> {
    text: &'a str,
    error: PhantomData<E>,
}

impl<'a, E> KeyText<'a, E> {
    fn new(text: &'a str) -> Self {
        KeyText {
            text,
            error: PhantomData,
        }
    }
}

macro_rules! parsed_key {
    ($($method:ident => $visit:ident: $kind:ty),*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
                match self.text.parse::<$kind>() {
                    Ok(value) => visitor.$visit(value),
                    Err(_) => visitor.visit_str(self.text),
                }
            }
        )*
    };
}

impl<'de, E: de::Error> Deserializer<'de> for KeyText<'_, E> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        visitor.visit_str(self.text)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.text {
            "True" | "true" => visitor.visit_bool(true),
            "False" | "false" => visitor.visit_bool(false),
            text => visitor.visit_str(text),
        }
    }

    parsed_key! {
        deserialize_i8 => visit_i8: i8, deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32, deserialize_i64 => visit_i64: i64,
        deserialize_i128 => visit_i128: i128, deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16, deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64, deserialize_u128 => visit_u128: u128,
        deserialize_f32 => visit_f32: f32, deserialize_f64 => visit_f64: f64
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, E> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, E> {
        StrDeserializer::<E>::new(self.text).deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct
        map struct identifier ignored_any
    }
}

#[cfg(all(test, any(feature = "pyo3", feature = "rustpython")))]
pub(crate) mod conformance {
    use serde::{Deserialize, Serialize};

    use crate::call::Packed;

    /// How a read failed, as the tests compare it.
    #[derive(Debug, PartialEq)]
    pub(crate) enum Failure {
        /// A Python exception, by its class name.
        Python(String),
        Conversion(String),
    }

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    pub(crate) struct Point {
        pub x: i64,
        pub y: Option<String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    pub(crate) enum Shape {
        Empty,
        Circle(f64),
        Pair(i64, i64),
        Rect { w: i64, h: i64 },
    }

    #[derive(Debug, PartialEq, Deserialize)]
    pub(crate) struct Meters(pub f64);

    /// Adds one positional argument, packed as the call builder packs it.
    pub(crate) fn push<T: Serialize + ?Sized>(packed: &mut Packed, value: &T) {
        value
            .serialize(&mut rmp_serde::Serializer::new(&mut packed.bytes).with_struct_map())
            .expect("packs");
        packed.count += 1;
    }

    /// Adds one keyword argument: its name, then its value.
    pub(crate) fn push_named<T: Serialize + ?Sized>(packed: &mut Packed, name: &str, value: &T) {
        rmp::encode::write_str(&mut packed.bytes, name).expect("packs");
        push(packed, value);
    }

    /// A value nested `levels` lists deep: `[[...[]...]]`.
    pub(crate) fn nested(levels: usize) -> serde_json::Value {
        let mut value = serde_json::json!([]);
        for _ in 1..levels {
            value = serde_json::Value::Array(vec![value]);
        }
        value
    }

    macro_rules! tests {
        () => {
            use std::collections::{BTreeMap, HashMap};

            use serde::de::IgnoredAny;
            use serde_json::json;

            use crate::call::Packed;
            use crate::value::from_python::conformance::{
                nested, push, push_named, Failure, Meters, Point, Shape,
            };
            use crate::value::{int_too_large, too_deep, LONE_SURROGATE};

            fn mismatch(message: &str) -> Failure {
                Failure::Conversion(message.to_owned())
            }

            #[test]
            fn none_bool_and_ints_read_by_their_rows() {
                assert_eq!(typed::<()>("value = None"), Ok(()));
                assert_eq!(typed::<Option<i64>>("value = None"), Ok(None));
                assert_eq!(typed::<bool>("value = True"), Ok(true));
                assert_eq!(typed::<serde_json::Value>("value = [False, 0]"), Ok(json!([false, 0])));
                assert_eq!(
                    typed::<i64>("value = True"),
                    Err(mismatch("invalid type: boolean `true`, expected i64"))
                );
                assert_eq!(typed::<i64>("value = -2**63"), Ok(i64::MIN));
                assert_eq!(
                    typed::<Vec<i64>>("value = [-1, 0, 2**62]"),
                    Ok(vec![-1, 0, 1 << 62])
                );
                assert_eq!(typed::<u64>("value = 2**64 - 1"), Ok(u64::MAX));
                assert_eq!(typed::<i64>("class I(int): pass\nvalue = I(7)"), Ok(7));
                assert_eq!(typed::<u8>("value = 255"), Ok(255));
                assert_eq!(typed::<i128>("value = -5"), Ok(-5));
                assert_eq!(typed::<f64>("value = 3"), Ok(3.0));
            }

            #[test]
            fn ints_past_64_bits_are_conversion_errors() {
                assert_eq!(
                    typed::<serde_json::Value>("value = 2**64"),
                    Err(Failure::Conversion(int_too_large(65)))
                );
                assert_eq!(
                    typed::<Vec<i64>>("value = [1, -2**63 - 1]"),
                    Err(Failure::Conversion(int_too_large(64)))
                );
                assert_eq!(
                    typed::<i64>("value = 2**63"),
                    Err(mismatch(
                        "invalid value: integer `9223372036854775808`, expected i64"
                    ))
                );
            }

            #[test]
            fn floats_read_with_nan_and_inf_as_none() {
                assert_eq!(typed::<f64>("value = 1.5"), Ok(1.5));
                assert_eq!(typed::<f32>("class F(float): pass\nvalue = F(0.5)"), Ok(0.5));
                assert_eq!(typed::<Option<f64>>("value = float('nan')"), Ok(None));
                assert_eq!(
                    typed::<Vec<Option<f64>>>("value = [1.0, float('inf'), -float('inf'), None]"),
                    Ok(vec![Some(1.0), None, None, None])
                );
                assert_eq!(typed::<serde_json::Value>("value = float('nan')"), Ok(json!(null)));
                assert_eq!(
                    typed::<f64>("value = float('nan')"),
                    Err(mismatch("invalid type: unit value, expected f64"))
                );
            }

            #[test]
            fn strs_read_as_text() {
                assert_eq!(typed::<String>("value = 'héllo ✓'"), Ok("héllo ✓".to_owned()));
                assert_eq!(typed::<String>("class S(str): pass\nvalue = S('s')"), Ok("s".to_owned()));
                assert_eq!(typed::<char>("value = 'é'"), Ok('é'));
                assert!(matches!(typed::<char>("value = 'ab'"), Err(Failure::Conversion(_))));
                assert_eq!(
                    typed::<String>("value = '\\ud800'"),
                    Err(Failure::Conversion(LONE_SURROGATE.into()))
                );
                assert_eq!(
                    typed::<HashMap<String, i64>>("value = {'\\ud800': 1}"),
                    Err(Failure::Conversion(LONE_SURROGATE.into()))
                );
            }

            #[test]
            fn lists_tuples_and_sets_read_as_sequences() {
                assert_eq!(typed::<Vec<i64>>("value = [1, 2, 3]"), Ok(vec![1, 2, 3]));
                assert_eq!(typed::<Vec<i64>>("value = (1, 2)"), Ok(vec![1, 2]));
                assert_eq!(typed::<(i64, String)>("value = [1, 'a']"), Ok((1, "a".to_owned())));
                let mut set = typed::<Vec<i64>>("value = {3, 1, 2}").unwrap();
                set.sort();
                assert_eq!(set, vec![1, 2, 3]);
                assert_eq!(typed::<Vec<i64>>("value = frozenset([4])"), Ok(vec![4]));
                assert_eq!(typed::<Vec<Vec<i64>>>("value = [[], [1]]"), Ok(vec![vec![], vec![1]]));
                assert_eq!(
                    typed::<(i64, i64)>("value = [1, 2, 3]"),
                    Err(mismatch("invalid length 3, expected 2 elements in sequence"))
                );
                assert_eq!(
                    typed::<(i64, i64)>("value = [1]"),
                    Err(mismatch("invalid length 1, expected a tuple of size 2"))
                );
            }

            #[test]
            fn a_list_that_changes_while_it_is_read_ends_early() {
                let code = "class Clears:\n    def __str__(self):\n        value.clear()\n        return 'c'\n\
                            value = [Clears(), Clears(), Clears()]";
                assert_eq!(typed::<Vec<String>>(code), Ok(vec!["c".to_owned()]));
            }

            #[test]
            fn dicts_read_as_maps_with_str_keys() {
                assert_eq!(
                    typed::<BTreeMap<String, i64>>("value = {1: 2, (3, 4): 5, 'k': 6, None: 7}"),
                    Ok(BTreeMap::from([
                        ("1".to_owned(), 2),
                        ("(3, 4)".to_owned(), 5),
                        ("k".to_owned(), 6),
                        ("None".to_owned(), 7),
                    ]))
                );
                assert_eq!(
                    typed::<HashMap<String, Vec<f64>>>("value = {'a': [1, 2.5]}"),
                    Ok(HashMap::from([("a".to_owned(), vec![1.0, 2.5])]))
                );
                assert_eq!(
                    typed::<serde_json::Value>("value = {'a': {'b': [None, True]}}"),
                    Ok(json!({"a": {"b": [null, true]}}))
                );
            }

            #[test]
            fn structs_read_from_dicts_sequences_and_dataclasses() {
                let point = Point { x: 1, y: Some("a".to_owned()) };
                assert_eq!(typed::<Point>("value = {'x': 1, 'y': 'a'}"), Ok(point));
                assert_eq!(typed::<Point>("value = {'x': 2}"), Ok(Point { x: 2, y: None }));
                assert_eq!(typed::<Point>("value = [3, None]"), Ok(Point { x: 3, y: None }));
                let code = "from dataclasses import dataclass\n\
                            @dataclass\nclass P:\n    x: int\n    y: str\nvalue = P(4, 'b')";
                assert_eq!(typed::<Point>(code), Ok(Point { x: 4, y: Some("b".to_owned()) }));
                assert_eq!(typed::<Meters>("value = 1.5"), Ok(Meters(1.5)));
            }

            #[test]
            fn fields_not_asked_for_are_not_read() {
                let code = "class Refuses:\n    def __str__(self):\n        raise ValueError('no')\n\
                            value = {'x': 1, 'other': [Refuses()], 'more': {'a': Refuses()}}";
                assert_eq!(typed::<Point>(code), Ok(Point { x: 1, y: None }));
                assert_eq!(typed::<IgnoredAny>("value = object()").map(drop), Ok(()));
            }

            #[test]
            fn enums_read_from_strs_and_dicts_of_one_entry() {
                assert_eq!(typed::<Shape>("value = 'Empty'"), Ok(Shape::Empty));
                assert_eq!(typed::<Shape>("value = {'Empty': None}"), Ok(Shape::Empty));
                assert_eq!(typed::<Shape>("value = {'Circle': 2}"), Ok(Shape::Circle(2.0)));
                assert_eq!(typed::<Shape>("value = {'Pair': (1, 2)}"), Ok(Shape::Pair(1, 2)));
                assert_eq!(
                    typed::<Shape>("value = {'Rect': {'w': 1, 'h': 2}}"),
                    Ok(Shape::Rect { w: 1, h: 2 })
                );
                assert_eq!(
                    typed::<Shape>("value = 'Square'"),
                    Err(mismatch(
                        "unknown variant `Square`, expected one of `Empty`, `Circle`, `Pair`, `Rect`"
                    ))
                );
                assert_eq!(
                    typed::<Shape>("value = {'Circle': 1, 'Pair': 2}"),
                    Err(mismatch("invalid length 2, expected a dict of one entry, {variant: content}"))
                );
                assert_eq!(
                    typed::<Vec<Shape>>("value = ['Empty', 3]"),
                    Err(mismatch("[1]: invalid type: integer `3`, expected enum Shape"))
                );
            }

            #[test]
            fn bytes_bytearray_and_memoryview_read_as_bytes() {
                use serde_bytes::ByteBuf;
                let ab = ByteBuf::from(b"ab".to_vec());
                assert_eq!(typed::<ByteBuf>("value = b'ab'"), Ok(ab.clone()));
                assert_eq!(typed::<ByteBuf>("value = bytearray(b'ab')"), Ok(ab.clone()));
                assert_eq!(typed::<ByteBuf>("value = memoryview(b'ab')"), Ok(ab.clone()));
                assert_eq!(typed::<ByteBuf>("value = memoryview(b'xaby')[1:3]"), Ok(ab.clone()));
                assert_eq!(typed::<ByteBuf>("value = [97, 98]"), Ok(ab));
                assert_eq!(typed::<Vec<u8>>("value = b'ab'"), Ok(b"ab".to_vec()));
                assert_eq!(typed::<Vec<u8>>("value = bytearray(b'ab')"), Ok(b"ab".to_vec()));
                assert_eq!(typed::<Vec<u8>>("value = memoryview(b'ab')"), Ok(b"ab".to_vec()));
                assert_eq!(typed::<[u8; 2]>("value = b'ab'"), Ok(*b"ab"));
                assert_eq!(
                    typed::<bytes::Bytes>("value = b'xy'"),
                    Ok(bytes::Bytes::from_static(b"xy"))
                );
                assert_eq!(
                    typed::<ByteBuf>("import array\nvalue = memoryview(array.array('h', [1]))"),
                    Ok(ByteBuf::from(1i16.to_ne_bytes().to_vec()))
                );
                // serde_json's `Value` has no bytes (the child's results,
                // read by rmp-serde, refuse them the same way).
                assert_eq!(
                    typed::<serde_json::Value>("value = b'ab'"),
                    Err(mismatch("invalid type: byte array, expected any valid JSON value"))
                );
                // serde's own rule: a `String` takes bytes that are UTF-8.
                assert_eq!(typed::<String>("value = b'ab'"), Ok("ab".to_owned()));
                assert_eq!(
                    typed::<String>("value = b'\\xff'"),
                    Err(mismatch("invalid value: byte array, expected a string"))
                );
            }

            #[test]
            fn other_objects_read_as_their_table_form() {
                assert_eq!(typed::<Vec<i64>>("import array\nvalue = array.array('i', [1, 2])"), Ok(vec![1, 2]));
                assert_eq!(
                    typed::<String>("import datetime\nvalue = datetime.date(2024, 1, 2)"),
                    Ok("2024-01-02".to_owned())
                );
                assert_eq!(
                    typed::<String>("import datetime\nvalue = datetime.datetime(2024, 1, 2, 3, 4, 5)"),
                    Ok("2024-01-02T03:04:05".to_owned())
                );
                assert_eq!(typed::<f64>("import fractions\nvalue = fractions.Fraction(1, 4)"), Ok(0.25));
                let mapping = "import collections.abc\n\
                               class M(collections.abc.Mapping):\n    \
                                   def __getitem__(self, key): return {'x': 5}[key]\n    \
                                   def __iter__(self): return iter(['x'])\n    \
                                   def __len__(self): return 1\n\
                               value = M()";
                assert_eq!(typed::<Point>(mapping), Ok(Point { x: 5, y: None }));
                assert_eq!(
                    typed::<String>("class O:\n    def __str__(self): return 'o!'\nvalue = O()"),
                    Ok("o!".to_owned())
                );
            }

            #[test]
            fn a_mismatch_says_where_it_was_found() {
                assert_eq!(
                    typed::<Vec<Point>>("value = [{'x': 1}, {'x': 2}, {'x': 'a'}]"),
                    Err(mismatch("[2].x: invalid type: string \"a\", expected i64"))
                );
                assert_eq!(
                    typed::<BTreeMap<String, Vec<u32>>>("value = {'a': [1, -1]}"),
                    Err(mismatch("a[1]: invalid value: integer `-1`, expected u32"))
                );
                assert_eq!(
                    typed::<u32>("value = 'x'"),
                    Err(mismatch("invalid type: string \"x\", expected u32"))
                );
                assert_eq!(typed::<Point>("value = {}"), Err(mismatch("missing field `x`")));
                assert_eq!(
                    typed::<Vec<Shape>>("value = [{'Rect': {'w': 1, 'h': 'x'}}]"),
                    Err(mismatch("[0].Rect.h: invalid type: string \"x\", expected i64"))
                );
                assert_eq!(
                    typed::<Vec<i8>>("value = b'\\x01\\xff'"),
                    Err(mismatch("[1]: invalid value: integer `255`, expected i8"))
                );
                assert_eq!(
                    typed::<BTreeMap<String, u8>>("value = {(1, 2): 300}"),
                    Err(mismatch("(1, 2): invalid value: integer `300`, expected u8"))
                );
                assert_eq!(typed::<Vec<Point>>("value = [{}]"), Err(mismatch("[0]: missing field `x`")));
            }

            #[test]
            fn python_exceptions_while_reading_come_out_as_python_errors() {
                let refuses = "class Refuses:\n    def __str__(self):\n        raise KeyError('no')\n";
                assert_eq!(
                    typed::<String>(&format!("{refuses}value = Refuses()")),
                    Err(Failure::Python("KeyError".to_owned()))
                );
                assert_eq!(
                    typed::<Vec<HashMap<String, i64>>>(&format!("{refuses}value = [{{Refuses(): 1}}]")),
                    Err(Failure::Python("KeyError".to_owned()))
                );
            }

            #[test]
            fn values_nested_too_deep_are_conversion_errors() {
                assert_eq!(
                    typed::<serde_json::Value>("value = []\nvalue.append(value)"),
                    Err(Failure::Conversion(too_deep()))
                );
                assert_eq!(
                    typed::<serde_json::Value>("value = {}\nvalue['a'] = [value]"),
                    Err(Failure::Conversion(too_deep()))
                );
                // As deep as `to_value` goes: an item at depth 200, none at 201.
                let deep = "value = []\nfor _ in range(200):\n    value = [value]";
                assert_eq!(typed::<serde_json::Value>(deep), Ok(nested(201)));
                let deeper = "value = []\nfor _ in range(201):\n    value = [value]";
                assert_eq!(typed::<serde_json::Value>(deeper), Err(Failure::Conversion(too_deep())));
            }

            #[test]
            fn packed_arguments_become_python_objects() {
                let mut args = Packed::default();
                push(&mut args, &1);
                push(&mut args, "a");
                push(&mut args, &None::<i64>);
                push(&mut args, serde_bytes::Bytes::new(b"ab"));
                push(&mut args, &vec![1.5, -2.0]);
                push(&mut args, &(u64::MAX, i64::MIN, true));
                push(&mut args, &Point { x: 1, y: None });
                assert_eq!(
                    args_repr(&args),
                    Ok("(1, 'a', None, b'ab', [1.5, -2.0], [18446744073709551615, -9223372036854775808, True], {'x': 1, 'y': None})".to_owned())
                );
                assert_eq!(args_repr(&Packed::default()), Ok("()".to_owned()));
            }

            #[test]
            fn packed_maps_keep_their_keys() {
                let mut args = Packed::default();
                push(&mut args, &BTreeMap::from([(1, BTreeMap::from([("a", vec![1.5f32])]))]));
                push(&mut args, &BTreeMap::from([(None, 1), (Some(-1), 2)]));
                push(&mut args, &BTreeMap::from([(false, serde_bytes::Bytes::new(b""))]));
                assert_eq!(
                    args_repr(&args),
                    Ok("({1: {'a': [1.5]}}, {None: 1, -1: 2}, {False: b''})".to_owned())
                );
            }

            #[test]
            fn unhashable_keys_and_bad_bytes_name_their_argument() {
                let mut args = Packed::default();
                push(&mut args, &1);
                push(&mut args, &BTreeMap::from([(vec![1], 2)]));
                assert_eq!(
                    args_repr(&args),
                    Err("argument 2: TypeError: unhashable type: 'list'".to_owned())
                );
                let reserved = Packed { bytes: vec![0x01, 0xc1], count: 2, ..Packed::default() };
                assert!(args_repr(&reserved).unwrap_err().starts_with("argument 2: "));
                let short = Packed { bytes: vec![0x01], count: 2, ..Packed::default() };
                assert!(args_repr(&short).unwrap_err().starts_with("argument 2: "));
                let mut kwargs = Packed::default();
                push_named(&mut kwargs, "a", &1);
                push_named(&mut kwargs, "b", &BTreeMap::from([(BTreeMap::from([(1, 2)]), 3)]));
                assert_eq!(
                    kwargs_repr(&kwargs),
                    Err("keyword argument 'b': TypeError: unhashable type: 'dict'".to_owned())
                );
            }

            #[test]
            fn packed_keyword_arguments_become_a_dict() {
                let mut kwargs = Packed::default();
                push_named(&mut kwargs, "a", &1);
                push_named(&mut kwargs, "b", serde_bytes::Bytes::new(b"x"));
                push_named(&mut kwargs, "c", &BTreeMap::from([("d", [1, 2])]));
                assert_eq!(
                    kwargs_repr(&kwargs),
                    Ok("{'a': 1, 'b': b'x', 'c': {'d': [1, 2]}}".to_owned())
                );
                assert_eq!(kwargs_repr(&Packed::default()), Ok("None".to_owned()));
            }

            #[test]
            fn packed_arguments_nested_too_deep_are_refused() {
                let mut args = Packed::default();
                push(&mut args, &nested(200));
                assert!(args_repr(&args).is_ok());
                let mut args = Packed::default();
                push(&mut args, &nested(201));
                assert_eq!(args_repr(&args), Err(format!("argument 1: {}", too_deep())));
            }
        };
    }

    pub(crate) use tests;
}
