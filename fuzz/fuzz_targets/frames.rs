//! Whatever a child writes to its stdout, the parent's frame reader and
//! reply decoder answer with frames, `Protocol` errors or "need more bytes":
//! never a panic, a hang, or an allocation the frame limit does not allow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    async_py::fuzzing::read_child_output(data);
});
