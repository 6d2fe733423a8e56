//! Reads the MessagePack of the child's frames straight into
//! `serde_json::Value`.
//!
//! Requests are written with `rmp-serde`. Replies are read here instead:
//! serde's self-describing path (`deserialize_any` into `Value`) spends about
//! 35 ns on each item of a large list, against about 6 ns for the same bytes
//! read as `Vec<i64>`, and a reply's shape is not known in advance. This
//! reader gives the same values as that path and refuses what it refused:
//! extension types, invalid UTF-8, map keys that are not strings, and
//! nesting past the given depth. It refuses bytes after the value too, and
//! binary data as a map key (rmp-serde took a bin that was valid UTF-8 as
//! one). Binary data elsewhere, which serde's `Value` has no form for, is
//! read as the value table reads bytes, an array of ints 0..=255; a typed
//! call's value is not read here at all, only checked and handed on whole
//! ([`Items::next_raw`]).
//!
//! A frame's own array is read an item at a time ([`Items`]), so that a
//! message is taken from it with no vector of its items and no copy of a
//! status; `decode_items`, which reads them all into one, is kept for the
//! tests, as what that reader must agree with.

use serde_json::{Map, Number, Value};

/// One item of a frame's array. A string is left in the frame: a status
/// is only compared, and needs no allocation of its own.
#[derive(Debug, PartialEq)]
pub(crate) enum Item<'a> {
    Text(&'a str),
    Other(Value),
}

impl Item<'_> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::Text(text) => Some(text),
            Item::Other(_) => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Item::Other(value) => value.as_u64(),
            Item::Text(_) => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Item::Other(value) => value.as_bool(),
            Item::Text(_) => None,
        }
    }

    pub fn into_string(self) -> Option<String> {
        self.as_str().map(str::to_owned)
    }

    pub fn into_value(self) -> Value {
        match self {
            Item::Text(text) => Value::String(text.to_owned()),
            Item::Other(value) => value,
        }
    }
}

/// The items of the array that fills a frame, read one at a time, each
/// where it is wanted: no vector for them, and no copy of the strings
/// that are only looked at. What it gives, and refuses, is what
/// `decode_items` does, once [`Items::finish`] has read the rest.
pub(crate) struct Items<'a> {
    reader: Reader<'a>,
    /// Items not read yet.
    left: usize,
}

impl<'a> Items<'a> {
    /// Reads the array's header. At most `max_depth` containers nest, the
    /// frame's own array included.
    pub fn open(frame: &'a [u8], max_depth: usize) -> Result<Self, String> {
        let mut reader = Reader {
            data: frame,
            pos: 0,
            depth_left: max_depth,
            room: frame.len(),
        };
        let count = match frame.first() {
            Some(&marker @ 0x90..=0x9f) => {
                reader.pos = 1;
                usize::from(marker & 0x0f)
            }
            Some(&marker @ (0xdc | 0xdd)) => {
                reader.pos = 1;
                reader.size(marker - 0xdc + 1)?
            }
            Some(0xc4..=0xc6) => return Err(NOT_AN_ARRAY_BUT_BIN.into()),
            _ => {
                let other = reader.value()?;
                return Err(format!("a frame holds {}, not an array", kind(&other)));
            }
        };
        reader.open(count)?;
        // The room the items would have been given in a vector.
        reader.room -= count.min(reader.room);
        Ok(Items {
            reader,
            left: count,
        })
    }

    /// The next item, `None` past the last.
    #[inline(always)]
    pub fn next(&mut self) -> Result<Option<Item<'a>>, String> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.reader.item().map(Some)
    }

    /// The bytes of the next item, checked as [`next`](Self::next) checks
    /// them but not read into a value; `None` past the last.
    pub fn next_raw(&mut self) -> Result<Option<&'a [u8]>, String> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let start = self.reader.pos;
        self.reader.skip()?;
        Ok(Some(&self.reader.data[start..self.reader.pos]))
    }

    /// Reads the items left, and checks that nothing follows the array.
    pub fn finish(mut self) -> Result<(), String> {
        while self.left > 0 {
            self.left -= 1;
            self.reader.value()?;
        }
        match self.reader.data.len() - self.reader.pos {
            0 => Ok(()),
            extra => Err(format!("{extra} bytes after the value")),
        }
    }
}

/// The items of the array that fills `frame`, or why the bytes are not one.
/// At most `max_depth` containers nest, the frame's own array included.
#[cfg(test)]
pub(crate) fn decode_items(frame: &[u8], max_depth: usize) -> Result<Vec<Value>, String> {
    let mut reader = Reader {
        data: frame,
        pos: 0,
        depth_left: max_depth,
        room: frame.len(),
    };
    if let Some(0xc4..=0xc6) = frame.first() {
        return Err(NOT_AN_ARRAY_BUT_BIN.into());
    }
    let items = match reader.value()? {
        Value::Array(items) => items,
        other => return Err(format!("a frame holds {}, not an array", kind(&other))),
    };
    match frame.len() - reader.pos {
        0 => Ok(items),
        extra => Err(format!("{extra} bytes after the value")),
    }
}

/// The first value in `data`, checked as [`Items::next_raw`] checks one,
/// and what follows it.
pub(crate) fn split_value(data: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let mut reader = Reader {
        data,
        pos: 0,
        depth_left: crate::value::MAX_DEPTH + 2,
        room: data.len(),
    };
    reader.skip()?;
    Ok(data.split_at(reader.pos))
}

/// Bin reads as an array of ints, but a frame is an array of items.
const NOT_AN_ARRAY_BUT_BIN: &str = "a frame holds binary data, not an array";

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// How many more containers may open inside the current one.
    depth_left: usize,
    /// How many more items may be reserved ahead. Each item takes a byte
    /// at least, so a frame's containers hold no more items than it has
    /// bytes: counts that claim more are not given room before their items
    /// are read.
    room: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        let rest = &self.data[self.pos..];
        if rest.len() < count {
            return Err(format!(
                "the frame ends {} bytes short of its value",
                count - rest.len()
            ));
        }
        self.pos += count;
        Ok(&rest[..count])
    }

    fn array_of<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        Ok(bytes.try_into().expect("take gives N bytes"))
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.array_of::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array_of()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array_of()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array_of()?))
    }

    /// One value. Inlined into the loops over items: as a call, returning
    /// the value cost about 20 ns an item in copies of it that the processor
    /// could not forward from the stores that had just built it.
    #[inline(always)]
    fn value(&mut self) -> Result<Value, String> {
        let marker = self.byte()?;
        Ok(match marker {
            0x00..=0x7f => Value::from(marker),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f))?,
            0x90..=0x9f => self.array(usize::from(marker & 0x0f))?,
            0xa0..=0xbf => Value::String(self.text(usize::from(marker & 0x1f))?),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xca => float(f64::from(f32::from_bits(self.u32()?))),
            0xcb => float(f64::from_bits(self.u64()?)),
            0xcc => Value::from(self.byte()?),
            0xcd => Value::from(self.u16()?),
            0xce => Value::from(self.u32()?),
            0xcf => Value::from(self.u64()?),
            0xd0 => Value::from(self.byte()? as i8),
            0xd1 => Value::from(self.u16()? as i16),
            0xd2 => Value::from(self.u32()? as i32),
            0xd3 => Value::from(self.u64()? as i64),
            0xd9..=0xdb => {
                let size = self.size(marker - 0xd9)?;
                Value::String(self.text(size)?)
            }
            0xdc | 0xdd => {
                let count = self.size(marker - 0xdc + 1)?;
                self.array(count)?
            }
            0xde | 0xdf => {
                let count = self.size(marker - 0xde + 1)?;
                self.map(count)?
            }
            0xc4..=0xc6 => {
                let size = self.size(marker - 0xc4)?;
                self.bytes(size)?
            }
            0xc7..=0xc9 | 0xd4..=0xd8 => {
                return Err(format!("an extension type (marker {marker:#04x})"))
            }
            0xc1 => return Err("the reserved marker 0xc1".into()),
            0xe0..=0xff => Value::from(marker as i8),
        })
    }

    /// Passes over one value, checking it as [`value`](Self::value) does,
    /// without building it.
    fn skip(&mut self) -> Result<(), String> {
        let marker = self.byte()?;
        match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => {}
            0x80..=0x8f => self.skip_map(usize::from(marker & 0x0f))?,
            0x90..=0x9f => self.skip_array(usize::from(marker & 0x0f))?,
            0xa0..=0xbf => {
                self.str_of(usize::from(marker & 0x1f))?;
            }
            0xca | 0xce | 0xd2 => {
                self.take(4)?;
            }
            0xcb | 0xcf | 0xd3 => {
                self.take(8)?;
            }
            0xcc | 0xd0 => {
                self.take(1)?;
            }
            0xcd | 0xd1 => {
                self.take(2)?;
            }
            0xd9..=0xdb => {
                let size = self.size(marker - 0xd9)?;
                self.str_of(size)?;
            }
            0xdc | 0xdd => {
                let count = self.size(marker - 0xdc + 1)?;
                self.skip_array(count)?
            }
            0xde | 0xdf => {
                let count = self.size(marker - 0xde + 1)?;
                self.skip_map(count)?
            }
            0xc4..=0xc6 => {
                let size = self.size(marker - 0xc4)?;
                self.take(size)?;
            }
            0xc7..=0xc9 | 0xd4..=0xd8 => {
                return Err(format!("an extension type (marker {marker:#04x})"))
            }
            0xc1 => return Err("the reserved marker 0xc1".into()),
        }
        Ok(())
    }

    fn skip_array(&mut self, count: usize) -> Result<(), String> {
        self.open(count)?;
        for _ in 0..count {
            self.skip()?;
        }
        self.depth_left += 1;
        Ok(())
    }

    fn skip_map(&mut self, count: usize) -> Result<(), String> {
        self.open(count.saturating_mul(2))?;
        for _ in 0..count {
            self.key()?;
            self.skip()?;
        }
        self.depth_left += 1;
        Ok(())
    }

    /// Bin, as the value table reads bytes: an array of ints 0..=255.
    fn bytes(&mut self, size: usize) -> Result<Value, String> {
        let bytes = self.take(size)?;
        let mut items = self.reserve(size);
        items.extend(bytes.iter().map(|&byte| Value::from(byte)));
        Ok(Value::Array(items))
    }

    /// An item of the frame's own array: a string stays in the frame.
    #[inline(always)]
    fn item(&mut self) -> Result<Item<'a>, String> {
        let size = match self.data.get(self.pos) {
            Some(&marker @ 0xa0..=0xbf) => {
                self.pos += 1;
                usize::from(marker & 0x1f)
            }
            Some(&marker @ 0xd9..=0xdb) => {
                self.pos += 1;
                self.size(marker - 0xd9)?
            }
            _ => return self.value().map(Item::Other),
        };
        self.str_of(size).map(Item::Text)
    }

    /// A length that follows its marker in 1, 2 or 4 bytes (`width` 0, 1, 2).
    fn size(&mut self, width: u8) -> Result<usize, String> {
        Ok(match width {
            0 => usize::from(self.byte()?),
            1 => usize::from(self.u16()?),
            _ => self.u32()? as usize,
        })
    }

    fn text(&mut self, size: usize) -> Result<String, String> {
        self.str_of(size).map(str::to_owned)
    }

    /// The next `size` bytes, which must be UTF-8.
    fn str_of(&mut self, size: usize) -> Result<&'a str, String> {
        let bytes = self.take(size)?;
        std::str::from_utf8(bytes).map_err(|err| format!("a string that is not UTF-8: {err}"))
    }

    /// Enters a container whose items take at least `count` bytes.
    fn open(&mut self, count: usize) -> Result<(), String> {
        if self.depth_left == 0 {
            return Err("values nest deeper than the limit".into());
        }
        let rest = self.data.len() - self.pos;
        if count > rest {
            return Err(format!(
                "a container of {count} items in the {rest} bytes left of the frame"
            ));
        }
        self.depth_left -= 1;
        Ok(())
    }

    /// Room for up to `count` items, within what the frame can hold.
    fn reserve<T>(&mut self, count: usize) -> Vec<T> {
        let granted = count.min(self.room);
        self.room -= granted;
        Vec::with_capacity(granted)
    }

    fn array(&mut self, count: usize) -> Result<Value, String> {
        self.open(count)?;
        let mut items = self.reserve(count);
        for _ in 0..count {
            items.push(self.value()?);
        }
        self.depth_left += 1;
        Ok(Value::Array(items))
    }

    fn map(&mut self, count: usize) -> Result<Value, String> {
        // A key and its value take two bytes at least.
        self.open(count.saturating_mul(2))?;
        let mut entries = Map::new();
        for _ in 0..count {
            let key = self.key()?;
            let value = self.value()?;
            entries.insert(key, value);
        }
        self.depth_left += 1;
        Ok(Value::Object(entries))
    }

    fn key(&mut self) -> Result<String, String> {
        let size = match self.byte()? {
            marker @ 0xa0..=0xbf => usize::from(marker & 0x1f),
            marker @ 0xd9..=0xdb => self.size(marker - 0xd9)?,
            marker => {
                return Err(format!(
                    "a map key that is not a string (marker {marker:#04x})"
                ))
            }
        };
        self.text(size)
    }
}

/// A float as `Value` has it: NaN and the infinities have no JSON number.
fn float(number: f64) -> Value {
    Number::from_f64(number).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEPTH: usize = 10;

    /// What `rmp-serde` makes of the same bytes, for comparison.
    fn by_serde(frame: &[u8], depth: usize) -> Result<Vec<Value>, String> {
        let mut rest = frame;
        let mut decoder = rmp_serde::Deserializer::new(&mut rest);
        decoder.set_max_depth(depth + 1); // its count includes a level for the value itself
        let items: Vec<Value> =
            serde::Deserialize::deserialize(&mut decoder).map_err(|err| err.to_string())?;
        match rest.len() {
            0 => Ok(items),
            extra => Err(format!("{extra} bytes after the value")),
        }
    }

    fn agree(frame: &[u8]) {
        agree_at(frame, DEPTH);
    }

    fn agree_at(frame: &[u8], depth: usize) {
        let ours = decode_items(frame, depth);
        let theirs = by_serde(frame, depth);
        assert_eq!(
            ours.is_ok(),
            theirs.is_ok(),
            "{frame:02x?}: ours {ours:?}, rmp-serde {theirs:?}"
        );
        if let (Ok(ours), Ok(theirs)) = (&ours, theirs) {
            assert_eq!(*ours, theirs, "{frame:02x?}");
        }
        // Read one at a time, the items are the same, and so are the errors.
        assert_eq!(one_at_a_time(frame, depth), ours, "{frame:02x?}");
    }

    fn one_at_a_time(frame: &[u8], depth: usize) -> Result<Vec<Value>, String> {
        let mut items = Items::open(frame, depth)?;
        let mut values = Vec::new();
        while let Some(item) = items.next()? {
            values.push(item.into_value());
        }
        items.finish()?;
        Ok(values)
    }

    #[test]
    fn reads_what_rmp_serde_writes() {
        let values = [
            json!([1, "ok", null]),
            json!([
                0,
                127,
                128,
                255,
                256,
                65535,
                65536,
                4294967295u64,
                4294967296u64,
                u64::MAX
            ]),
            json!([
                -1,
                -32,
                -33,
                -128,
                -129,
                -32768,
                -32769,
                -2147483648i64,
                -2147483649i64,
                i64::MIN
            ]),
            json!([
                0.5,
                -1e300,
                1.0,
                true,
                false,
                "",
                "é",
                "x".repeat(31),
                "x".repeat(32)
            ]),
            json!(["x".repeat(300), "y".repeat(70_000)]),
            json!([{"a": 1, "b": [1, 2, {"c": null}]}, {}, []]),
            json!([(0..20).collect::<Vec<_>>(), (0..70_000).collect::<Vec<_>>()]),
            json!([(0..20)
                .map(|i| (i.to_string(), Value::from(i)))
                .collect::<serde_json::Map<String, Value>>()]),
        ];
        for value in values {
            let frame = rmp_serde::to_vec(&value).unwrap();
            assert_eq!(
                decode_items(&frame, DEPTH).unwrap(),
                *value.as_array().unwrap()
            );
            agree(&frame);
        }
    }

    #[test]
    fn agrees_with_rmp_serde_on_hand_made_bytes() {
        let frames: &[&[u8]] = &[
            b"\x91\xca\x7f\xc0\x00\x00",                 // f32 NaN: nil
            b"\x91\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00", // f64 infinity: nil
            b"\x91\xca\x3f\x80\x00\x00",                 // f32 1.0
            b"\x92\xd0\x05\xd1\x00\x05",                 // wide encodings of small ints
            b"\x92\xd2\x00\x00\x00\x05\xd3\x00\x00\x00\x00\x00\x00\x00\x05", // non-negative signed ints
            b"\x91\xd4\x01\x00",                                             // fixext 1
            b"\x91\xc7\x01\x05\x00",                                         // ext 8
            b"\x91\xc1",                                                     // reserved
            b"\x91\xa2\xff\xfe",                                             // invalid UTF-8
            b"\x91\x81\x01\x02",                                             // int key
            b"\x91\x81\xc0\x02",                                             // nil key
            b"\x91\x82\xa1a\x01\xa1a\x02", // repeated key: the last wins
            b"\x92\x01",                   // one item short
            b"\x91\xdd\xff\xff\xff\xff",   // a count the frame cannot hold
            b"\x91\xdf\xff\xff\xff\xff",
            b"\x91\xdb\xff\xff\xff\xff",
            b"\x91\xcd\x01", // cut inside a number
            b"\x01",         // not an array
            b"\x80",
            b"",
            b"\x91\x01\x02", // a byte after the value
        ];
        for frame in frames {
            agree(frame);
        }
    }

    #[test]
    fn items_leave_strings_in_the_frame() {
        let long = "x".repeat(40);
        let frame = rmp_serde::to_vec(&json!([7, "ok", long, [1]])).unwrap();
        let mut items = Items::open(&frame, DEPTH).unwrap();
        assert_eq!(items.next(), Ok(Some(Item::Other(json!(7)))));
        assert_eq!(items.next(), Ok(Some(Item::Text("ok"))));
        assert_eq!(items.next(), Ok(Some(Item::Text(&long))));
        // What is not read is checked all the same.
        assert_eq!(items.finish(), Ok(()));
        let frame = b"\x93\x01\x02\xc1";
        let mut items = Items::open(frame, DEPTH).unwrap();
        assert_eq!(items.next(), Ok(Some(Item::Other(json!(1)))));
        assert_eq!(items.finish(), Err("the reserved marker 0xc1".into()));
    }

    #[test]
    fn binary_data_reads_as_the_value_table_reads_bytes_but_never_as_a_map_key() {
        for (frame, expected) in [
            (
                &b"\x92\xc4\x03\x00\x7f\xff\xc4\x00"[..],
                json!([[0, 127, 255], []]),
            ),
            (b"\x91\xc5\x00\x02\x01\x02", json!([[1, 2]])),
            (b"\x91\xc6\x00\x00\x00\x01\x09", json!([[9]])),
            (b"\x91\x81\xa1k\xc4\x01\x07", json!([{"k": [7]}])),
        ] {
            assert_eq!(
                decode_items(frame, DEPTH),
                Ok(expected.as_array().unwrap().clone())
            );
            assert_eq!(one_at_a_time(frame, DEPTH), decode_items(frame, DEPTH));
        }
        // A frame is an array, which rmp-serde took bin for.
        assert_eq!(by_serde(b"\xc4\x01\x05", DEPTH), Ok(vec![json!(5)]));
        assert!(decode_items(b"\xc4\x01\x05", DEPTH).is_err());
        let frame = b"\x91\x82\xa1a\x01\xc4\x01b\x02";
        assert_eq!(by_serde(frame, DEPTH), Ok(vec![json!({"a": 1, "b": 2})]));
        assert!(decode_items(frame, DEPTH).is_err(), "{frame:02x?}");
        // Cut short, or claiming more than the frame holds.
        assert!(decode_items(b"\x91\xc4\x05\x01", DEPTH).is_err());
        assert!(decode_items(b"\x91\xc6\xff\xff\xff\xff", DEPTH).is_err());
    }

    #[test]
    fn a_raw_item_is_checked_and_left_whole() {
        let value = json!({"k": [1, 2.5, "s", null, true, {"deep": [[]]}]});
        let mut frame = rmp_serde::to_vec(&json!([7, "data"])).unwrap();
        frame[0] = 0x93;
        let packed = rmp_serde::to_vec(&value).unwrap();
        let mut bin = vec![0xc5, 0x01, 0x00];
        bin.extend(std::iter::repeat_n(0xab, 256));
        for raw in [packed.clone(), bin.clone()] {
            let mut whole = frame.clone();
            whole.extend_from_slice(&raw);
            let mut items = Items::open(&whole, DEPTH).unwrap();
            items.next().unwrap();
            items.next().unwrap();
            assert_eq!(items.next_raw(), Ok(Some(&raw[..])));
            assert_eq!(items.next_raw(), Ok(None));
            assert_eq!(items.finish(), Ok(()));
            // Every cut of it is refused, as reading it would refuse it.
            for end in frame.len()..whole.len() {
                let mut items = Items::open(&whole[..end], DEPTH).unwrap();
                items.next().unwrap();
                items.next().unwrap();
                assert!(items.next_raw().is_err(), "{end}");
            }
        }
        // What a value may not hold, a raw item may not either.
        for bad in [&b"\xc1"[..], b"\xd4\x01\x00", b"\xa1\xff", b"\x81\x01\x02"] {
            let mut whole = frame.clone();
            whole.extend_from_slice(bad);
            let mut items = Items::open(&whole, DEPTH).unwrap();
            items.next().unwrap();
            items.next().unwrap();
            assert!(items.next_raw().is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn counts_past_the_frame_get_no_room_ahead_of_their_items() {
        // Arrays nested 150 deep, each claiming nearly as many items as the
        // frame has bytes: room for them all at once would be gigabytes.
        let mut frame = vec![0x91];
        for _ in 0..150 {
            frame.push(0xdd);
            frame.extend_from_slice(&60_000u32.to_be_bytes());
        }
        frame.resize(70_000, 0xc1);
        let mut reader = Reader {
            data: &frame,
            pos: 0,
            depth_left: 200,
            room: frame.len(),
        };
        assert!(reader.value().is_err());
        assert!(reader.room <= frame.len());
        assert!(decode_items(&frame, 200).is_err());
    }

    #[test]
    fn nesting_stops_where_rmp_serde_stops() {
        // `depth` containers: the frame's array, then arrays or maps of one
        // item, then an empty one.
        for depth in 2..DEPTH + 3 {
            for (open, close) in [(0x91u8, 0x90u8), (0x81, 0x80)] {
                let mut frame = Vec::new();
                for level in 0..depth - 1 {
                    frame.push(if level == 0 { 0x91 } else { open });
                    if open == 0x81 && level > 0 {
                        frame.extend_from_slice(b"\xa1k");
                    }
                }
                frame.push(close);
                agree(&frame);
                assert_eq!(
                    decode_items(&frame, DEPTH).is_ok(),
                    depth <= DEPTH,
                    "depth {depth}"
                );
            }
        }
    }

    #[test]
    fn the_deepest_frame_allowed_decodes_on_a_small_stack() {
        // [{"k": {"k": ... {} ..., "z": 256}, "z": 256}]: the frame's array,
        // then maps that each hold a map and then a number.
        let depth = crate::value::MAX_DEPTH + 2;
        let mut frame = vec![0x91];
        for _ in 1..depth - 1 {
            frame.extend_from_slice(b"\x82\xa1k");
        }
        frame.push(0x80);
        for _ in 1..depth - 1 {
            frame.extend_from_slice(b"\xa1z\xcd\x01\x00");
        }
        agree_at(&frame, depth);
        // Less than the 2 MiB of a tokio worker's stack; an unoptimised
        // build takes several times the stack of an optimised one.
        let stack = if cfg!(debug_assertions) {
            1536 << 10
        } else {
            128 << 10
        };
        let decoded = std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || {
                let all = decode_items(&frame, depth).map(|items| items.len());
                assert_eq!(one_at_a_time(&frame, depth).map(|items| items.len()), all);
                all
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(decoded, Ok(1));
    }

    #[test]
    fn agrees_with_rmp_serde_on_every_cut_and_every_changed_byte() {
        let value = json!([
            7,
            "ok",
            {"k": [1, -2, 3.5, "s", null, true, [{"z": 70000, "y": -70000}]], "j": {"i": "x"}},
            300,
            -300
        ]);
        let frame = rmp_serde::to_vec(&value).unwrap();
        for end in 0..frame.len() {
            agree(&frame[..end]);
        }
        for at in 0..frame.len() {
            // Every marker but the binary ones (see the test above).
            for byte in (0..=0xffu8).filter(|byte| !(0xc4..=0xc6).contains(byte)) {
                let mut changed = frame.clone();
                changed[at] = byte;
                agree(&changed);
            }
        }
    }
}
