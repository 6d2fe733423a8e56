//! The README's first examples, as a user writes them.

use async_py::{PyRunner, PyRunnerError};
use serde_json::Value;
use std::thread;

pub async fn greet_counter(runner: PyRunner) {
    let code = r#"
counter = 0
def greet(name):
    global counter
    counter = counter + 1
    s = "" if counter < 2 else "s"
    return f"Hello {name}! Called {counter} time{s} from Python."
"#;
    runner.run(code).await.unwrap();
    let result1 = runner
        .call_function("greet", vec!["World".into()])
        .await
        .unwrap();
    assert_eq!(
        result1.as_str().unwrap(),
        "Hello World! Called 1 time from Python."
    );
    let result2 = runner
        .call_function("greet", vec!["World".into()])
        .await
        .unwrap();
    assert_eq!(
        result2.as_str().unwrap(),
        "Hello World! Called 2 times from Python."
    );
}

pub async fn add_and_sleep_overlap(runner: PyRunner) {
    if !crate::conformance::runs_coroutines(&runner).await {
        return;
    }
    let code = r#"
import asyncio
counter = 0

async def add_and_sleep(a, b, sleep_time):
    global counter
    await asyncio.sleep(sleep_time)
    counter += 1
    return a + b + counter
"#;
    runner.run(code).await.unwrap();
    let result1 = runner.call_async_function("add_and_sleep", vec![5.into(), 10.into(), 1.into()]);
    let result2 =
        runner.call_async_function("add_and_sleep", vec![5.into(), 10.into(), 0.1.into()]);
    let (result1, result2) = tokio::join!(result1, result2);
    assert_eq!(result1.unwrap(), Value::Number(17.into()));
    assert_eq!(result2.unwrap(), Value::Number(16.into()));
}

pub fn five_threads_add_to_x(runner: PyRunner) {
    fn example(runner: PyRunner) -> Result<(), PyRunnerError> {
        runner.run_sync("x = 0")?;
        let mut handles = vec![];
        for i in 0..5 {
            let runner_clone = runner.clone();
            let handle = thread::spawn(move || {
                // Use the _sync versions for non-async contexts
                runner_clone.run_sync(&format!("x += {}", i)).unwrap();
            });
            handles.push(handle);
        }
        for handle in handles {
            handle.join().unwrap();
        }
        let final_x = runner.read_variable_sync("x")?;
        // Expected: 0 + 1 + 2 + 3 + 4 = 10
        assert_eq!(final_x, Value::Number(10.into()));
        runner.stop_sync()?;
        Ok(())
    }
    example(runner).unwrap();
}
