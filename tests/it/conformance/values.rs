//! The value table, row by row, in both directions.

use async_py::{PyRunner, PyRunnerError, Value};
use serde_json::json;

async fn eval(runner: &PyRunner, expr: &str) -> Value {
    runner
        .eval(expr)
        .await
        .unwrap_or_else(|err| panic!("eval({expr}) failed: {err:?}"))
}

pub async fn none_round_trips(runner: PyRunner) {
    assert_eq!(eval(&runner, "None").await, Value::Null);
    runner
        .run("def is_none(x):\n    return x is None")
        .await
        .unwrap();
    assert_eq!(
        runner
            .call_function("is_none", vec![Value::Null])
            .await
            .unwrap(),
        json!(true)
    );
}

pub async fn bools_are_checked_before_ints(runner: PyRunner) {
    assert_eq!(eval(&runner, "True").await, json!(true));
    assert_eq!(eval(&runner, "False").await, json!(false));
    assert_eq!(eval(&runner, "[True, 1]").await, json!([true, 1]));
}

pub async fn ints_in_i64_and_u64_range(runner: PyRunner) {
    assert_eq!(eval(&runner, "-2**63").await, json!(i64::MIN));
    assert_eq!(eval(&runner, "2**63 - 1").await, json!(i64::MAX));
    assert_eq!(eval(&runner, "2**64 - 1").await, json!(u64::MAX));
    assert_eq!(eval(&runner, "0").await, json!(0));
    runner
        .run("def plus_one(x):\n    return x + 1")
        .await
        .unwrap();
    assert_eq!(
        runner
            .call_function("plus_one", vec![json!(i64::MAX)])
            .await
            .unwrap(),
        json!(9223372036854775808u64)
    );
    assert_eq!(
        runner
            .call_function("plus_one", vec![json!(u64::MAX - 1)])
            .await
            .unwrap(),
        json!(u64::MAX)
    );
}

pub async fn ints_past_64_bits_are_conversion_errors(runner: PyRunner) {
    for expr in ["2**64", "-2**63 - 1", "2**70", "[1, 2**100]"] {
        match runner.eval(expr).await {
            Err(PyRunnerError::Conversion(message)) => {
                assert!(message.contains("bits"), "{expr}: {message}")
            }
            other => panic!("{expr}: expected a Conversion error, got {other:?}"),
        }
    }
    match runner.eval("2**70").await {
        Err(PyRunnerError::Conversion(message)) => {
            assert!(message.contains("71 bits"), "{message}")
        }
        other => panic!("expected a Conversion error, got {other:?}"),
    }
    assert_eq!(eval(&runner, "1").await, json!(1), "the runner still works");
}

pub async fn floats_and_non_finite_floats(runner: PyRunner) {
    assert_eq!(eval(&runner, "1.5").await, json!(1.5));
    assert_eq!(eval(&runner, "-0.25").await, json!(-0.25));
    assert_eq!(eval(&runner, "float('nan')").await, Value::Null);
    assert_eq!(eval(&runner, "float('inf')").await, Value::Null);
    assert_eq!(
        eval(&runner, "[float('-inf'), 2.0]").await,
        json!([null, 2.0])
    );
}

pub async fn strings_keep_unicode(runner: PyRunner) {
    assert_eq!(
        eval(&runner, "'héllo wörld ✓ 🐍'").await,
        json!("héllo wörld ✓ 🐍")
    );
    assert_eq!(eval(&runner, "''").await, json!(""));
    runner
        .run("def length(s):\n    return len(s)")
        .await
        .unwrap();
    assert_eq!(
        runner
            .call_function("length", vec![json!("🐍🐍")])
            .await
            .unwrap(),
        json!(2)
    );
    assert_eq!(
        runner
            .call_function("length", vec![json!("a\0b")])
            .await
            .unwrap(),
        json!(3)
    );
}

pub async fn lists_and_tuples_become_arrays(runner: PyRunner) {
    assert_eq!(eval(&runner, "[1, 'a', None]").await, json!([1, "a", null]));
    assert_eq!(eval(&runner, "(1, (2, 3))").await, json!([1, [2, 3]]));
    assert_eq!(eval(&runner, "()").await, json!([]));
}

pub async fn sets_become_arrays(runner: PyRunner) {
    let mut got: Vec<i64> = serde_json::from_value(eval(&runner, "{3, 1, 2}").await).unwrap();
    got.sort();
    assert_eq!(got, vec![1, 2, 3]);
    assert_eq!(eval(&runner, "frozenset([7])").await, json!([7]));
    assert_eq!(eval(&runner, "set()").await, json!([]));
}

pub async fn dicts_become_objects_with_str_keys(runner: PyRunner) {
    assert_eq!(
        eval(&runner, "{'a': 1, 'b': [2]}").await,
        json!({"a": 1, "b": [2]})
    );
    assert_eq!(
        eval(&runner, "{1: 'one', (2, 3): 'pair', None: 0}").await,
        json!({"1": "one", "(2, 3)": "pair", "None": 0})
    );
}

pub async fn bytes_become_arrays_of_numbers(runner: PyRunner) {
    assert_eq!(
        eval(&runner, "b'\\x00\\x7f\\xff'").await,
        json!([0, 127, 255])
    );
    assert_eq!(eval(&runner, "bytearray(b'hi')").await, json!([104, 105]));
    assert_eq!(eval(&runner, "b''").await, json!([]));
}

pub async fn other_objects_become_their_str(runner: PyRunner) {
    assert_eq!(eval(&runner, "1+2j").await, json!("(1+2j)"));
    runner
        .run("class Point:\n    def __str__(self):\n        return 'Point(1, 2)'\np = Point()")
        .await
        .unwrap();
    assert_eq!(
        runner.read_variable("p").await.unwrap(),
        json!("Point(1, 2)")
    );
    runner
        .run("class Broken:\n    def __str__(self):\n        raise ValueError('no str')\nb = Broken()")
        .await
        .unwrap();
    match runner.read_variable("b").await {
        Err(PyRunnerError::Python { kind, .. }) => assert_eq!(kind, "ValueError"),
        other => panic!("expected the str() failure, got {other:?}"),
    }
}

pub async fn rust_values_arrive_with_python_types(runner: PyRunner) {
    runner
        .run("def describe(x):\n    return [type(x).__name__, x]")
        .await
        .unwrap();
    let cases = [
        (json!(null), json!(["NoneType", null])),
        (json!(true), json!(["bool", true])),
        (json!(-5), json!(["int", -5])),
        (json!(u64::MAX), json!(["int", u64::MAX])),
        (json!(2.5), json!(["float", 2.5])),
        (json!("s"), json!(["str", "s"])),
        (json!([1, [2]]), json!(["list", [1, [2]]])),
        (json!({"k": {"n": 1}}), json!(["dict", {"k": {"n": 1}}])),
    ];
    for (input, expected) in cases {
        assert_eq!(
            runner
                .call_function("describe", vec![input.clone()])
                .await
                .unwrap(),
            expected,
            "{input}"
        );
    }
}

pub async fn self_containing_values_are_conversion_errors(runner: PyRunner) {
    runner
        .run("loop_list = []\nloop_list.append(loop_list)")
        .await
        .unwrap();
    assert!(matches!(
        runner.read_variable("loop_list").await,
        Err(PyRunnerError::Conversion(_))
    ));
    runner
        .run("loop_dict = {}\nloop_dict['me'] = loop_dict")
        .await
        .unwrap();
    assert!(matches!(
        runner.read_variable("loop_dict").await,
        Err(PyRunnerError::Conversion(_))
    ));
    assert_eq!(eval(&runner, "2").await, json!(2));
}

pub async fn deep_values_are_conversion_errors(runner: PyRunner) {
    runner
        .run("deep = []\nfor _ in range(10000):\n    deep = [deep]")
        .await
        .unwrap();
    assert!(matches!(
        runner.read_variable("deep").await,
        Err(PyRunnerError::Conversion(_))
    ));
    let mut value = json!(1);
    for _ in 0..1_000 {
        value = json!([value]);
    }
    runner.run("def ident(x):\n    return x").await.unwrap();
    let outcome = runner.call_function("ident", vec![value]).await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Conversion(_))),
        "{outcome:?}"
    );
    runner.run("shallow = [[[[1]]]]").await.unwrap();
    assert_eq!(
        runner.read_variable("shallow").await.unwrap(),
        json!([[[[1]]]])
    );
}

pub async fn lone_surrogates_are_conversion_errors(runner: PyRunner) {
    assert!(matches!(
        runner.eval("'\\ud800'").await,
        Err(PyRunnerError::Conversion(_))
    ));
    assert_eq!(eval(&runner, "'ok'").await, json!("ok"));
}

/// The value table's limit is the same on every backend and both ways:
/// 200 levels of nesting cross, 201 do not.
pub async fn two_hundred_levels_cross_and_no_more(runner: PyRunner) {
    let nested = |levels: usize| {
        let mut value = json!(1);
        for _ in 0..levels {
            value = json!([value]);
        }
        value
    };
    runner
        .run("def ident(x):\n    return x\ndef nest(n):\n    v = 1\n    for _ in range(n):\n        v = [v]\n    return v")
        .await
        .unwrap();
    assert_eq!(
        runner
            .call_function("ident", vec![nested(200)])
            .await
            .unwrap(),
        nested(200)
    );
    let outcome = runner.call_function("ident", vec![nested(201)]).await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Conversion(_))),
        "{outcome:?}"
    );
    assert_eq!(
        runner
            .call_function("nest", vec![json!(200)])
            .await
            .unwrap(),
        nested(200)
    );
    let outcome = runner.call_function("nest", vec![json!(201)]).await;
    assert!(
        matches!(outcome, Err(PyRunnerError::Conversion(_))),
        "{outcome:?}"
    );
}

pub async fn lone_surrogates_in_keys_and_str_are_conversion_errors(runner: PyRunner) {
    runner
        .run("class Odd:\n    def __str__(self):\n        return '\\udc80'")
        .await
        .unwrap();
    for expr in ["{'\\ud800': 1}", "{Odd(): 1}", "Odd()"] {
        let outcome = runner.eval(expr).await;
        assert!(
            matches!(outcome, Err(PyRunnerError::Conversion(_))),
            "{expr}: {outcome:?}"
        );
    }
    assert_eq!(eval(&runner, "{'ok': 1}").await, json!({"ok": 1}));
}

/// Subclasses of int, float and str cross as the value they hold, whatever
/// their own `__int__`, `__float__`, `__str__` or `encode` say.
pub async fn subclasses_cross_as_the_value_they_hold(runner: PyRunner) {
    runner
        .run(concat!(
            "class I(int):\n    def __int__(self):\n        return 99\n",
            "class F(float):\n    def __float__(self):\n        return 9.5\n",
            "class S(str):\n    def __str__(self):\n        return 'other'\n",
            "    def encode(self, *a):\n        return b'HACK'\n",
            "class K:\n    def __str__(self):\n        return S('key')\n",
        ))
        .await
        .unwrap();
    assert_eq!(
        eval(&runner, "[I(5), F(1.5), S('text'), {S('k'): 1, K(): 2}]").await,
        json!([5, 1.5, "text", {"k": 1, "key": 2}])
    );
}

/// `str()` of an item may change the container being read (its own code
/// runs): the container crosses as it was when the reading began.
pub async fn containers_changed_while_read_cross_as_they_were(runner: PyRunner) {
    runner
        .run(
            "class Grow:\n\
             \x20   def __init__(self, box):\n\
             \x20       self.box = box\n\
             \x20   def __str__(self):\n\
             \x20       if isinstance(self.box, dict):\n\
             \x20           self.box['k%d' % len(self.box)] = 1\n\
             \x20       elif isinstance(self.box, list):\n\
             \x20           self.box.append(0)\n\
             \x20       else:\n\
             \x20           self.box.add(len(self.box))\n\
             \x20       return 'grew'\n\
             d = {}\nd['a'] = Grow(d)\nd['b'] = 2\n\
             l = []\nl.append(Grow(l))\nl.append(2)\n\
             s = set()\ns.add(Grow(s))",
        )
        .await
        .unwrap();
    assert_eq!(
        runner.read_variable("d").await.unwrap(),
        json!({"a": "grew", "b": 2})
    );
    assert_eq!(runner.read_variable("l").await.unwrap(), json!(["grew", 2]));
    assert_eq!(runner.read_variable("s").await.unwrap(), json!(["grew"]));
    assert_eq!(
        eval(&runner, "len(d), len(l), len(s)").await,
        json!([3, 3, 2])
    );
}

/// The rows after the exact types, with standard-library objects: anything
/// with `__index__`, a `numbers.Real`, `tolist()`, a dataclass, a mapping,
/// and dates and times.
pub async fn objects_of_the_later_rows_cross_as_values(runner: PyRunner) {
    runner
        .run(
            r#"
import array, dataclasses, datetime, fractions, types

class Index:
    def __index__(self):
        return 7

class Listable:
    def tolist(self):
        return [1, Index(), "x"]

@dataclasses.dataclass
class Inner:
    tags: list

@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner

class Settings(__import__("collections.abc").abc.Mapping):
    def __init__(self):
        self.data = {"a": 1, 2: "b"}
    def __getitem__(self, key):
        return self.data[key]
    def __iter__(self):
        return iter(self.data)
    def __len__(self):
        return len(self.data)
"#,
        )
        .await
        .unwrap();
    let cases = [
        ("Index()", json!(7)),
        ("fractions.Fraction(1, 4)", json!(0.25)),
        ("array.array('i', [1, 2, 3])", json!([1, 2, 3])),
        ("array.array('d', [0.5, float('nan')])", json!([0.5, null])),
        ("Listable()", json!([1, 7, "x"])),
        (
            "Outer('o', Inner([Index(), (1, 2)]))",
            json!({"name": "o", "inner": {"tags": [7, [1, 2]]}}),
        ),
        ("Settings()", json!({"a": 1, "2": "b"})),
        ("types.MappingProxyType({'k': [1]})", json!({"k": [1]})),
        (
            "datetime.datetime(2024, 5, 6, 7, 8, 9)",
            json!("2024-05-06T07:08:09"),
        ),
        ("datetime.date(2024, 5, 6)", json!("2024-05-06")),
        ("datetime.time(7, 8)", json!("07:08:00")),
        // A class is not a dataclass instance, and a complex is no Real.
        ("Inner", json!("<class '__main__.Inner'>")),
        ("1+2j", json!("(1+2j)")),
    ];
    for (expr, expected) in cases {
        assert_eq!(eval(&runner, expr).await, expected, "eval({expr})");
    }
    // The rows hold for arguments' results, nested, as for eval.
    runner
        .run("def wrap(x):\n    return {'when': datetime.date(2000, 1, x), 'n': Index()}")
        .await
        .unwrap();
    assert_eq!(
        runner.call_function("wrap", vec![json!(2)]).await.unwrap(),
        json!({"when": "2000-01-02", "n": 7})
    );
}

/// An object whose `tolist()` gives itself again is cut at the depth limit,
/// not followed for ever; an `__index__` past 64 bits is the int's error.
pub async fn later_rows_keep_the_limits(runner: PyRunner) {
    runner
        .run(
            "class Loop:\n    def tolist(self):\n        return self\n\
             class Huge:\n    def __index__(self):\n        return 2**70",
        )
        .await
        .unwrap();
    match runner.eval("Loop()").await {
        Err(PyRunnerError::Conversion(message)) => {
            assert!(message.contains("nests deeper"), "{message}")
        }
        other => panic!("expected a Conversion error, got {other:?}"),
    }
    match runner.eval("Huge()").await {
        Err(PyRunnerError::Conversion(message)) => assert!(message.contains("71"), "{message}"),
        other => panic!("expected a Conversion error, got {other:?}"),
    }
    assert_eq!(eval(&runner, "1 + 1").await, json!(2), "the runner goes on");
}

/// numpy's values, from a real numpy in a venv: numbers, bools and arrays
/// arrive as values, not as their repr. CPython backends only.
pub async fn numpy_values_cross_as_values(runner: PyRunner) {
    runner
        .eval("__import__('numpy').__version__")
        .await
        .expect("numpy imports in this runner");
    runner.run("import numpy as np").await.unwrap();
    let cases = [
        ("np.arange(10).sum()", json!(45)),
        ("np.int8(-3)", json!(-3)),
        ("np.uint64(2**64 - 1)", json!(u64::MAX)),
        ("np.float32(0.5)", json!(0.5)),
        ("np.float64('nan')", json!(null)),
        ("np.float32('inf')", json!(null)),
        ("np.bool_(True)", json!(true)),
        ("[np.True_, np.False_]", json!([true, false])),
        ("np.arange(3) * 2", json!([0, 2, 4])),
        (
            "np.array([[1.5, 2], [3, 4]])",
            json!([[1.5, 2.0], [3.0, 4.0]]),
        ),
        ("np.array(['a', 'b'])", json!(["a", "b"])),
        ("{'mean': np.mean([1, 2])}", json!({"mean": 1.5})),
    ];
    for (expr, expected) in cases {
        assert_eq!(eval(&runner, expr).await, expected, "eval({expr})");
    }
    // Not a truncated repr: every one of 2000 items arrives.
    let long = eval(&runner, "np.arange(2000)").await;
    let items = long.as_array().expect("an array");
    assert_eq!(items.len(), 2000);
    assert_eq!(items[1999], json!(1999));
}

/// An argument nested 100 000 deep is a `Conversion` error on every
/// backend, from a tokio task's 2 MiB stack, and the runner goes on.
pub async fn arguments_nested_past_any_stack_are_conversion_errors(runner: PyRunner) {
    let mut deep = json!(1);
    for _ in 0..100_000 {
        deep = Value::Array(vec![deep]);
    }
    let mut deep_map = json!(1);
    for _ in 0..100_000 {
        // Not json!: it would serialize the inner value, recursively.
        let mut map = serde_json::Map::new();
        map.insert("k".to_owned(), deep_map);
        deep_map = Value::Object(map);
    }
    let call = {
        let runner = runner.clone();
        tokio::spawn(async move {
            let first = runner.call_function("len", vec![deep]).await;
            let second = runner
                .call_async_function("len", vec![json!(1), deep_map])
                .await;
            (first, second)
        })
    };
    let (first, second) = call.await.expect("the task did not overflow its stack");
    for outcome in [first, second] {
        match outcome {
            Err(PyRunnerError::Conversion(message)) => {
                assert!(message.contains("nests deeper"), "{message}")
            }
            other => panic!("expected a Conversion error, got {other:?}"),
        }
    }
    assert_eq!(eval(&runner, "2 + 2").await, json!(4));
}
