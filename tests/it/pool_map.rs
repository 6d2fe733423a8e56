//! PyPool::map: one result per input, in input order, each failure in its own slot.

use crate::pool;

use async_py::{PyRunnerError, Value};

const DEFS: &str = r#"
import os, random, time
def square_unless_seventh(x):
    time.sleep(random.random() / 2000)  # finish out of order
    if x % 7 == 0:
        raise ValueError("seventh: %d" % x)
    return [x * x, os.getpid()]
"#;

#[tokio::test]
async fn results_come_back_in_input_order_with_errors_in_place() {
    let pool = pool::pool(2);
    pool.run(DEFS).await.unwrap();
    let inputs: Vec<Vec<Value>> = (0..500).map(|x| vec![Value::from(x)]).collect();
    let results = pool.map("square_unless_seventh", inputs).await;
    assert_eq!(results.len(), 500);
    let mut pids = std::collections::BTreeSet::new();
    for (x, result) in results.into_iter().enumerate() {
        if x % 7 == 0 {
            match result {
                Err(PyRunnerError::Python { kind, message, .. }) => {
                    assert_eq!(kind, "ValueError");
                    assert_eq!(message, format!("seventh: {x}"));
                }
                other => panic!("input {x}: expected its ValueError, got {other:?}"),
            }
        } else {
            let value = result.unwrap();
            assert_eq!(value[0], Value::from(x * x), "input {x}");
            pids.insert(value[1].as_u64().unwrap());
        }
    }
    assert_eq!(pids.len(), 2, "the calls were spread over both workers");
}

#[tokio::test]
async fn a_call_made_during_a_long_map_waits_behind_little_of_it() {
    // Calls of 40 ms: the map keeps only a few of them queued (2 a worker),
    // so a call made while it runs waits for a few of its calls to finish
    // (about 4 here); with the 16 a worker of a fixed window it would wait
    // for about 32. The bound leaves room for a machine so busy that the
    // call itself is late.
    let pool = pool::pool(2);
    pool.run("import time\ndef nap(i):\n    time.sleep(0.04)\n    return i")
        .await
        .unwrap();
    let served = |pool: &async_py::PyPool| pool.stats().iter().map(|w| w.calls).sum::<u64>();
    let mapping = {
        let pool = pool.clone();
        let inputs: Vec<Vec<Value>> = (0..80).map(|i| vec![Value::from(i)]).collect();
        tokio::spawn(async move { pool.map("nap", inputs).await })
    };
    while served(&pool) < 10 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = served(&pool);
    assert_eq!(pool.eval("6 * 7").await.unwrap(), Value::from(42));
    let behind = served(&pool) - before;
    let results = mapping.await.unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert!(
        behind <= 16,
        "the call waited for {behind} of the map's calls to finish"
    );
}

#[test]
fn map_sync_handles_empty_input_bad_names_and_conversion_errors() {
    let pool = pool::pool(2);
    assert!(pool.map_sync("anything", Vec::new()).is_empty());
    let missing = pool.map_sync("no_such_function", vec![vec![], vec![]]);
    assert_eq!(missing.len(), 2);
    for result in missing {
        assert!(
            matches!(result, Err(PyRunnerError::Python { ref kind, .. }) if kind == "NameError")
        );
    }
    pool.run_sync("def back(x):\n    return x if x != 'set' else {1, 2} and object()")
        .unwrap();
    let results = pool.map_sync(
        "back",
        vec![
            vec!["a\0b".into()],
            vec!["set".into()],
            vec![Value::from(u64::MAX)],
        ],
    );
    assert_eq!(results[0].as_ref().unwrap(), "a\0b");
    assert!(
        results[1].is_ok(),
        "an object becomes its str: {:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().unwrap(), &Value::from(u64::MAX));
}

#[tokio::test]
async fn a_map_after_stop_fails_every_item_with_stopped() {
    let pool = pool::pool(1);
    pool.stop().await.unwrap();
    let results = pool.map("f", vec![vec![]; 3]).await;
    assert!(results
        .into_iter()
        .all(|r| matches!(r, Err(PyRunnerError::Stopped))));
}
