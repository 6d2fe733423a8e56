//! Points this package's own test, example and bench binaries at the
//! libpython that pyo3 was configured with, so they embed the same CPython
//! that `PYO3_PYTHON` (or `python3` on PATH) names rather than whichever
//! libpython the system loader finds first. Libraries that depend on
//! async_py are not affected: their binaries choose their own.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "pyo3")]
    {
        // `Py_LIMITED_API` and the like, as pyo3 itself sees them.
        pyo3_build_config::use_pyo3_cfgs();
        let config = pyo3_build_config::get();
        if let Some(lib_dir) = config.lib_dir() {
            if cfg!(unix) && config.shared() {
                println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
            }
        }
    }
}
