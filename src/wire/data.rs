//! A `data` reply's value, read into the caller's type.
//!
//! The child packed the value by the value table, bytes as bin. It is read
//! here by the same reader as the in-process backends' Python objects
//! (`value::from_python`), so a result that does not fit its type fails
//! with the same message and path on every backend. rmp-serde's own
//! deserializer would name the MessagePack marker it found instead
//! (`wrong msgpack marker FixStr(3)`), where serde's visitors say
//! `invalid type: string "x", expected u32`.

use std::convert::Infallible;

use serde::de::DeserializeOwned;

use super::decode::split_value;
use crate::error::PyRunnerError;
use crate::value::from_python::{read, ReadError, ReadErrorKind, ReadRow, Row, TableObject};

/// Reads the MessagePack of a `data` reply as a `T`. The bytes are one
/// value that the frame's reader checked whole (`Items::next_raw`), so a
/// value inside always splits off; bytes that were not checked still give
/// an error or a short read, never a panic.
pub(crate) fn read_data<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PyRunnerError> {
    read(Packed(bytes), &Packed(&[])).map_err(|err| match err.into_kind() {
        ReadErrorKind::Python(never) => match never {},
        ReadErrorKind::Conversion(why) => PyRunnerError::Conversion(why),
        ReadErrorKind::Mismatch(mismatch) => PyRunnerError::Conversion(mismatch.to_string()),
    })
}

/// One MessagePack value (checked when its frame was read), as the table's
/// reader sees an object.
#[derive(Clone, Copy)]
struct Packed<'a>(&'a [u8]);

type Failure = ReadError<Infallible>;

fn bad(why: String) -> Failure {
    ReadError::conversion(format!("a data reply's value: {why}"))
}

/// The values of an array, or the keys and values of a map, one after
/// another in `rest`.
struct Values<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Values<'a> {
    type Item = Packed<'a>;

    fn next(&mut self) -> Option<Packed<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Checked with its frame: every value splits. A number's or nil's
        // length is in its marker; only the rest need a walk.
        let size = match *self.rest.first()? {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => Some(1),
            0xcc | 0xd0 => Some(2),
            0xcd | 0xd1 => Some(3),
            0xca | 0xce | 0xd2 => Some(5),
            0xcb | 0xcf | 0xd3 => Some(9),
            _ => None,
        };
        let (value, rest) = match size {
            Some(size) if size <= self.rest.len() => self.rest.split_at(size),
            _ => split_value(self.rest).ok()?,
        };
        self.rest = rest;
        Some(Packed(value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// A map's entries.
struct Entries<'a>(Values<'a>);

impl<'a> Iterator for Entries<'a> {
    type Item = (Packed<'a>, Packed<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.0.next()?;
        let value = self.0.next()?;
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.0.left / 2;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Entries<'_> {}

/// The count in 1, 2 or 4 big-endian bytes after a marker, and what follows.
fn count(data: &[u8], width: usize) -> Result<(usize, &[u8]), Failure> {
    if data.len() < width {
        return Err(bad("cut short".into()));
    }
    let (size, rest) = data.split_at(width);
    let count = size.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
    Ok((count, rest))
}

fn number<const N: usize>(data: &[u8]) -> Result<[u8; N], Failure> {
    data.get(..N)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| bad("cut short".into()))
}

impl<'a> Packed<'a> {
    fn read_row(&self) -> Result<Row<'a, Packed<'a>>, Failure> {
        let (&marker, rest) = self.0.split_first().ok_or_else(|| bad("empty".into()))?;
        let text = |size: usize, rest: &'a [u8]| -> Result<Row<'a, Packed<'a>>, Failure> {
            let bytes = rest.get(..size).ok_or_else(|| bad("cut short".into()))?;
            std::str::from_utf8(bytes)
                .map(Row::Str)
                .map_err(|err| bad(err.to_string()))
        };
        let items = |(count, rest): (usize, &'a [u8])| Row::Items(Values { rest, left: count });
        let entries = |(count, rest): (usize, &'a [u8])| {
            Row::Entries(Entries(Values {
                rest,
                left: count.saturating_mul(2),
            }))
        };
        Ok(match marker {
            0x00..=0x7f => Row::Int(i64::from(marker)),
            0xe0..=0xff => Row::Int(i64::from(marker as i8)),
            0x80..=0x8f => entries((usize::from(marker & 0x0f), rest)),
            0x90..=0x9f => items((usize::from(marker & 0x0f), rest)),
            0xa0..=0xbf => text(usize::from(marker & 0x1f), rest)?,
            0xc0 => Row::Null,
            0xc2 => Row::Bool(false),
            0xc3 => Row::Bool(true),
            0xc4..=0xc6 => {
                let (size, rest) = count(rest, 1 << (marker - 0xc4))?;
                Row::Bytes(rest.get(..size).ok_or_else(|| bad("cut short".into()))?)
            }
            0xca => Row::Float(f64::from(f32::from_be_bytes(number(rest)?))),
            0xcb => Row::Float(f64::from_be_bytes(number(rest)?)),
            0xcc => Row::Int(i64::from(
                rest.first()
                    .copied()
                    .ok_or_else(|| bad("cut short".into()))?,
            )),
            0xcd => Row::Int(i64::from(u16::from_be_bytes(number(rest)?))),
            0xce => Row::Int(i64::from(u32::from_be_bytes(number(rest)?))),
            0xcf => {
                let value = u64::from_be_bytes(number(rest)?);
                i64::try_from(value).map_or(Row::UInt(value), Row::Int)
            }
            0xd0 => Row::Int(i64::from(i8::from_be_bytes(number(rest)?))),
            0xd1 => Row::Int(i64::from(i16::from_be_bytes(number(rest)?))),
            0xd2 => Row::Int(i64::from(i32::from_be_bytes(number(rest)?))),
            0xd3 => Row::Int(i64::from_be_bytes(number(rest)?)),
            0xd9..=0xdb => {
                let (size, rest) = count(rest, 1 << (marker - 0xd9))?;
                text(size, rest)?
            }
            0xdc | 0xdd => items(count(rest, 2 << (marker - 0xdc))?),
            0xde | 0xdf => entries(count(rest, 2 << (marker - 0xde))?),
            other => return Err(bad(format!("marker {other:#04x} is no value of the table"))),
        })
    }
}

impl<'a> TableObject for Packed<'a> {
    type Exception = Infallible;
    type Items = Values<'a>;
    type Entries = Entries<'a>;

    fn row<R: ReadRow<Self>>(&self, read: R) -> Result<Result<R::Value, Failure>, R> {
        Ok(self.read_row().and_then(|row| read.read(row)))
    }

    fn key_text<R>(&self, read: impl FnOnce(&str) -> R) -> Result<R, Failure> {
        match self.read_row()? {
            Row::Str(text) => Ok(read(text)),
            _ => Err(bad("a map key that is not a str".into())),
        }
    }

    /// Every value has a row: the child applied the rest of the table.
    fn table_form(&self, _: &Self) -> Result<Self, Failure> {
        Err(bad("a value with no row of the table".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_bytes::ByteBuf;
    use serde_json::json;

    use super::*;

    fn packed(value: &impl serde::Serialize) -> Vec<u8> {
        rmp_serde::to_vec_named(value).unwrap()
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Person {
        name: String,
        age: u32,
        score: Option<f64>,
    }

    #[test]
    fn reads_what_the_table_packs_into_serde_types() {
        let bytes = packed(&json!([{"name": "ann", "age": 31, "score": null}]));
        assert_eq!(
            read_data::<Vec<Person>>(&bytes).unwrap(),
            [Person {
                name: "ann".into(),
                age: 31,
                score: None
            }]
        );
        let bytes = packed(&(ByteBuf::from(vec![0, 255]), u64::MAX, -5i8, 2.5f32, "s"));
        let read: (ByteBuf, u64, i64, f64, String) = read_data(&bytes).unwrap();
        assert_eq!(
            read,
            (ByteBuf::from(vec![0, 255]), u64::MAX, -5, 2.5, "s".into())
        );
        // NaN reads as None; bin into Vec<u8> as its bytes.
        let bytes = packed(&(f64::NAN, ByteBuf::from(vec![1, 2])));
        let read: (Option<f64>, Vec<u8>) = read_data(&bytes).unwrap();
        assert_eq!(read, (None, vec![1, 2]));
        let bytes = packed(&BTreeMap::from([("k", [1, 2])]));
        let read: BTreeMap<String, Vec<u8>> = read_data(&bytes).unwrap();
        assert_eq!(read["k"], [1, 2]);
    }

    #[test]
    fn a_mismatch_names_where_as_in_process() {
        let bytes = packed(
            &json!([{"name": "a", "age": 1, "score": null}, {"name": "b", "age": "old", "score": null}]),
        );
        let err = read_data::<Vec<Person>>(&bytes).unwrap_err();
        assert_eq!(
            err,
            PyRunnerError::Conversion("[1].age: invalid type: string \"old\", expected u32".into())
        );
        let err = read_data::<u8>(&packed(&300)).unwrap_err();
        assert_eq!(
            err,
            PyRunnerError::Conversion("invalid value: integer `300`, expected u8".into())
        );
    }

    #[test]
    fn values_cut_short_never_panic() {
        let bytes = packed(&json!({"k": ["x", 1.5, [true]], "l": "long text"}));
        for end in 0..bytes.len() {
            let _ = read_data::<serde_json::Value>(&bytes[..end]);
            let _ = read_data::<BTreeMap<String, serde::de::IgnoredAny>>(&bytes[..end]);
            let _ = read_data::<(Vec<u8>, String)>(&bytes[..end]);
        }
    }
}

#[cfg(test)]
mod speed {
    #[test]
    #[ignore = "a measurement: cargo test --release --lib data_speed -- --ignored --nocapture"]
    fn data_speed() {
        let list: Vec<i64> = (0..100_000).collect();
        let bytes = rmp_serde::to_vec(&list).unwrap();
        let best = |f: &dyn Fn()| {
            (0..30)
                .map(|_| {
                    let start = std::time::Instant::now();
                    f();
                    start.elapsed()
                })
                .min()
                .unwrap()
        };
        let typed = best(&|| {
            let read: Vec<i64> = super::read_data(&bytes).unwrap();
            assert_eq!(read.len(), 100_000);
        });
        let mut frame = vec![0x93, 0x01, 0xa4];
        frame.extend_from_slice(b"data");
        frame.extend_from_slice(&bytes);
        let value = best(&|| {
            let value = crate::wire::decode::decode_items(&frame, 300).unwrap();
            assert_eq!(value.len(), 3);
        });
        println!("100 000 ints: read_data into Vec<i64> {typed:?}, into Value {value:?}");
    }
}
