//! Python exceptions arrive as structured errors and leave the runner working.

use async_py::{PyRunner, PyRunnerError};
use serde_json::json;

async fn expect_python_error(runner: &PyRunner, code: &str) -> (String, String, Option<String>) {
    match runner.run(code).await {
        Err(PyRunnerError::Python {
            kind,
            message,
            traceback,
        }) => (kind, message, traceback),
        other => panic!("{code:?}: expected a Python error, got {other:?}"),
    }
}

async fn still_works(runner: &PyRunner) {
    assert_eq!(
        runner.eval("40 + 2").await.unwrap(),
        json!(42),
        "the runner keeps working"
    );
}

pub async fn exceptions_arrive_structured_with_traceback(runner: PyRunner) {
    runner
        .run("def divide(a, b):\n    return a / b")
        .await
        .unwrap();
    match runner
        .call_function("divide", vec![json!(1), json!(0)])
        .await
    {
        Err(PyRunnerError::Python {
            kind,
            message,
            traceback,
        }) => {
            assert_eq!(kind, "ZeroDivisionError");
            assert_eq!(message, "division by zero");
            let traceback = traceback.expect("a traceback");
            assert!(traceback.contains("Traceback"), "{traceback}");
            assert!(traceback.contains("in divide"), "{traceback}");
            assert!(
                traceback.contains("ZeroDivisionError: division by zero"),
                "{traceback}"
            );
        }
        other => panic!("expected ZeroDivisionError, got {other:?}"),
    }
    still_works(&runner).await;
}

pub async fn display_names_the_exception_type(runner: PyRunner) {
    let err = runner.eval("{}['missing']").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("KeyError"), "{text}");
    assert!(text.contains("missing"), "{text}");
}

pub async fn syntax_errors_are_python_errors(runner: PyRunner) {
    let (kind, _, traceback) = expect_python_error(&runner, "def broken(:\n    pass").await;
    assert_eq!(kind, "SyntaxError");
    assert!(traceback.unwrap_or_default().contains("SyntaxError"));
    still_works(&runner).await;
}

pub async fn nul_bytes_are_errors(runner: PyRunner) {
    let (kind, message, _) = expect_python_error(&runner, "x = 1\0\nx = 2").await;
    assert!(
        kind == "ValueError" || kind == "SyntaxError",
        "{kind}: {message}"
    );
    assert!(message.contains("null"), "{message}");
    assert!(runner.eval("1\0").await.is_err());
    assert!(runner.read_variable("a\0b").await.is_err());
    assert!(runner.call_function("f\0", vec![]).await.is_err());
    still_works(&runner).await;
}

pub async fn deep_recursion_is_a_recursion_error(runner: PyRunner) {
    runner
        .run("def down(n):\n    return 0 if n == 0 else 1 + down(n - 1)")
        .await
        .unwrap();
    match runner.call_function("down", vec![json!(100_000)]).await {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "RecursionError"),
        other => panic!("expected RecursionError, got {other:?}"),
    }
    assert_eq!(
        runner
            .call_function("down", vec![json!(100)])
            .await
            .unwrap(),
        json!(100)
    );
}

pub async fn eval_of_a_statement_is_a_syntax_error(runner: PyRunner) {
    match runner.eval("x = 1").await {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "SyntaxError"),
        other => panic!("expected SyntaxError, got {other:?}"),
    }
    assert!(
        runner.read_variable("x").await.is_err(),
        "nothing was assigned"
    );
}

pub async fn system_exit_is_an_error(runner: PyRunner) {
    let (kind, message, _) = expect_python_error(&runner, "import sys\nsys.exit(3)").await;
    assert_eq!((kind.as_str(), message.as_str()), ("SystemExit", "3"));
    let (kind, _, _) = expect_python_error(&runner, "exit()").await;
    assert_eq!(kind, "SystemExit");
    still_works(&runner).await;
}

pub async fn keyboard_interrupt_is_an_error(runner: PyRunner) {
    let (kind, _, _) = expect_python_error(&runner, "raise KeyboardInterrupt").await;
    assert_eq!(kind, "KeyboardInterrupt");
    still_works(&runner).await;
}

pub async fn custom_exception_classes_keep_their_name(runner: PyRunner) {
    runner
        .run("class QuotaExceeded(Exception):\n    pass\ndef spend():\n    raise QuotaExceeded('over by 3')")
        .await
        .unwrap();
    match runner.call_function("spend", vec![]).await {
        Err(PyRunnerError::Python { kind, message, .. }) => {
            assert_eq!(kind, "QuotaExceeded");
            assert_eq!(message, "over by 3");
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
}

pub async fn lone_surrogates_in_an_error_arrive_escaped(runner: PyRunner) {
    let (kind, message, traceback) =
        expect_python_error(&runner, "raise ValueError('bad \\udc80 byte')").await;
    assert_eq!(kind, "ValueError");
    assert_eq!(message, "bad \\udc80 byte");
    assert!(traceback.unwrap().contains("ValueError: bad \\udc80 byte"));
    still_works(&runner).await;
}

/// Source nested 100 000 levels deep (brackets, unary and binary operators)
/// is a Python error or a value, on every backend, from `run`, `eval` and
/// `run_file`; it never overflows a stack, and the runner goes on.
pub async fn deeply_nested_source_never_crashes(runner: PyRunner) {
    let levels = 100_000;
    let sources = [
        format!("{}1{}", "(".repeat(levels), ")".repeat(levels)),
        format!("{}1", "-".repeat(levels)),
        format!("1{}", "+1".repeat(levels)),
    ];
    let dir = tempfile::tempdir().unwrap();
    for source in &sources {
        let evaluated = runner.eval(source).await;
        let ran = runner.run(&format!("x = {source}")).await;
        let file = dir.path().join("nested.py");
        std::fs::write(&file, format!("x = {source}\n")).unwrap();
        let ran_file = runner.run_file(&file).await;
        for outcome in [
            evaluated,
            ran.map(|_| json!(null)),
            ran_file.map(|_| json!(null)),
        ] {
            match outcome {
                Ok(_) | Err(PyRunnerError::Python { .. }) => {}
                other => panic!(
                    "{}…: expected a value or a Python error, got {other:?}",
                    &source[..8]
                ),
            }
        }
        still_works(&runner).await;
    }
}
