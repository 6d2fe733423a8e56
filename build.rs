//! Points this package's own test, example and bench binaries at the
//! libpython that pyo3 was configured with, so they embed the same CPython
//! that `PYO3_PYTHON` (or `python3` on PATH) names rather than whichever
//! libpython the system loader finds first. Libraries that depend on
//! async_py are not affected: their binaries choose their own, so the
//! version and folder of that libpython are also handed to the crate, which
//! checks at start that the one loaded matches.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "pyo3")]
    {
        // `Py_LIMITED_API` and the like, as pyo3 itself sees them.
        pyo3_build_config::use_pyo3_cfgs();
        let config = pyo3_build_config::get();
        println!(
            "cargo:rustc-env=ASYNC_PY_BUILT_PYTHON={}",
            built_version(config)
        );
        if let Some(lib_dir) = config.lib_dir() {
            if cfg!(unix) && config.shared() {
                println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
                println!("cargo:rustc-env=ASYNC_PY_BUILT_LIBDIR={lib_dir}");
            }
        }
    }
}

/// The version as `Py_GetVersion` spells it (`3.11.7`), from the interpreter
/// pyo3 was configured with; pyo3's configuration holds only `3.11`, which
/// stands in when that interpreter cannot be run (cross builds).
#[cfg(feature = "pyo3")]
fn built_version(config: &pyo3_build_config::InterpreterConfig) -> String {
    let release = config.executable().and_then(|python| {
        let output = std::process::Command::new(python)
            .args(["-c", "import sys; print(sys.version.split()[0])"])
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        let release = text.trim();
        let version = config.version();
        let same = release.starts_with(&format!("{}.{}.", version.major, version.minor));
        (output.status.success() && same).then(|| release.to_string())
    });
    release.unwrap_or_else(|| {
        let version = config.version();
        format!("{}.{}", version.major, version.minor)
    })
}
