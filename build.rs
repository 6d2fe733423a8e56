//! Points this package's own test, example and bench binaries at the
//! libpython that pyo3 was configured with, so they embed the same CPython
//! that `PYO3_PYTHON` (or `python3` on PATH) names rather than whichever
//! libpython the system loader finds first. Libraries that depend on
//! async_py are not affected: their binaries choose their own, so the
//! version and folder of that libpython are also handed to the crate, which
//! checks at start that the one loaded matches.
//!
//! It also joins the worker's modules (`python/*.py`, in the order
//! `python/MODULES` lists them) into the sources the crate compiles in:
//! `$OUT_DIR/worker.py`, the whole program a child runs, and
//! `$OUT_DIR/helpers.py`, the part the in-process backends load.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    join_worker();
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

/// A module's text with each line that is only a comment left empty (so
/// line numbers stay): a child gets the joined source on its command line
/// (in pieces, one argument being capped at 128 KiB), and a comment is no
/// use there. tests/python/test_protocol.py checks that every such line is
/// a comment, not text inside a string.
fn without_comment_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .trim_end_matches('\n')
        .split('\n')
        .map(|line| {
            if line.trim_start().starts_with('#') {
                ""
            } else {
                line
            }
        })
        .collect();
    lines.join("\n")
}

/// Writes the joined worker sources into `OUT_DIR` (see the file's docs).
/// Each module is put under a line naming it; tests/python/worker_source.py
/// joins them the same way for the Python tests.
fn join_worker() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let listing_path = python.join("MODULES");
    println!("cargo:rerun-if-changed={}", listing_path.display());
    let listing = std::fs::read_to_string(&listing_path).expect("python/MODULES is readable");
    let mut in_process = Vec::new();
    let mut child_only = Vec::new();
    let mut group = None;
    for line in listing.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line {
            "[in-process]" => group = Some(&mut in_process),
            "[child]" => group = Some(&mut child_only),
            name => group
                .as_mut()
                .expect("python/MODULES names a group before its modules")
                .push(name.to_owned()),
        }
    }
    let join = |names: &[String]| {
        let parts: Vec<String> = names
            .iter()
            .map(|name| {
                let path = python.join(name);
                println!("cargo:rerun-if-changed={}", path.display());
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|err| panic!("python/{name} is readable: {err}"));
                format!("# python/{name}\n{}\n", without_comment_lines(&text))
            })
            .collect();
        parts.join("\n\n")
    };
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let all: Vec<String> = in_process.iter().chain(&child_only).cloned().collect();
    std::fs::write(out.join("helpers.py"), join(&in_process)).expect("OUT_DIR is writable");
    std::fs::write(out.join("worker.py"), join(&all)).expect("OUT_DIR is writable");
}
