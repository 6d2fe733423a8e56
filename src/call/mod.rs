//! One builder for a call: positional and keyword arguments of any serde
//! type, a per-call limit, and a typed result.

pub(crate) mod pack;

#[allow(unused_imports)]
pub(crate) use pack::Packed;
