//! Starting CPython, once per process.
//!
//! pyo3's `Python::initialize` ends the whole process when CPython cannot
//! start (a `PYTHONHOME` without a standard library, say). The interpreter is
//! started here through CPython's configuration API instead, which reports
//! such a failure as a status, so it becomes a [`PyRunnerError::Startup`].
//!
//! Before that, the libpython the dynamic loader picked is compared with the
//! one pyo3 was built for: a binary without an rpath gets whichever the
//! loader finds first, often the system's rather than the one `PYO3_PYTHON`
//! named.

use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pyo3::ffi;

use crate::error::PyRunnerError;

/// The release of CPython pyo3 was built for, as `Py_GetVersion` spells it
/// (`3.11.7`; only `3.11` where build.rs could not run that interpreter).
const BUILT_VERSION: &str = env!("ASYNC_PY_BUILT_PYTHON");

/// The folder of the shared libpython pyo3 was built for; none for a
/// static one, which cannot be swapped.
const BUILT_LIB_DIR: Option<&str> = option_env!("ASYNC_PY_BUILT_LIBDIR");

const HOW_TO_FIX: &str = "to embed that one, give the binary an rpath to its folder \
     (`pyo3_build_config::add_libpython_rpath_link_args()` in the binary's build.rs) \
     or put that folder on LD_LIBRARY_PATH";

/// Starts the interpreter on the first call in this process; every call
/// returns the outcome of that first start.
///
/// A failed start is not tried again: CPython leaves a half-started runtime
/// behind, and starting it a second time is not something it supports.
pub(super) fn start_interpreter() -> Result<(), PyRunnerError> {
    static OUTCOME: OnceLock<Result<(), PyRunnerError>> = OnceLock::new();
    OUTCOME
        .get_or_init(|| {
            check_libpython()?;
            initialize()
        })
        .clone()
}

/// Another minor version than pyo3 was built for is an error, caught before
/// CPython runs: pyo3's layout of CPython's structs, the configuration's
/// among them, would not match it. Another release or folder of the same
/// minor version works, so it is one warning on stderr.
fn check_libpython() -> Result<(), PyRunnerError> {
    // The stable ABI is meant to run on other versions.
    if cfg!(Py_LIMITED_API) {
        return Ok(());
    }
    let loaded = LoadedPython::find();
    let built = match BUILT_LIB_DIR {
        Some(dir) => format!("CPython {BUILT_VERSION} from {dir}"),
        None => format!("CPython {BUILT_VERSION}"),
    };
    if minor_version(&loaded.version) != minor_version(BUILT_VERSION) {
        return Err(PyRunnerError::Startup(format!(
            "this process loaded {loaded}, but pyo3 was built for {built}, and code \
             built for one minor version of CPython cannot run on another; {HOW_TO_FIX}"
        )));
    }
    // Built for `3.11` only: any 3.11 release is as good.
    let same_release = BUILT_VERSION.matches('.').count() < 2 || loaded.version == BUILT_VERSION;
    let same_folder = match (BUILT_LIB_DIR, &loaded.file) {
        (Some(dir), Some(file)) => file
            .parent()
            .is_some_and(|folder| same_path(folder, Path::new(dir))),
        _ => true,
    };
    if !(same_release && same_folder) {
        eprintln!(
            "async_py: warning: this process loaded {loaded}, not {built} that pyo3 \
             was built for; {HOW_TO_FIX}"
        );
    }
    Ok(())
}

/// The libpython this process runs.
struct LoadedPython {
    /// `3.11.2`: the first word of `Py_GetVersion()`.
    version: String,
    /// The shared library's file, where the loader can tell.
    file: Option<PathBuf>,
}

impl LoadedPython {
    fn find() -> LoadedPython {
        // SAFETY: `Py_GetVersion` may be called before the interpreter
        // starts; it returns a NUL-terminated string in libpython's memory.
        let text = unsafe { ffi::Py_GetVersion() };
        // SAFETY: as above, the pointer is valid and NUL-terminated.
        let full = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        let version = full
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        // That string lives in libpython itself, so the loader can name the
        // file it came from.
        let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
        // SAFETY: `dladdr` only reads the loader's tables and fills `info`.
        let found = unsafe { libc::dladdr(text.cast(), info.as_mut_ptr()) } != 0;
        // SAFETY: zeroed is a valid `Dl_info`, and `dladdr` fills it in.
        let info = unsafe { info.assume_init() };
        let file = (found && !info.dli_fname.is_null()).then(|| {
            // SAFETY: a NUL-terminated path owned by the loader, copied at once.
            let name = unsafe { CStr::from_ptr(info.dli_fname) };
            PathBuf::from(OsStr::from_bytes(name.to_bytes()))
        });
        LoadedPython { version, file }
    }
}

impl std::fmt::Display for LoadedPython {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CPython {}", self.version)?;
        match &self.file {
            Some(file) => write!(f, " from {}", file.display()),
            None => Ok(()),
        }
    }
}

/// `3.11` of `3.11.2`.
fn minor_version(version: &str) -> &str {
    let mut dots = version.match_indices('.').map(|(at, _)| at);
    match dots.nth(1) {
        Some(end) => &version[..end],
        None => version,
    }
}

/// Whether two paths name one folder, through symbolic links (`/lib` is
/// `/usr/lib` on many systems).
fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// What `Python::initialize` does (`Py_InitializeEx(0)`, then release the
/// GIL), with a failure returned instead of ending the process.
#[cfg(not(Py_LIMITED_API))]
fn initialize() -> Result<(), PyRunnerError> {
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
    // As before: no PEP 538 locale coercion, which calls `setenv` in a
    // process that already runs other threads, and no UTF-8 mode, neither
    // in a C locale nor from `PYTHONUTF8`.
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
fn check(status: ffi::PyStatus) -> Result<(), PyRunnerError> {
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

#[cfg(test)]
mod tests {
    use super::minor_version;

    #[test]
    fn minor_version_keeps_major_and_minor() {
        assert_eq!(minor_version("3.11.2"), "3.11");
        assert_eq!(minor_version("3.13.0rc1"), "3.13");
        assert_eq!(minor_version("3.11"), "3.11");
    }
}
