//! The output table: a small call plain and with its output captured, per
//! backend (`cargo run --release --example bench -- output`).

use std::time::{Duration, Instant};

use super::{builder_for, median, micros, print_backend_table, ADD, BACKENDS};

/// A round is `TURNS` turns of `CALLS` plain calls then `CALLS` captured
/// ones, so that both see the same load on a shared machine.
const CALLS: usize = 500;
const TURNS: usize = 10;
const ROUNDS: usize = 5;

/// The median plain and captured call of one round.
fn round(mut plain: impl FnMut(), mut captured: impl FnMut()) -> (Duration, Duration) {
    let mut samples = [
        Vec::with_capacity(CALLS * TURNS),
        Vec::with_capacity(CALLS * TURNS),
    ];
    for _ in 0..TURNS {
        for _ in 0..CALLS {
            let start = Instant::now();
            plain();
            samples[0].push(start.elapsed());
        }
        for _ in 0..CALLS {
            let start = Instant::now();
            captured();
            samples[1].push(start.elapsed());
        }
    }
    let [plain, captured] = samples;
    (median(plain), median(captured))
}

pub fn output_table() {
    let mut rows: [Vec<String>; 3] = Default::default();
    for &backend in BACKENDS {
        let runner = builder_for(backend).build().expect("backend starts");
        runner.run_sync(ADD).unwrap();
        let mut plain = || {
            let sum: i64 = runner.call("add").args((1, 2)).returns().wait().unwrap();
            assert_eq!(sum, 3);
        };
        let mut captured = || {
            let got = runner
                .call("add")
                .args((1, 2))
                .returns::<i64>()
                .capture_output()
                .wait()
                .unwrap();
            assert_eq!((got.value, got.stdout.len()), (3, 0));
        };
        // Warm both paths (the first capture routes sys.stdout).
        for _ in 0..1000 {
            plain();
            captured();
        }
        let (mut plains, mut captures, mut added) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (p, c) = round(&mut plain, &mut captured);
            plains.push(p);
            captures.push(c);
            added.push(c.as_secs_f64() * 1e6 - p.as_secs_f64() * 1e6);
        }
        let spread = |samples: &[Duration]| {
            let low = samples.iter().min().unwrap();
            let high = samples.iter().max().unwrap();
            format!(
                "{} ({}–{})",
                micros(median(samples.to_vec())),
                micros(*low),
                micros(*high)
            )
        };
        rows[0].push(spread(&plains));
        rows[1].push(spread(&captures));
        let low = added.iter().cloned().fold(f64::INFINITY, f64::min);
        let high = added.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        rows[2].push(format!(
            "{:+.1} µs ({low:+.1}–{high:+.1})",
            median(added.clone())
        ));
        runner.stop_sync().unwrap();
    }
    let labels = [
        "`call(\"add\").args((1, 2)).returns::<i64>().wait()`, median (range) of 5 rounds' medians of 5000 calls",
        "the same `.capture_output().wait()`, in turns of 500 with the plain calls",
        "added by the capture: median (range) of the rounds' differences",
    ];
    print_backend_table("output", &labels, rows);
}
