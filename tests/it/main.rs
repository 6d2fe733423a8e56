//! The integration tests, as one binary: every module links the crate,
//! PyO3 and RustPython, so the suite links them once. A module per concern;
//! the helpers they share are `common`, `conformance`, `faults`, `pool` and
//! `sshd`.
//!
//! All tests share this process. A test that needs a process to itself
//! (CPython's start, RustPython's one cycle collector, a process that
//! exits or is killed) runs this binary again as a probe, for itself alone
//! (`common::test_name`).

mod common;
#[cfg(any(feature = "pyo3", feature = "rustpython", feature = "subprocess"))]
mod conformance;
#[cfg(feature = "subprocess")]
mod faults;
#[cfg(feature = "subprocess")]
mod pool;
#[cfg(feature = "subprocess")]
mod sshd;

#[cfg(feature = "subprocess")]
mod fault_cancellation;
#[cfg(feature = "subprocess")]
mod fault_crash;
#[cfg(feature = "subprocess")]
mod fault_frames;
#[cfg(feature = "subprocess")]
mod fault_mixed;
#[cfg(feature = "subprocess")]
mod fault_reaping;
#[cfg(feature = "subprocess")]
mod fault_startup;
#[cfg(feature = "subprocess")]
mod fault_timeout;
#[cfg(feature = "subprocess")]
mod fault_user_code;
#[cfg(feature = "subprocess")]
mod host_child;
#[cfg(feature = "subprocess")]
mod host_wire;
#[cfg(feature = "subprocess")]
mod launcher;
#[cfg(feature = "subprocess")]
mod limits;
#[cfg(feature = "subprocess")]
mod output_child;
#[cfg(feature = "subprocess")]
mod pool_calls;
#[cfg(feature = "subprocess")]
mod pool_dispatch;
#[cfg(feature = "subprocess")]
mod pool_host;
#[cfg(feature = "subprocess")]
mod pool_map;
#[cfg(feature = "subprocess")]
mod pool_reaping;
#[cfg(feature = "subprocess")]
mod pool_recycle;
#[cfg(feature = "subprocess")]
mod pool_replay;
#[cfg(feature = "subprocess")]
mod pool_startup;
#[cfg(feature = "subprocess")]
mod pool_streams;
#[cfg(feature = "subprocess")]
mod pool_timeout;
#[cfg(feature = "subprocess")]
mod pool_zygote;
#[cfg(feature = "pyo3")]
mod pyo3;
#[cfg(feature = "pyo3")]
mod pyo3_host;
#[cfg(feature = "pyo3")]
mod pyo3_startup;
#[cfg(feature = "subprocess")]
mod reply_ring;
#[cfg(feature = "rustpython")]
mod rustpython;
#[cfg(feature = "rustpython")]
mod rustpython_cycles;
#[cfg(feature = "rustpython")]
mod rustpython_host;
#[cfg(all(feature = "subprocess", target_os = "linux"))]
mod sandbox;
#[cfg(all(feature = "subprocess", target_os = "linux"))]
mod sandbox_attacks;
#[cfg(feature = "subprocess")]
mod sshd_fixture;
#[cfg(feature = "subprocess")]
mod stream_child;
#[cfg(feature = "subprocess")]
mod stress;
#[cfg(feature = "subprocess")]
mod subprocess;
