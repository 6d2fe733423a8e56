//! The conformance suite on the in-process CPython backend.

use crate::conformance;

pub fn make_runner() -> async_py::PyRunner {
    async_py::PyRunner::builder()
        .pyo3()
        .build()
        .expect("the pyo3 backend starts")
}

crate::conformance_suite!(crate::pyo3::make_runner);

pub fn builder() -> async_py::PyRunnerBuilder {
    async_py::PyRunner::builder().pyo3()
}

crate::output_suite!(crate::pyo3::builder);
crate::host_suite!(crate::pyo3::builder);

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

crate::in_process_suite!(pyo3);

/// numpy from a uv venv, on the in-process backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numpy_values_cross_as_values() {
    let _sys_path = conformance::SYS_PATH.lock().await;
    let runner = make_runner();
    runner.set_venv(conformance::numpy_venv()).await.unwrap();
    conformance::values::numpy_values_cross_as_values(runner).await;
}

/// `builder().venv(..)` of a venv made by another minor version fails the
/// build, naming both versions.
#[test]
fn builder_venv_of_another_python_version_is_a_startup_error() {
    let _sys_path = conformance::sys_path_lock();
    let (python, version) = conformance::other_cpython();
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    conformance::make_venv(&python, &venv);
    match PyRunner::builder().pyo3().venv(&venv).build() {
        Err(async_py::PyRunnerError::Startup(message)) => {
            assert!(
                message.contains(&format!("made for Python {version}")),
                "{message}"
            );
        }
        other => panic!("expected a Startup error, got {other:?}"),
    }
}

/// PyO3 runners share one interpreter and one `sys.stdout`: each routes
/// its own thread, so two runners printing at once each hear their own
/// lines; a thread that user code starts is routed to neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_route_their_own_output_through_one_sys_stdout() {
    use conformance::output::collecting;
    let (one, one_lines) = collecting(builder());
    let (two, two_lines) = collecting(builder());
    let code = |tag: &str| format!("for i in range(300):\n    print('{tag}', i)");
    let (code_one, code_two) = (code("one"), code("two"));
    let (a, b) = tokio::join!(one.run(&code_one), two.run(&code_two));
    a.unwrap();
    b.unwrap();
    for (lines, tag) in [(&one_lines, "one"), (&two_lines, "two")] {
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 300);
        assert!(lines.iter().all(|line| line.text.starts_with(tag)));
    }
    one.run("import threading\nt = threading.Thread(target=print, args=('from a thread',))\nt.start()\nt.join()")
        .await
        .unwrap();
    assert_eq!(one_lines.lock().unwrap().len(), 300);
    // A runner without on_output captures as the others do.
    let plain = make_runner();
    let captured = plain.exec("print('mine')").capture_output().await.unwrap();
    assert_eq!(captured.stdout, "mine\n");
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}
