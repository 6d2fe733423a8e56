//! `run_file` and `set_venv`: files, folders, venvs.

use std::fs;

use async_py::{PyRunner, PyRunnerError};
use serde_json::json;

use super::{base_python, make_venv};

pub async fn run_file_puts_its_folder_first_on_sys_path(runner: PyRunner) {
    let _sys_path = super::SYS_PATH.lock().await;
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("neighbour_module.py"),
        "GREETING = 'from next door'\n",
    )
    .unwrap();
    let script = dir.path().join("main_script.py");
    fs::write(
        &script,
        "import sys\nimport neighbour_module\nfirst_path = sys.path[0]\ngreeting = neighbour_module.GREETING\n",
    )
    .unwrap();
    runner.run_file(&script).await.unwrap();
    let folder = dir.path().canonicalize().unwrap();
    let first = runner.read_variable("first_path").await.unwrap();
    assert_eq!(
        fs::canonicalize(first.as_str().unwrap()).unwrap(),
        folder,
        "the file's folder is first on sys.path"
    );
    assert_eq!(
        runner.read_variable("greeting").await.unwrap(),
        json!("from next door")
    );
    assert!(runner
        .read_variable("__file__")
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .ends_with("main_script.py"));
}

pub async fn missing_file_is_an_error(runner: PyRunner) {
    let _sys_path = super::SYS_PATH.lock().await;
    match runner.run_file("/no/such/folder/script.py").await {
        Err(PyRunnerError::Python { kind, message, .. }) => {
            assert_eq!(kind, "FileNotFoundError");
            assert!(message.contains("/no/such/folder/script.py"), "{message}");
        }
        other => panic!("expected FileNotFoundError, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.py");
    fs::write(&broken, "def oops(:\n").unwrap();
    match runner.run_file(&broken).await {
        Err(PyRunnerError::Python {
            kind, traceback, ..
        }) => {
            assert_eq!(kind, "SyntaxError");
            assert!(traceback.unwrap_or_default().contains("broken.py"));
        }
        other => panic!("expected SyntaxError, got {other:?}"),
    }
}

pub async fn set_venv_adds_site_packages_and_honours_pth_files(runner: PyRunner) {
    let _sys_path = super::SYS_PATH.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let site_packages = make_venv(&base_python(), &venv);
    fs::create_dir_all(site_packages.join("venv_only_pkg")).unwrap();
    fs::write(
        site_packages.join("venv_only_pkg/__init__.py"),
        "ANSWER = 42\n",
    )
    .unwrap();
    // A .pth path line pointing at a folder outside site-packages …
    let extra = dir.path().join("extra_src");
    fs::create_dir_all(&extra).unwrap();
    fs::write(
        extra.join("pth_path_module.py"),
        "WHERE = 'pth path line'\n",
    )
    .unwrap();
    fs::write(
        site_packages.join("extra.pth"),
        format!("{}\n", extra.display()),
    )
    .unwrap();
    // … and a .pth import line, which runs when the folder is added.
    fs::write(
        site_packages.join("hook.pth"),
        "import os; os.environ['ASYNC_PY_PTH_HOOK'] = 'ran'\n",
    )
    .unwrap();

    assert!(
        runner.run("import venv_only_pkg").await.is_err(),
        "not importable before set_venv"
    );
    runner.set_venv(&venv).await.unwrap();
    runner
        .run("import venv_only_pkg, pth_path_module, os, sys\nanswer = venv_only_pkg.ANSWER\nwhere = pth_path_module.WHERE\nhook = os.environ.get('ASYNC_PY_PTH_HOOK')")
        .await
        .unwrap();
    assert_eq!(runner.read_variable("answer").await.unwrap(), json!(42));
    assert_eq!(
        runner.read_variable("where").await.unwrap(),
        json!("pth path line")
    );
    assert_eq!(runner.read_variable("hook").await.unwrap(), json!("ran"));
    let location = runner.eval("venv_only_pkg.__file__").await.unwrap();
    assert!(location
        .as_str()
        .unwrap()
        .starts_with(site_packages.to_str().unwrap()));
}

pub async fn set_venv_of_a_missing_folder_is_an_error(runner: PyRunner) {
    match runner.set_venv("/no/such/venv").await {
        Err(PyRunnerError::Python { kind, message, .. }) => {
            assert_eq!(kind, "FileNotFoundError");
            assert!(message.contains("/no/such/venv"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let not_a_venv = tempfile::tempdir().unwrap();
    assert!(
        runner.set_venv(not_a_venv.path()).await.is_err(),
        "a folder with no site-packages"
    );
    assert_eq!(runner.eval("1").await.unwrap(), json!(1));
}

/// The README's example: `set_venv` on a venv made by `python3 -m venv`, then import from it.
pub async fn set_venv_example_with_a_real_venv(runner: PyRunner) {
    let _sys_path = super::SYS_PATH.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join(".venv");
    let site_packages = make_venv(&base_python(), &venv);
    fs::write(
        site_packages.join("your_python_dependency.py"),
        "def hello():\n    return 'hi from the venv'\n",
    )
    .unwrap();
    runner.set_venv(std::path::Path::new(&venv)).await.unwrap();
    runner.run("import your_python_dependency").await.unwrap();
    assert_eq!(
        runner
            .call_function("your_python_dependency.hello", vec![])
            .await
            .unwrap(),
        json!("hi from the venv")
    );
}

/// A file whose name is not UTF-8 is run, not mistaken for a missing one:
/// Python gets the name as `os.fsdecode` gives it.
pub async fn run_file_takes_a_name_that_is_not_utf8(runner: PyRunner) {
    use std::os::unix::ffi::OsStrExt;
    let _sys_path = super::SYS_PATH.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let name = b"name_\xff.py";
    let script = dir.path().join(std::ffi::OsStr::from_bytes(name));
    fs::write(
        &script,
        "import os\ntail = list(os.fsencode(__file__)[-9:])\n",
    )
    .unwrap();
    runner.run_file(&script).await.unwrap();
    assert_eq!(
        runner.read_variable("tail").await.unwrap(),
        json!(name.to_vec())
    );
    let missing = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"gone_\xfe.py"));
    match runner.run_file(&missing).await {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "FileNotFoundError"),
        other => panic!("expected FileNotFoundError, got {other:?}"),
    }
}

/// A venv made by another CPython minor version (a real one, from pyenv) is
/// refused by name on CPython, before `sys.path` changes; RustPython, which
/// runs only the pure-Python packages of any venv, takes it.
pub async fn set_venv_of_another_python_version_is_named(runner: PyRunner) {
    let _sys_path = super::SYS_PATH.lock().await;
    let (python, version) = super::other_cpython();
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    make_venv(&python, &venv);
    let before = runner.eval("list(__import__('sys').path)").await.unwrap();
    let outcome = runner.set_venv(&venv).await;
    if runner.backend() == async_py::Backend::RustPython {
        outcome.expect("RustPython takes a venv of any CPython version");
        return;
    }
    let running = runner
        .eval("'%d.%d' % __import__('sys').version_info[:2]")
        .await
        .unwrap();
    match outcome {
        Err(PyRunnerError::Python { kind, message, .. }) => {
            assert_eq!(kind, "ImportError");
            assert!(
                message.contains(&format!("made for Python {version}")),
                "{message}"
            );
            assert!(
                message.contains(&format!("Python {}", running.as_str().unwrap())),
                "{message}"
            );
        }
        other => panic!("expected the versions named, got {other:?}"),
    }
    let after = runner.eval("list(__import__('sys').path)").await.unwrap();
    assert_eq!(before, after, "sys.path is untouched");
}
