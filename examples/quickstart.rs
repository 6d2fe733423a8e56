//! The first example: define a Python function with state, call it twice.
use async_py::PyRunner;

#[tokio::main]
async fn main() {
    let runner = PyRunner::new();
    let code = r#"
counter = 0
def greet(name):
    global counter
    counter = counter + 1
    s = "" if counter < 2 else "s"
    return f"Hello {name}! Called {counter} time{s} from Python."
"#;
    // Python function "greet" and variable "counter" are added to globals
    runner.run(code).await.unwrap();
    let result1 = runner
        .call_function("greet", vec!["World".into()])
        .await
        .unwrap();
    println!("{}", result1.as_str().unwrap()); // Hello World! Called 1 time from Python.
    let result2 = runner
        .call_function("greet", vec!["World".into()])
        .await
        .unwrap();
    println!("{}", result2.as_str().unwrap()); // Hello World! Called 2 times from Python.
}
