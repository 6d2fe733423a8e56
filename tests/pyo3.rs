#![cfg(feature = "pyo3")]
//! The conformance suite on the in-process CPython backend.

mod conformance;

fn make_runner() -> async_py::PyRunner {
    async_py::PyRunner::builder()
        .pyo3()
        .build()
        .expect("the pyo3 backend starts")
}

conformance_suite!();

use async_py::{Backend, PyRunner};

#[test]
fn new_and_builder_pick_the_pyo3_backend() {
    assert_eq!(PyRunner::new().backend(), Backend::PyO3);
    assert_eq!(
        PyRunner::builder().build().unwrap().backend(),
        Backend::PyO3
    );
    assert_eq!(make_runner().backend(), Backend::PyO3);
}

in_process_suite!(pyo3);
