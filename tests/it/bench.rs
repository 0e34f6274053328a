//! The benchmarks stay runnable: each runs small and prints its figures. No figure is
//! asserted against a target (timings on a shared machine are not test results).

use crate::support::{Work, run_to_end};

fn assert_ran(args: &[&str], lines: &[&str]) {
    let w = Work::new();
    let (code, out, err) = run_to_end(w.dir.path(), args);
    assert_eq!(code, 0, "tether {args:?}\nstdout:\n{out}\nstderr:\n{err}");
    for line in lines {
        assert!(
            out.contains(line),
            "tether {args:?} printed no {line:?}\nstdout:\n{out}\nstderr:\n{err}"
        );
    }
}

#[test]
fn the_agent_bench_prints_its_figures() {
    assert_ran(
        &[
            "bench",
            "--changes",
            "20",
            "--entries",
            "50",
            "--idle-secs",
            "1",
        ],
        &["change → SIGUSR1", "p99", "peak RSS (VmHWM)", "idle CPU"],
    );
}

#[test]
fn the_node_bench_prints_its_figures() {
    assert_ran(
        &[
            "bench",
            "agents",
            "--count",
            "50",
            "--fanouts",
            "3",
            "--changes",
            "20",
            "--write-secs",
            "1",
        ],
        &[
            "put → child signal through one node",
            "change sets/s",
            "per connection",
            "one change → all 50 clients",
            "the machine's floor",
            "CPU time per fan-out: sender",
            "over this floor",
        ],
    );
}

#[test]
fn the_cluster_bench_prints_its_figures() {
    assert_ran(
        &[
            "bench",
            "agents",
            "--nodes",
            "3",
            "--count",
            "60",
            "--fanouts",
            "3",
            "--changes",
            "20",
            "--write-secs",
            "1",
        ],
        &[
            "write through node 2 → child of an agent on node 1",
            "redis store",
            "one change → all 60 clients",
        ],
    );
}
