//! One queue per runner: every clone's commands run one at a time, in order.

use std::thread;

use async_py::PyRunner;
use serde_json::json;

pub async fn many_tasks_get_their_own_results(runner: PyRunner) {
    runner
        .run("def tag(task, i):\n    return [task, i, task * 1000 + i]")
        .await
        .unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let runner = runner.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let got = runner
                        .call_function("tag", vec![json!(task), json!(i)])
                        .await
                        .unwrap();
                    assert_eq!(got, json!([task, i, task * 1000 + i]));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

pub async fn commands_from_clones_keep_send_order(runner: PyRunner) {
    runner
        .run("log = []\ndef note(who, i):\n    log.append([who, i])")
        .await
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|who| {
            let runner = runner.clone();
            thread::spawn(move || {
                for i in 0..250 {
                    runner
                        .call_function_sync("note", vec![json!(who), json!(i)])
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let log: Vec<(u32, u32)> =
        serde_json::from_value(runner.read_variable("log").await.unwrap()).unwrap();
    assert_eq!(log.len(), 1000);
    for who in 0..4 {
        let mine: Vec<u32> = log
            .iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(
            mine,
            (0..250).collect::<Vec<_>>(),
            "sender {who} kept its order"
        );
    }
    // Sends from one task without waiting in between keep their order too.
    runner.run("log.clear()").await.unwrap();
    let first = runner.run("log.append('first')");
    let second = runner.run("log.append('second')");
    let third = runner.eval("list(log)");
    let (a, b, c) = tokio::join!(first, second, third);
    a.unwrap();
    b.unwrap();
    assert_eq!(c.unwrap(), json!(["first", "second"]));
}

pub async fn dropped_unsent_command_never_runs(runner: PyRunner) {
    let never = runner.run("dropped_marker = 1");
    drop(never);
    runner.run("kept_marker = 1").await.unwrap();
    assert!(runner.read_variable("dropped_marker").await.is_err());
    assert_eq!(runner.read_variable("kept_marker").await.unwrap(), json!(1));
}

pub async fn two_runners_keep_globals_apart(runner: PyRunner) {
    let other = runner.clone();
    // A clone shares globals …
    runner.run("shared = 'same runner'").await.unwrap();
    assert_eq!(
        other.read_variable("shared").await.unwrap(),
        json!("same runner")
    );
    // … a second runner of the same backend does not.
    let second = crate::conformance::another_runner(&runner);
    second
        .run("shared = 'second runner'\nonly_second = 1")
        .await
        .unwrap();
    assert_eq!(
        runner.read_variable("shared").await.unwrap(),
        json!("same runner")
    );
    assert!(runner.read_variable("only_second").await.is_err());
    assert_eq!(
        second.read_variable("shared").await.unwrap(),
        json!("second runner")
    );
}
