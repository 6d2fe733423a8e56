//! Starting CPython, once per process.
//!
//! pyo3's `Python::initialize` ends the whole process when CPython cannot
//! start (a `PYTHONHOME` without a standard library, say). The interpreter is
//! started here through CPython's configuration API instead, which reports
//! such a failure as a status, so it becomes a [`PyRunnerError::Startup`].

use std::sync::OnceLock;

use crate::error::PyRunnerError;

/// Starts the interpreter on the first call in this process; every call
/// returns the outcome of that first start.
///
/// A failed start is not tried again: CPython leaves a half-started runtime
/// behind, and starting it a second time is not something it supports.
pub(super) fn start_interpreter() -> Result<(), PyRunnerError> {
    static OUTCOME: OnceLock<Result<(), PyRunnerError>> = OnceLock::new();
    OUTCOME.get_or_init(initialize).clone()
}

/// What `Python::initialize` does (`Py_InitializeEx(0)`, then release the
/// GIL), with a failure returned instead of ending the process.
#[cfg(not(Py_LIMITED_API))]
fn initialize() -> Result<(), PyRunnerError> {
    use pyo3::ffi;
    use std::mem::MaybeUninit;

    // SAFETY: only reads a flag of the runtime.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        // The program started Python itself, before any runner.
        return Ok(());
    }

    // `Py_InitializeEx` starts from CPython's "compat" configuration, which is
    // not public; the "python" one reads the same environment variables and
    // differs in the fields set back below.
    let mut preconfig = MaybeUninit::<ffi::PyPreConfig>::uninit();
    // SAFETY: fills in every field of the struct it is given.
    let mut preconfig = unsafe {
        ffi::PyPreConfig_InitPythonConfig(preconfig.as_mut_ptr());
        preconfig.assume_init()
    };
    preconfig.parse_argv = 0;
    // No PEP 538 locale coercion and no UTF-8 mode in a C locale, as before:
    // coercion calls `setenv` in a process that already runs other threads.
    preconfig.coerce_c_locale = 0;
    preconfig.coerce_c_locale_warn = 0;
    preconfig.utf8_mode = 0;
    // SAFETY: the runtime has not started, so it may be pre-initialised; the
    // struct is fully initialised and only read.
    check(unsafe { ffi::Py_PreInitialize(&preconfig) })?;

    let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
    // SAFETY: fills in every field of the struct it is given.
    let mut config = unsafe {
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        config.assume_init()
    };
    // Python's signal handlers belong to the program's main thread, not to
    // a runner's thread, as pyo3 decides too.
    config.install_signal_handlers = 0;
    // There is no command line of Python's to parse.
    config.parse_argv = 0;
    // The C stdio streams belong to the Rust program.
    config.configure_c_stdio = 0;
    // SAFETY: `config` came from `PyConfig_InitPythonConfig`; it is read, then
    // freed once, and not used after.
    let status = unsafe {
        let status = ffi::Py_InitializeFromConfig(&config);
        ffi::PyConfig_Clear(&mut config);
        status
    };
    check(status)?;
    // SAFETY: the interpreter has just started on this thread, which holds
    // the GIL; runners take it back through `Python::attach`.
    unsafe { ffi::PyEval_SaveThread() };
    Ok(())
}

/// Under the limited API CPython's configuration is out of reach, so the
/// interpreter starts as pyo3 starts it.
#[cfg(Py_LIMITED_API)]
fn initialize() -> Result<(), PyRunnerError> {
    pyo3::Python::initialize();
    Ok(())
}

/// A status CPython returned while starting, as a `Startup` error.
#[cfg(not(Py_LIMITED_API))]
fn check(status: pyo3::ffi::PyStatus) -> Result<(), PyRunnerError> {
    use pyo3::ffi;
    use std::ffi::CStr;

    // SAFETY: reads the status that CPython returned.
    if unsafe { ffi::PyStatus_Exception(status) } == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    let why = if unsafe { ffi::PyStatus_IsExit(status) } != 0 {
        format!(
            "CPython asked to exit with status {} while starting",
            status.exitcode
        )
    } else {
        let text = |ptr: *const std::ffi::c_char| {
            // SAFETY: CPython sets both to null or to static C strings.
            (!ptr.is_null()).then(|| unsafe { CStr::from_ptr(ptr) }.to_string_lossy())
        };
        match (text(status.func), text(status.err_msg)) {
            (Some(func), Some(msg)) => format!("{func}: {msg}"),
            (None, Some(msg)) => msg.into_owned(),
            (_, None) => "CPython reported an error without a message".to_string(),
        }
    };
    // A broken home or path is the usual cause; name what was asked for.
    let settings: Vec<String> = ["PYTHONHOME", "PYTHONPATH"]
        .iter()
        .filter_map(|name| {
            let value = std::env::var_os(name)?;
            Some(format!("{name}={}", value.to_string_lossy()))
        })
        .collect();
    Err(PyRunnerError::Startup(if settings.is_empty() {
        why
    } else {
        format!("{why} ({})", settings.join(", "))
    }))
}
