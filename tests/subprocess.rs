//! The conformance suite on the subprocess backend.

mod conformance;

fn make_runner() -> async_py::PyRunner {
    async_py::PyRunner::builder()
        .subprocess()
        .python(conformance::base_python())
        .build()
        .expect("the subprocess backend starts")
}

conformance_suite!();
