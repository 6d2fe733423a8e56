//! The blocking twins work with no runtime and inside either tokio runtime.

use std::fs;
use std::thread;

use async_py::PyRunner;
use serde_json::json;

pub fn twins_work_from_plain_threads(runner: PyRunner) {
    runner.run_sync("def square(x):\n    return x * x").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let runner = runner.clone();
            thread::spawn(move || {
                for i in 0..200 {
                    let n = t * 1000 + i;
                    assert_eq!(
                        runner.call_function_sync("square", vec![json!(n)]).unwrap(),
                        json!(n * n)
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

pub fn twins_work_inside_a_current_thread_runtime(runner: PyRunner) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        runner
            .run_sync(
                "import asyncio\nasync def later(v):\n    await asyncio.sleep(0.01)\n    return v",
            )
            .unwrap();
        assert_eq!(runner.eval_sync("2 + 2").unwrap(), json!(4));
        if super::runs_coroutines_sync(&runner) {
            assert_eq!(
                runner
                    .call_async_function_sync("later", vec![json!("x")])
                    .unwrap(),
                json!("x")
            );
        }
        // Mixed with awaited commands on the same thread.
        assert_eq!(runner.eval("3 + 3").await.unwrap(), json!(6));
        let spawned = tokio::spawn({
            let runner = runner.clone();
            async move { runner.eval_sync("5 + 5") }
        });
        assert_eq!(spawned.await.unwrap().unwrap(), json!(10));
    });
}

pub fn twins_work_inside_a_multi_thread_runtime(runner: PyRunner) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let runner = runner.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        runner.eval_sync(&format!("{i} * 2")).unwrap()
                    } else {
                        runner.eval(&format!("{i} * 2")).await.unwrap()
                    }
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), json!(i * 2));
        }
    });
}

pub fn every_twin_does_its_job(runner: PyRunner) {
    let _sys_path = super::sys_path_lock();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("twin_script.py");
    fs::write(&script, "from_file = 'yes'\n").unwrap();
    let venv = dir.path().join("venv");
    let site_packages = super::make_venv(&super::base_python(), &venv);
    fs::write(site_packages.join("twin_pkg.py"), "VALUE = 'from venv'\n").unwrap();

    runner.run_sync("import asyncio\nasync def twice(x):\n    await asyncio.sleep(0)\n    return 2 * x\ndef add(a, b):\n    return a + b").unwrap();
    runner.run_file_sync(&script).unwrap();
    assert_eq!(
        runner.read_variable_sync("from_file").unwrap(),
        json!("yes")
    );
    assert_eq!(runner.eval_sync("[1] * 2").unwrap(), json!([1, 1]));
    assert_eq!(
        runner
            .call_function_sync("add", vec![json!(1), json!(2)])
            .unwrap(),
        json!(3)
    );
    if super::runs_coroutines_sync(&runner) {
        assert_eq!(
            runner
                .call_async_function_sync("twice", vec![json!(21)])
                .unwrap(),
            json!(42)
        );
    }
    runner.set_venv_sync(&venv).unwrap();
    runner.run_sync("import twin_pkg").unwrap();
    assert_eq!(
        runner.read_variable_sync("twin_pkg.VALUE").unwrap(),
        json!("from venv")
    );
    runner.stop_sync().unwrap();
    assert!(runner.eval_sync("1").is_err());
}
