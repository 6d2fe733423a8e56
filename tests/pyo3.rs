//! The conformance suite on the in-process CPython backend.

mod conformance;

fn make_runner() -> async_py::PyRunner {
    async_py::PyRunner::builder().pyo3().build().expect("the pyo3 backend starts")
}

conformance_suite!();
