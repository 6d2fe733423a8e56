//! Arguments of a call, packed on the caller's thread.
//!
//! Every backend takes a call's arguments as MessagePack: the child reads
//! them as they are, the in-process backends build Python objects from
//! them. Packing on the caller's thread means a value that cannot cross
//! fails there, naming its argument, and nothing the caller lent is read
//! after the call was handed over.
//!
//! The serializer is this crate's own, on `rmp`'s encoding functions,
//! rather than rmp-serde's: that one writes an `i128` as 16 bytes of bin
//! (it would reach Python as `bytes`), and has no bound on nesting. Here
//! an integer past 64 bits is an error, as in the value table, nesting
//! stops at its limit, and the top level of `args` and `kwargs` is spread
//! into the call without a header of its own.

use std::fmt;

use rmp::encode;
use serde::ser::{self, Serialize};

use crate::value::{too_deep, MAX_DEPTH};

/// Positional or keyword arguments, as MessagePack.
///
/// Positional: `count` values, one after another. Keyword: `count` pairs,
/// each a str (the name) then the value. No array or map header goes
/// before them: the child's request and the in-process backends put their
/// own around them.
///
/// Values use nil, bool, int (any width, signed or unsigned), float 64,
/// str, bin (a serde byte string: Python `bytes`), array and map (keys of
/// any of these types).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Packed {
    pub bytes: Vec<u8>,
    pub count: usize,
    /// Keyword arguments' names, in order, as they were packed.
    pub names: Vec<String>,
}

impl Packed {
    /// Adds one argument: a value of any serde type.
    pub fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        let start = self.bytes.len();
        match value.serialize(Packer::new(&mut self.bytes, Top::Value)) {
            Ok(_) => {
                self.count += 1;
                Ok(())
            }
            Err(err) => {
                self.bytes.truncate(start);
                Err(err.0)
            }
        }
    }

    /// Adds one argument per element of a sequence (a tuple, array, `Vec`;
    /// `()` adds none).
    pub fn spread<T: Serialize + ?Sized>(&mut self, values: &T) -> Result<(), String> {
        self.extend(values, Top::Spread)
    }

    /// Adds one keyword argument: its name, then its value.
    pub fn push_named<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), String> {
        let start = self.bytes.len();
        write_str(&mut self.bytes, name);
        match value.serialize(Packer::new(&mut self.bytes, Top::Value)) {
            Ok(_) => {
                self.count += 1;
                self.names.push(name.to_owned());
                Ok(())
            }
            Err(err) => {
                self.bytes.truncate(start);
                Err(err.0)
            }
        }
    }

    /// Adds one keyword argument per entry of a map or field of a struct
    /// (`()` adds none). Names must be strings.
    pub fn spread_named<T: Serialize + ?Sized>(&mut self, values: &T) -> Result<(), String> {
        self.extend(values, Top::Named)
    }

    fn extend<T: Serialize + ?Sized>(&mut self, values: &T, top: Top) -> Result<(), String> {
        let (start, named) = (self.bytes.len(), self.names.len());
        let mut packer = Packer::new(&mut self.bytes, top);
        packer.names = Some(&mut self.names);
        match values.serialize(packer) {
            Ok(added) => {
                self.count += added;
                Ok(())
            }
            Err(err) => {
                self.bytes.truncate(start);
                self.names.truncate(named);
                Err(err.0)
            }
        }
    }
}

/// What the top of a value is packed as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Top {
    /// One value.
    Value,
    /// A sequence whose elements are arguments.
    Spread,
    /// A map or struct whose entries are keyword arguments.
    Named,
}

/// Why a value could not be packed.
#[derive(Debug)]
pub(crate) struct PackError(String);

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PackError {}

impl ser::Error for PackError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        PackError(msg.to_string())
    }
}

fn int_too_large(bits: u32) -> PackError {
    PackError(format!(
        "int of {bits} bits does not fit in a 64-bit integer (i64 or u64)"
    ))
}

// Writing to a `Vec` cannot fail; these keep the encoding functions'
// results out of every method below.
fn write_str(out: &mut Vec<u8>, text: &str) {
    let _ = encode::write_str(out, text);
}

fn write_uint(out: &mut Vec<u8>, value: u64) {
    let _ = encode::write_uint(out, value);
}

fn write_sint(out: &mut Vec<u8>, value: i64) {
    let _ = encode::write_sint(out, value);
}

/// Serializes one value as MessagePack into `out`. `Ok` is how many
/// arguments it added: 1 for a value, the elements or entries of a
/// spread top.
struct Packer<'b> {
    out: &'b mut Vec<u8>,
    depth: usize,
    top: Top,
    /// Where a spread of keyword arguments notes their names.
    names: Option<&'b mut Vec<String>>,
}

impl<'b> Packer<'b> {
    fn new(out: &'b mut Vec<u8>, top: Top) -> Self {
        Packer {
            out,
            depth: 0,
            top,
            names: None,
        }
    }

    /// Refuses a top-level value that `args` or `kwargs` cannot spread.
    fn scalar(&self, what: &str) -> Result<(), PackError> {
        match self.top {
            Top::Value => Ok(()),
            Top::Spread => Err(PackError(format!(
                "args takes a tuple, array or Vec (one argument per element), got {what}"
            ))),
            Top::Named => Err(PackError(format!(
                "kwargs takes a map or a struct (one keyword argument per entry), got {what}"
            ))),
        }
    }

    /// Opens a container of `len` items (`None`: counted as they come).
    fn open(self, len: Option<usize>, map: bool) -> Result<Compound<'b>, PackError> {
        if self.depth >= MAX_DEPTH {
            return Err(PackError(too_deep()));
        }
        let spread = self.top != Top::Value;
        let header = if spread {
            None
        } else {
            let at = self.out.len();
            match len {
                Some(len) => {
                    let len = u32::try_from(len)
                        .map_err(|_| PackError(format!("{len} items do not fit in a frame")))?;
                    let _ = if map {
                        encode::write_map_len(self.out, len)
                    } else {
                        encode::write_array_len(self.out, len)
                    };
                }
                None => {
                    // The 32-bit form, whose count is filled in at the end.
                    self.out.push(if map { 0xdf } else { 0xdd });
                    self.out.extend_from_slice(&[0; 4]);
                }
            }
            Some((at, len))
        };
        Ok(Compound {
            out: self.out,
            depth: self.depth,
            top: self.top,
            names: self.names,
            header,
            count: 0,
        })
    }

    /// `{variant: ...}`, as pythonize writes an enum's data-carrying variants.
    fn variant(self, variant: &str) -> Result<Packer<'b>, PackError> {
        self.scalar("an enum variant")?;
        if self.depth >= MAX_DEPTH {
            return Err(PackError(too_deep()));
        }
        let _ = encode::write_map_len(self.out, 1);
        write_str(self.out, variant);
        Ok(Packer {
            out: self.out,
            depth: self.depth + 1,
            top: Top::Value,
            names: None,
        })
    }
}

/// An array or map being written; at a spread top, its items are the
/// arguments themselves and it has no header.
struct Compound<'b> {
    out: &'b mut Vec<u8>,
    depth: usize,
    top: Top,
    names: Option<&'b mut Vec<String>>,
    /// Where the header is, and the length it declared.
    header: Option<(usize, Option<usize>)>,
    count: usize,
}

impl Compound<'_> {
    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PackError> {
        value.serialize(Packer {
            out: self.out,
            depth: self.depth + 1,
            top: Top::Value,
            names: None,
        })?;
        Ok(())
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), PackError> {
        let at = self.out.len();
        self.item(key)?;
        if self.top == Top::Named {
            let Ok((name, _)) = rmp::decode::read_str_from_slice(&self.out[at..]) else {
                return Err(PackError("keyword argument names must be strings".into()));
            };
            if let Some(names) = self.names.as_deref_mut() {
                names.push(name.to_owned());
            }
        } else if matches!(self.out[at], 0x80..=0x9f | 0xdc..=0xdf) {
            // A Python dict's keys must be hashable: no lists, no dicts.
            return Err(PackError(
                "a map key that is a sequence or a map, which no Python dict can hold".into(),
            ));
        }
        self.count += 1;
        Ok(())
    }

    fn end(self) -> Result<usize, PackError> {
        match self.header {
            None => Ok(self.count),
            Some((at, None)) => {
                let count = u32::try_from(self.count).map_err(|_| {
                    PackError(format!("{} items do not fit in a frame", self.count))
                })?;
                self.out[at + 1..at + 5].copy_from_slice(&count.to_be_bytes());
                Ok(1)
            }
            Some((_, Some(declared))) if declared != self.count => Err(PackError(format!(
                "a value declared {declared} items and gave {}",
                self.count
            ))),
            Some(_) => Ok(1),
        }
    }
}

impl<'b> ser::Serializer for Packer<'b> {
    type Ok = usize;
    type Error = PackError;
    type SerializeSeq = Compound<'b>;
    type SerializeTuple = Compound<'b>;
    type SerializeTupleStruct = Compound<'b>;
    type SerializeTupleVariant = Compound<'b>;
    type SerializeMap = Compound<'b>;
    type SerializeStruct = Compound<'b>;
    type SerializeStructVariant = Compound<'b>;

    fn serialize_bool(self, v: bool) -> Result<usize, PackError> {
        self.scalar("a bool")?;
        let _ = encode::write_bool(self.out, v);
        Ok(1)
    }

    fn serialize_i8(self, v: i8) -> Result<usize, PackError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<usize, PackError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<usize, PackError> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<usize, PackError> {
        self.scalar("a number")?;
        write_sint(self.out, v);
        Ok(1)
    }

    fn serialize_i128(self, v: i128) -> Result<usize, PackError> {
        if let Ok(v) = i64::try_from(v) {
            return self.serialize_i64(v);
        }
        if let Ok(v) = u64::try_from(v) {
            return self.serialize_u64(v);
        }
        Err(int_too_large(128 - v.unsigned_abs().leading_zeros()))
    }

    fn serialize_u8(self, v: u8) -> Result<usize, PackError> {
        self.serialize_u64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<usize, PackError> {
        self.serialize_u64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<usize, PackError> {
        self.serialize_u64(v.into())
    }

    fn serialize_u64(self, v: u64) -> Result<usize, PackError> {
        self.scalar("a number")?;
        write_uint(self.out, v);
        Ok(1)
    }

    fn serialize_u128(self, v: u128) -> Result<usize, PackError> {
        match u64::try_from(v) {
            Ok(v) => self.serialize_u64(v),
            Err(_) => Err(int_too_large(128 - v.leading_zeros())),
        }
    }

    fn serialize_f32(self, v: f32) -> Result<usize, PackError> {
        self.serialize_f64(v.into())
    }

    fn serialize_f64(self, v: f64) -> Result<usize, PackError> {
        self.scalar("a number")?;
        let _ = encode::write_f64(self.out, v);
        Ok(1)
    }

    fn serialize_char(self, v: char) -> Result<usize, PackError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<usize, PackError> {
        self.scalar("a string")?;
        write_str(self.out, v);
        Ok(1)
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<usize, PackError> {
        self.scalar("bytes")?;
        let len = u32::try_from(v.len())
            .map_err(|_| PackError(format!("{} bytes do not fit in a frame", v.len())))?;
        let _ = encode::write_bin_len(self.out, len);
        self.out.extend_from_slice(v);
        Ok(1)
    }

    fn serialize_none(self) -> Result<usize, PackError> {
        self.scalar("None")?;
        let _ = encode::write_nil(self.out);
        Ok(1)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<usize, PackError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<usize, PackError> {
        if self.top != Top::Value {
            // `()`: no arguments at all.
            return Ok(0);
        }
        let _ = encode::write_nil(self.out);
        Ok(1)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<usize, PackError> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<usize, PackError> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<usize, PackError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<usize, PackError> {
        value.serialize(self.variant(variant)?)?;
        Ok(1)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'b>, PackError> {
        if self.top == Top::Named {
            self.scalar("a sequence")?;
        }
        self.open(len, false)
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'b>, PackError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'b>, PackError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'b>, PackError> {
        self.variant(variant)?.open(Some(len), false)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'b>, PackError> {
        if self.top == Top::Spread {
            self.scalar("a map")?;
        }
        self.open(len, true)
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Compound<'b>, PackError> {
        if self.top == Top::Spread {
            self.scalar("a struct")?;
        }
        // serde's derive counts skipped fields out of `len`; a length that
        // is wrong anyway fails at `end`.
        self.open(Some(len), true)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'b>, PackError> {
        self.variant(variant)?.open(Some(len), true)
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = usize;
    type Error = PackError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PackError> {
        self.item(value)?;
        self.count += 1;
        Ok(())
    }

    fn end(self) -> Result<usize, PackError> {
        Compound::end(self)
    }
}

/// Tuples of every kind are sequences here.
macro_rules! as_seq {
    ($($kind:ident)*) => {
        $(
            impl ser::$kind for Compound<'_> {
                type Ok = usize;
                type Error = PackError;

                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    value: &T,
                ) -> Result<(), PackError> {
                    ser::SerializeSeq::serialize_element(self, value)
                }

                fn end(self) -> Result<usize, PackError> {
                    Compound::end(self)
                }
            }
        )*
    };
}

as_seq!(SerializeTupleStruct SerializeTupleVariant);

impl ser::SerializeTuple for Compound<'_> {
    type Ok = usize;
    type Error = PackError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PackError> {
        ser::SerializeSeq::serialize_element(self, value)
    }

    fn end(self) -> Result<usize, PackError> {
        Compound::end(self)
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = usize;
    type Error = PackError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), PackError> {
        self.key(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), PackError> {
        self.item(value)
    }

    fn end(self) -> Result<usize, PackError> {
        Compound::end(self)
    }
}

/// Structs of every kind are maps here.
macro_rules! as_map {
    ($($kind:ident)*) => {
        $(
            impl ser::$kind for Compound<'_> {
                type Ok = usize;
                type Error = PackError;

                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    key: &'static str,
                    value: &T,
                ) -> Result<(), PackError> {
                    self.key(key)?;
                    self.item(value)
                }

                fn end(self) -> Result<usize, PackError> {
                    Compound::end(self)
                }
            }
        )*
    };
}

as_map!(SerializeStruct SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use serde_bytes::ByteBuf;
    use serde_json::json;

    use super::*;

    /// The packed values, read back one by one as `T`s.
    fn read<T: serde::de::DeserializeOwned>(packed: &Packed) -> Vec<T> {
        let mut rest = &packed.bytes[..];
        let values = (0..packed.count)
            .map(|_| T::deserialize(&mut rmp_serde::Deserializer::new(&mut rest)).unwrap())
            .collect();
        assert!(rest.is_empty(), "bytes left after the values");
        values
    }

    #[test]
    fn arguments_are_values_one_after_another() {
        let mut args = Packed::default();
        args.push(&1).unwrap();
        args.spread(&("two", [3.5], json!({"k": null}))).unwrap();
        args.spread(&vec![true]).unwrap();
        args.spread(&()).unwrap();
        assert_eq!(
            read::<serde_json::Value>(&args),
            [
                json!(1),
                json!("two"),
                json!([3.5]),
                json!({"k": null}),
                json!(true)
            ]
        );
    }

    #[test]
    fn keyword_arguments_are_names_then_values() {
        #[derive(Serialize)]
        struct Options {
            depth: u8,
            #[serde(skip_serializing_if = "Option::is_none")]
            skipped: Option<u8>,
            label: &'static str,
        }
        let mut kwargs = Packed::default();
        kwargs.push_named("first", &[1, 2]).unwrap();
        kwargs
            .spread_named(&Options {
                depth: 3,
                skipped: None,
                label: "x",
            })
            .unwrap();
        kwargs.spread_named(&BTreeMap::from([("m", -1)])).unwrap();
        assert_eq!(kwargs.count, 4);
        assert_eq!(kwargs.names, ["first", "depth", "label", "m"]);
        let pairs = Packed {
            bytes: kwargs.bytes.clone(),
            count: kwargs.count * 2,
            ..Packed::default()
        };
        let values = read::<serde_json::Value>(&pairs);
        assert_eq!(
            values,
            [
                json!("first"),
                json!([1, 2]),
                json!("depth"),
                json!(3),
                json!("label"),
                json!("x"),
                json!("m"),
                json!(-1)
            ]
        );
    }

    #[test]
    fn bytes_are_bin_and_enums_look_as_pythonize_makes_them() {
        #[derive(Serialize)]
        enum Shape {
            Dot,
            Circle(f64),
            Line(i32, i32),
            Box { w: u8 },
        }
        let mut args = Packed::default();
        args.push(&ByteBuf::from(vec![0, 255])).unwrap();
        for shape in [
            Shape::Dot,
            Shape::Circle(1.5),
            Shape::Line(1, 2),
            Shape::Box { w: 4 },
        ] {
            args.push(&shape).unwrap();
        }
        assert_eq!(&args.bytes[..4], b"\xc4\x02\x00\xff");
        let mut de = rmp_serde::Deserializer::from_read_ref(&args.bytes[4..]);
        let shapes: Vec<serde_json::Value> = (0..4)
            .map(|_| serde_json::Value::deserialize(&mut de).unwrap())
            .collect();
        assert_eq!(
            shapes,
            [
                json!("Dot"),
                json!({"Circle": 1.5}),
                json!({"Line": [1, 2]}),
                json!({"Box": {"w": 4}})
            ]
        );
    }

    #[test]
    fn wide_ints_fit_or_fail_and_nothing_is_left_behind() {
        let mut args = Packed::default();
        args.spread(&(i128::from(i64::MIN), u128::from(u64::MAX)))
            .unwrap();
        assert_eq!(
            read::<i128>(&args),
            [i128::from(i64::MIN), i128::from(u64::MAX)]
        );
        let before = args.clone();
        let err = args.spread(&(1, u128::MAX)).unwrap_err();
        assert!(err.contains("128 bits"), "{err}");
        let err = args.push(&-(1i128 << 70)).unwrap_err();
        assert!(err.contains("71 bits"), "{err}");
        assert_eq!(args, before);
    }

    #[test]
    fn what_cannot_be_spread_is_refused() {
        let mut packed = Packed::default();
        for err in [
            packed.spread(&5).unwrap_err(),
            packed.spread(&BTreeMap::from([("a", 1)])).unwrap_err(),
            packed.spread(&None::<u8>).unwrap_err(),
        ] {
            assert!(err.starts_with("args takes a tuple, array or Vec"), "{err}");
        }
        for err in [
            packed.spread_named(&5).unwrap_err(),
            packed.spread_named(&[1, 2]).unwrap_err(),
        ] {
            assert!(err.starts_with("kwargs takes a map or a struct"), "{err}");
        }
        let err = packed.spread_named(&BTreeMap::from([(1, 2)])).unwrap_err();
        assert_eq!(err, "keyword argument names must be strings");
        assert_eq!(packed, Packed::default());
        // Python's dicts take no list or dict as a key, at any depth.
        let err = packed
            .push(&vec![BTreeMap::from([((1, 2), "a")])])
            .unwrap_err();
        assert!(
            err.starts_with("a map key that is a sequence or a map"),
            "{err}"
        );
        packed.push(&BTreeMap::from([((), 1)])).unwrap();
        packed
            .push(&BTreeMap::from([(serde_bytes::ByteBuf::from(vec![1]), 1)]))
            .unwrap();
    }

    #[test]
    fn nesting_stops_at_the_limit_on_any_stack() {
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        let mut packed = Packed::default();
        packed.push(&deep).unwrap();
        let deeper = json!([deep]);
        assert_eq!(packed.push(&deeper).unwrap_err(), too_deep());
        // A sequence of unknown length gets its count filled in.
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq((0..3).filter(|_| true))
            }
        }
        let mut packed = Packed::default();
        packed.push(&Unsized).unwrap();
        assert_eq!(read::<Vec<u8>>(&packed), [vec![0, 1, 2]]);
    }
}

#[cfg(test)]
mod speed {
    #[test]
    #[ignore = "a measurement: cargo test --release --lib pack_speed -- --ignored --nocapture"]
    fn pack_speed() {
        let list: Vec<i64> = (0..100_000).collect();
        let mut best = std::time::Duration::MAX;
        for _ in 0..50 {
            let start = std::time::Instant::now();
            let mut packed = super::Packed::default();
            packed.push(&list).unwrap();
            best = best.min(start.elapsed());
            assert!(packed.bytes.len() > 100_000);
        }
        println!("pack 100 000 i64: {best:?}");
    }
}
