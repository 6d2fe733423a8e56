//! The conformance suite on the subprocess backend.

use crate::conformance;

pub fn make_runner() -> async_py::PyRunner {
    async_py::PyRunner::builder()
        .subprocess()
        .python(conformance::base_python())
        .build()
        .expect("the subprocess backend starts")
}

crate::conformance_suite!(crate::subprocess::make_runner);

pub fn builder() -> async_py::PyRunnerBuilder {
    async_py::PyRunner::builder()
        .subprocess()
        .python(conformance::base_python())
}

crate::output_suite!(crate::subprocess::builder);
crate::host_suite!(crate::subprocess::builder);

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_py::{Backend, PyRunner, PyRunnerError};
use serde_json::json;

fn startup_error(outcome: Result<PyRunner, PyRunnerError>) -> String {
    match outcome {
        Err(PyRunnerError::Startup(message)) => message,
        Ok(_) => panic!("expected a Startup error, the runner started"),
        Err(other) => panic!("expected a Startup error, got {other:?}"),
    }
}

#[test]
fn backend_is_subprocess_and_build_needs_no_runtime() {
    let runner = make_runner();
    assert_eq!(runner.backend(), Backend::Subprocess);
    let pid = runner.eval_sync("__import__('os').getpid()").unwrap();
    assert_ne!(
        pid,
        json!(std::process::id()),
        "Python runs in another process"
    );
}

#[test]
fn a_missing_interpreter_is_a_startup_error_naming_it() {
    let message = startup_error(
        PyRunner::builder()
            .subprocess()
            .python("/no/such/python3")
            .build(),
    );
    assert!(message.contains("/no/such/python3"), "{message}");
}

#[test]
fn a_folder_that_is_not_a_venv_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let message = startup_error(PyRunner::builder().subprocess().venv(dir.path()).build());
    assert!(message.contains("is not a venv"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    let message = startup_error(
        PyRunner::builder()
            .subprocess()
            .venv("/no/such/venv")
            .build(),
    );
    assert!(message.contains("/no/such/venv"), "{message}");
}

#[test]
fn a_program_that_is_not_python_is_a_startup_error() {
    let message = startup_error(PyRunner::builder().subprocess().python("/bin/true").build());
    assert!(message.contains("/bin/true"), "{message}");
    assert!(message.contains("exited with status 0"), "{message}");
    // A program that writes to stdout: its words are quoted.
    let message = startup_error(PyRunner::builder().subprocess().python("/bin/echo").build());
    assert!(message.contains("/bin/echo"), "{message}");
    assert!(
        message.contains("-u -c"),
        "what it printed is quoted: {message}"
    );
}

#[test]
fn failing_startup_code_is_a_startup_error() {
    let message = startup_error(
        PyRunner::builder()
            .subprocess()
            .python(conformance::base_python())
            .startup("raise ImportError('missing dependency')")
            .build(),
    );
    assert!(message.contains("missing dependency"), "{message}");
}

#[test]
fn noisy_output_never_corrupts_the_protocol() {
    let runner = make_runner();
    runner
        .run_sync(
            "import os, sys, ctypes\nprint('plain print')\nsys.stdout.write('stdout write\\n')\nsys.stdout.flush()\n\
             os.write(1, b'raw fd 1 write\\n')\nlibc = ctypes.CDLL(None)\nlibc.printf(b'C printf %d\\n', 42)\nlibc.fflush(None)\n\
             print('to stderr', file=sys.stderr)\nos.write(1, b'\\x00\\x00\\x00\\x05garbage that looks like a frame')",
        )
        .unwrap_or_else(|err| panic!("{err:?}"));
    assert_eq!(runner.eval_sync("1 + 1").unwrap(), json!(2));
    match runner.eval_sync("input('prompt? ')") {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "EOFError"),
        other => panic!("input() should raise EOFError, got {other:?}"),
    }
    assert_eq!(
        runner.eval_sync("'still in sync'").unwrap(),
        json!("still in sync")
    );
}

/// The child's stderr reaches ours line by line, marked with its pid. Checked
/// by running this test binary again, as a child, and reading its stderr.
#[test]
fn child_stderr_is_forwarded_with_its_pid() {
    if std::env::var_os("ASYNC_PY_STDERR_PROBE").is_some() {
        let runner = make_runner();
        let pid = runner.eval_sync("__import__('os').getpid()").unwrap();
        runner
            .run_sync("print('first line')\nprint('second line')")
            .unwrap();
        runner.stop_sync().unwrap();
        println!("\nCHILD_PID={pid}");
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &crate::common::test_name(module_path!(), "child_stderr_is_forwarded_with_its_pid"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ASYNC_PY_STDERR_PROBE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let pid = stdout
        .lines()
        .find_map(|line| line.strip_prefix("CHILD_PID="))
        .unwrap_or_else(|| panic!("no pid in {stdout}"));
    assert!(
        stderr.contains(&format!("[python {pid}] first line\n")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("[python {pid}] second line\n")),
        "{stderr}"
    );
}

/// Runs this test binary again, as a child, for the test named `test`
/// only, with `probe` set to `mode` in its environment; its stdout and
/// stderr.
fn rerun_as_probe(test: &str, probe: &str, mode: &str) -> (String, String) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &crate::common::test_name(module_path!(), test),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(probe, mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

const PRINTED_LINES: usize = 20_000;

/// Every line a child wrote reaches this process's stderr before `stop()`
/// returns, and before the drop of the last handle returns, so a program
/// may exit right after either. Checked in reruns of this test binary that
/// exit at once after them.
#[test]
fn every_line_printed_is_forwarded_before_stop_or_the_drop_returns() {
    const TEST: &str = "every_line_printed_is_forwarded_before_stop_or_the_drop_returns";
    const PROBE: &str = "ASYNC_PY_PRINT_ALL_PROBE";
    if let Some(mode) = std::env::var_os(PROBE) {
        let runner = make_runner();
        let pid = runner.eval_sync("__import__('os').getpid()").unwrap();
        println!("\nCHILD_PID={pid}");
        runner
            .run_sync(&format!(
                "import sys\nfor i in range({PRINTED_LINES}):\n    print('numbered', i)\n\
                 sys.stderr.write('without an end')"
            ))
            .unwrap();
        if mode == "stop" {
            runner.stop_sync().unwrap();
        } else {
            drop(runner);
        }
        std::process::exit(0);
    }
    for mode in ["stop", "drop"] {
        let (stdout, stderr) = rerun_as_probe(TEST, PROBE, mode);
        let pid = stdout
            .lines()
            .find_map(|line| line.strip_prefix("CHILD_PID="))
            .unwrap_or_else(|| panic!("no pid in {stdout}"));
        let prefix = format!("[python {pid}] ");
        let lines: Vec<&str> = stderr
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .collect();
        let numbered = lines
            .iter()
            .filter(|line| line.starts_with("numbered "))
            .count();
        assert_eq!(numbered, PRINTED_LINES, "{mode}: lines forwarded");
        for (i, line) in lines.iter().take(PRINTED_LINES).enumerate() {
            assert_eq!(*line, format!("numbered {i}"), "{mode}: in order");
        }
        assert_eq!(
            lines.last(),
            Some(&"without an end"),
            "{mode}: the last piece"
        );
    }
}

/// What a command printed reaches this process's stderr before its reply
/// reaches the caller: sync commands, and coroutines.
#[test]
fn what_a_command_printed_is_forwarded_before_its_reply() {
    if std::env::var_os("ASYNC_PY_BEFORE_REPLY_PROBE").is_some() {
        let runner = make_runner();
        runner
            .run_sync(
                "import asyncio, sys\n\
                 def noisy(n, tag):\n    for i in range(n):\n        print('filler', i)\n    print(tag)\n    return tag\n\
                 async def noisy_later(n, tag):\n    await asyncio.sleep(0)\n    return noisy(n, tag)",
            )
            .unwrap();
        for (round, lines) in [0, 1, 3000, 0, 3000].into_iter().enumerate() {
            let tag = format!("printed-{round}");
            runner
                .call_function_sync("noisy", vec![json!(lines), json!(tag)])
                .unwrap();
            eprintln!("ANSWERED {tag}");
            let tag = format!("awaited-{round}");
            runner
                .call_async_function_sync("noisy_later", vec![json!(lines), json!(tag)])
                .unwrap();
            eprintln!("ANSWERED {tag}");
        }
        runner.stop_sync().unwrap();
        return;
    }
    let (_, stderr) = rerun_as_probe(
        "what_a_command_printed_is_forwarded_before_its_reply",
        "ASYNC_PY_BEFORE_REPLY_PROBE",
        "1",
    );
    let mut checked = 0;
    for (at, line) in stderr.lines().enumerate() {
        let Some(tag) = line.strip_prefix("ANSWERED ") else {
            continue;
        };
        let printed = stderr
            .lines()
            .position(|line| line.ends_with(&format!("] {tag}")))
            .unwrap_or_else(|| panic!("{tag} was never forwarded"));
        assert!(printed < at, "{tag} was forwarded after its reply came");
        checked += 1;
    }
    assert_eq!(checked, 10, "{stderr}");
}

/// A `python3` on PATH that is a script (a version manager's shim, here
/// one that notes each run in a log) costs its own start once per process,
/// not once per child: children of runners and of a pool, fresh ones after
/// a crash included, start the interpreter it runs. Checked by running
/// this test binary again, with the shim first on its PATH.
#[test]
fn a_python3_shim_on_path_runs_once_for_every_child_of_the_process() {
    if std::env::var_os("ASYNC_PY_SHIM_PROBE").is_some() {
        let runner = PyRunner::builder().subprocess().build().unwrap();
        let crashed = runner.run_sync("import os\nos._exit(1)");
        assert!(matches!(crashed, Err(PyRunnerError::WorkerDied { .. })));
        let executable = runner.eval_sync("__import__('sys').executable").unwrap();
        let other = PyRunner::builder().subprocess().build().unwrap();
        assert_eq!(other.eval_sync("1 + 1").unwrap(), json!(2));
        let pool = async_py::PyPool::builder().workers(2).build().unwrap();
        assert_eq!(pool.eval_sync("2 + 2").unwrap(), json!(4));
        pool.stop_sync().unwrap();
        println!("\nCHILD_EXECUTABLE={}", executable.as_str().unwrap());
        return;
    }
    let real = which_python();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let log = dir.path().join("shim.log");
    let shim = bin.join("python3");
    fs::write(
        &shim,
        format!(
            "#!/bin/sh\necho ran >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &crate::common::test_name(
                module_path!(),
                "a_python3_shim_on_path_runs_once_for_every_child_of_the_process",
            ),
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ASYNC_PY_SHIM_PROBE", "1")
        .env("PATH", path)
        .env_remove("VIRTUAL_ENV")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let runs = fs::read_to_string(&log).unwrap_or_default().lines().count();
    assert_eq!(
        runs, 1,
        "the shim ran {runs} times, for 4 children started and a zygote"
    );
    assert!(
        stdout.contains(&format!("CHILD_EXECUTABLE={}\n", real.display())),
        "{stdout}"
    );
}

#[test]
fn env_env_clear_and_current_dir_reach_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let runner = PyRunner::builder()
        .subprocess()
        .python(conformance::base_python())
        .env("ASYNC_PY_GREETING", "hello child")
        .current_dir(dir.path())
        .build()
        .unwrap();
    assert_eq!(
        runner
            .eval_sync("__import__('os').environ['ASYNC_PY_GREETING']")
            .unwrap(),
        json!("hello child")
    );
    let cwd = runner.eval_sync("__import__('os').getcwd()").unwrap();
    assert_eq!(
        Path::new(cwd.as_str().unwrap()).canonicalize().unwrap(),
        dir.path().canonicalize().unwrap()
    );

    let python = which_python();
    let bare = PyRunner::builder()
        .subprocess()
        .python(&python)
        .env_clear()
        .env("ONLY_THIS", "1")
        .build()
        .unwrap();
    let keys = bare
        .eval_sync("sorted(k for k in __import__('os').environ if k != 'LC_CTYPE')")
        .unwrap();
    assert_eq!(keys, json!(["ONLY_THIS"]));
}

#[test]
fn a_reply_over_the_frame_limit_is_a_protocol_error_and_the_child_is_replaced() {
    let runner = PyRunner::builder()
        .subprocess()
        .python(conformance::base_python())
        .max_frame_length(1 << 20)
        .build()
        .unwrap();
    let pid = runner.eval_sync("__import__('os').getpid()").unwrap();
    match runner.eval_sync("'x' * (2 << 20)") {
        Err(PyRunnerError::Protocol(message)) => assert!(message.contains("frame"), "{message}"),
        other => panic!("expected a Protocol error, got {other:?}"),
    }
    assert_eq!(runner.eval_sync("'small'").unwrap(), json!("small"));
    assert_ne!(
        runner.eval_sync("__import__('os').getpid()").unwrap(),
        pid,
        "a fresh child"
    );
    assert_eq!(
        runner.eval_sync("len('y' * (512 << 10))").unwrap(),
        json!(512 << 10)
    );
}

/// A request over the frame limit is refused before it is sent, naming both
/// sizes, and the child goes on.
#[test]
fn a_request_over_the_frame_limit_names_its_size_and_the_limit() {
    let runner = PyRunner::builder()
        .subprocess()
        .python(conformance::base_python())
        .max_frame_length(64 << 10)
        .build()
        .unwrap();
    let pid = runner.eval_sync("__import__('os').getpid()").unwrap();
    let big = "x".repeat(100 << 10);
    match runner.call_function_sync("len", vec![json!(big)]) {
        Err(PyRunnerError::Protocol(message)) => {
            assert!(
                message.contains("over the frame limit of 65536 bytes"),
                "{message}"
            );
            assert!(message.contains("a request of 1024"), "{message}");
        }
        other => panic!("expected a Protocol error, got {other:?}"),
    }
    assert_eq!(runner.eval_sync("__import__('os').getpid()").unwrap(), pid);
}

#[test]
fn an_echo_of_a_large_list_round_trips() {
    let runner = make_runner();
    runner.run_sync("def echo(x):\n    return x").unwrap();
    let big: Vec<i64> = (0..100_000).map(|i| i * 7 - 350_000).collect();
    let got = runner.call_function_sync("echo", vec![json!(big)]).unwrap();
    assert_eq!(got, json!(big));
    let text = "ünïcödé ".repeat(50_000);
    assert_eq!(
        runner
            .call_function_sync("echo", vec![json!(text)])
            .unwrap(),
        json!(text)
    );
}

/// The interpreter found on PATH (not the pyenv shim), for environments without PATH.
fn which_python() -> PathBuf {
    let output = Command::new(conformance::base_python())
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Every CPython this machine has beside the default, each in a venv of its
/// own with a package in site-packages and a `.pth` file.
#[test]
fn every_installed_cpython_version_runs_the_worker_from_its_venv() {
    let mut tested = Vec::new();
    for (minor, python) in conformance::installed_cpythons() {
        let minor = minor.as_str();
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        let site_packages = conformance::make_venv(&python, &venv);
        fs::write(
            site_packages.join("versioned_pkg.py"),
            "def where():\n    return __file__\n",
        )
        .unwrap();
        let extra = dir.path().join("extra");
        fs::create_dir_all(&extra).unwrap();
        fs::write(extra.join("pth_found.py"), "OK = True\n").unwrap();
        fs::write(
            site_packages.join("extra.pth"),
            format!("{}\n", extra.display()),
        )
        .unwrap();

        let runner = PyRunner::builder()
            .subprocess()
            .venv(&venv)
            .build()
            .unwrap();
        let version = runner
            .eval_sync("'%d.%d' % __import__('sys').version_info[:2]")
            .unwrap();
        assert_eq!(version, json!(minor), "{}", python.display());
        assert_eq!(
            runner.eval_sync("__import__('sys').prefix").unwrap(),
            json!(venv.display().to_string())
        );
        runner.run_sync("import versioned_pkg, pth_found\nimport asyncio\nasync def later(x):\n    await asyncio.sleep(0)\n    return x").unwrap();
        let location = runner
            .call_function_sync("versioned_pkg.where", vec![])
            .unwrap();
        assert!(location
            .as_str()
            .unwrap()
            .starts_with(site_packages.to_str().unwrap()));
        assert_eq!(
            runner.read_variable_sync("pth_found.OK").unwrap(),
            json!(true)
        );
        assert_eq!(
            runner
                .eval_sync("[2**63 - 1, 2**64 - 1, 1.5, b'ab', {1: (None,)}]")
                .unwrap(),
            json!([i64::MAX, u64::MAX, 1.5, [97, 98], {"1": [null]}])
        );
        assert!(matches!(
            runner.eval_sync("2**64"),
            Err(PyRunnerError::Conversion(_))
        ));
        assert_eq!(
            runner
                .call_async_function_sync("later", vec![json!("async")])
                .unwrap(),
            json!("async")
        );
        match runner.eval_sync("1/0") {
            Err(PyRunnerError::Python {
                kind, traceback, ..
            }) => {
                assert_eq!(kind, "ZeroDivisionError");
                let traceback = traceback.unwrap();
                assert!(traceback.contains("ZeroDivisionError"));
                assert!(
                    !traceback.contains("marshal"),
                    "no line of the bootstrap is quoted: {traceback}"
                );
            }
            other => panic!("{other:?}"),
        }
        runner.stop_sync().unwrap();
        tested.push(minor.to_string());
    }
    assert_eq!(tested, ["3.8", "3.10", "3.11", "3.12", "3.13"]);
}

/// A venv made by uv, with a real package installed from the package index.
#[test]
fn a_uv_venv_with_a_package_from_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let venv = conformance::uv_venv_with_six(dir.path(), &which_python());
    // Found as ./.venv in the child's folder: uv's default project venv.
    let runner = PyRunner::builder()
        .subprocess()
        .current_dir(dir.path())
        .build()
        .unwrap();
    assert_eq!(
        runner.eval_sync("__import__('sys').prefix").unwrap(),
        json!(venv.display().to_string())
    );
    runner.run_sync("import six").unwrap();
    assert_eq!(
        runner.read_variable_sync("six.__version__").unwrap(),
        json!("1.16.0")
    );
    runner.stop_sync().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_replaces_the_child_and_the_next_command_runs() {
    let limit = Duration::from_millis(200);
    let runner = PyRunner::builder()
        .subprocess()
        .python(conformance::base_python())
        .timeout(limit)
        .build()
        .unwrap();
    let first = runner.eval("__import__('os').getpid()").await.unwrap();
    assert_eq!(
        runner.run("while True:\n    pass").await,
        Err(PyRunnerError::Timeout(limit))
    );
    let second = runner.eval("__import__('os').getpid()").await.unwrap();
    assert_ne!(first, second, "the stuck child was replaced");
}

#[test]
fn a_backend_that_is_not_there_is_unsupported_and_says_why() {
    let rustpython = async_py::PyRunner::builder().rustpython().build();
    if cfg!(feature = "rustpython") {
        assert!(rustpython.is_ok());
    } else {
        match rustpython {
            Err(async_py::PyRunnerError::Unsupported(why)) => {
                assert!(why.contains("RustPython"), "{why}");
                assert!(why.contains("`rustpython` feature"), "{why}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
    let in_process = async_py::PyRunner::builder().pyo3().build();
    if cfg!(feature = "pyo3") {
        assert!(in_process.is_ok());
    } else {
        match in_process {
            Err(async_py::PyRunnerError::Unsupported(why)) => {
                assert!(why.contains("`pyo3` feature"), "{why}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}

#[test]
fn startup_code_larger_than_the_pipe_goes_out_whole() {
    // 3 MiB of startup code: more than the request pipe holds at once.
    let code = format!("BIG = 'yes'\n#{}\n", "x".repeat(3 << 20));
    let runner = PyRunner::builder()
        .subprocess()
        .python(conformance::base_python())
        .startup(code)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a large startup runs");
    assert_eq!(runner.eval_sync("BIG").unwrap(), "yes");
}

/// CPU time the calling thread has used so far, in seconds, from /proc
/// (other tests run in this process at the same time).
fn thread_cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let nanos: f64 = stat.split_whitespace().next().unwrap().parse().unwrap();
    nanos / 1e9
}

/// Callers queued behind a slow call wait asleep: the one that spun for a
/// reply gives up and leaves the watching to the thread, which sleeps,
/// instead of handing the spin to the next caller. The callers are tasks of
/// a current-thread runtime, so their spinning is that thread's CPU time.
#[test]
fn callers_behind_a_slow_call_do_not_spin() {
    let runner = make_runner();
    runner
        .run_sync("import time\ndef nap(s):\n    time.sleep(s)\n    return s")
        .unwrap();
    let used = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let before = thread_cpu_seconds();
        runtime.block_on(async {
            let calls: Vec<_> = (0..4)
                .map(|_| {
                    let runner = runner.clone();
                    tokio::spawn(async move { runner.call_function("nap", vec![json!(0.5)]).await })
                })
                .collect();
            for call in calls {
                assert_eq!(call.await.unwrap().unwrap(), json!(0.5));
            }
        });
        thread_cpu_seconds() - before
    })
    .join()
    .unwrap();
    // Two seconds of naps. Waiting asleep takes a few milliseconds of CPU;
    // callers taking turns at spinning took 30 to 490.
    assert!(
        used < 0.02,
        "{:.1} ms of CPU while the child slept for 2 s",
        used * 1e3
    );
}

/// numpy from a uv venv, in a child started from that venv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numpy_values_cross_as_values() {
    let runner = PyRunner::builder()
        .subprocess()
        .venv(conformance::numpy_venv())
        .build()
        .unwrap();
    conformance::values::numpy_values_cross_as_values(runner).await;
}
