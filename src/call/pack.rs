//! Arguments of a call, packed on the caller's thread.
//!
//! Every backend takes a call's arguments as MessagePack: the child reads
//! them as they are, the in-process backends build Python objects from
//! them. Packing on the caller's thread means a value that cannot cross
//! fails there, naming its argument, and nothing the caller lent is read
//! after the call was handed over.

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
}

#[cfg(test)]
impl Packed {
    /// Packs `values` as positional arguments with rmp-serde (tests only).
    pub fn of<T: serde::Serialize>(values: &[T]) -> Packed {
        let mut bytes = Vec::new();
        for value in values {
            value
                .serialize(&mut rmp_serde::Serializer::new(&mut bytes).with_struct_map())
                .unwrap();
        }
        Packed {
            bytes,
            count: values.len(),
        }
    }
}
