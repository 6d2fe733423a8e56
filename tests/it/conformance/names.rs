//! Dotted names: the first part from globals (then builtins), the rest as attributes.

use async_py::{PyRunner, PyRunnerError};
use serde_json::json;

fn kind_of(outcome: Result<serde_json::Value, PyRunnerError>) -> String {
    match outcome {
        Err(PyRunnerError::Python { kind, .. }) => kind,
        other => panic!("expected a Python error, got {other:?}"),
    }
}

pub async fn dotted_names_resolve_through_attributes(runner: PyRunner) {
    runner
        .run("import os.path, math\nclass Config:\n    class db:\n        port = 5432\n")
        .await
        .unwrap();
    assert_eq!(
        runner.read_variable("os.path.sep").await.unwrap(),
        json!("/")
    );
    assert_eq!(
        runner.read_variable("Config.db.port").await.unwrap(),
        json!(5432)
    );
    assert_eq!(
        runner
            .call_function("math.sqrt", vec![json!(16)])
            .await
            .unwrap(),
        json!(4.0)
    );
    assert_eq!(
        runner
            .call_function("os.path.join", vec![json!("a"), json!("b")])
            .await
            .unwrap(),
        json!("a/b")
    );
}

pub async fn builtins_are_found(runner: PyRunner) {
    assert_eq!(
        runner
            .call_function("len", vec![json!([1, 2, 3])])
            .await
            .unwrap(),
        json!(3)
    );
    assert_eq!(
        runner
            .call_function("max", vec![json!(4), json!(9)])
            .await
            .unwrap(),
        json!(9)
    );
}

pub async fn missing_names_are_name_errors(runner: PyRunner) {
    assert_eq!(kind_of(runner.read_variable("nowhere").await), "NameError");
    assert_eq!(
        kind_of(runner.call_function("nowhere", vec![]).await),
        "NameError"
    );
    assert_eq!(kind_of(runner.read_variable("").await), "NameError");
}

pub async fn missing_attributes_are_attribute_errors(runner: PyRunner) {
    runner.run("import math").await.unwrap();
    assert_eq!(
        kind_of(runner.read_variable("math.nothing_here").await),
        "AttributeError"
    );
    assert_eq!(
        kind_of(runner.call_function("math.", vec![]).await),
        "AttributeError"
    );
}

pub async fn calling_a_non_callable_is_a_type_error(runner: PyRunner) {
    runner.run("number = 3").await.unwrap();
    assert_eq!(
        kind_of(runner.call_function("number", vec![]).await),
        "TypeError"
    );
    runner.run("def one(a):\n    return a").await.unwrap();
    assert_eq!(
        kind_of(runner.call_function("one", vec![]).await),
        "TypeError"
    );
}
