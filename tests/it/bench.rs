//! The benchmarks stay runnable: each runs small and prints its figures. No figure is
//! asserted against a target (timings on a shared machine are not test results).

use crate::support::{BENCH_BIN, Work, run_bin_to_end};

/// Run `tether-bench ARGS`, check it printed each of `lines`; returns what it printed.
fn assert_ran(args: &[&str], lines: &[&str]) -> String {
    let w = Work::new();
    let (code, out, err) = run_bin_to_end(BENCH_BIN, w.dir.path(), args, &[]);
    assert_eq!(
        code, 0,
        "tether-bench {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    for line in lines {
        assert!(
            out.contains(line),
            "tether-bench {args:?} printed no {line:?}\nstdout:\n{out}\nstderr:\n{err}"
        );
    }
    out
}

#[test]
fn the_agent_bench_prints_its_figures() {
    assert_ran(
        &[
            "file",
            "--changes",
            "20",
            "--entries",
            "50",
            "--idle-secs",
            "1",
            "--template",
        ],
        &[
            "change → SIGUSR1",
            "p99",
            "peak RSS (VmHWM)",
            "idle CPU",
            "200-line template over 50 values",
        ],
    );
}

/// Twelve rounds: blocks of ten and two, each of the node's followed by the floor's, so
/// that the clients are closed and opened again between them.
#[test]
fn the_node_bench_prints_its_figures() {
    let out = assert_ran(
        &[
            "agents",
            "--count",
            "50",
            "--fanouts",
            "12",
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
    assert_eq!(out.matches("over 12 changes").count(), 2, "{out}");
    assert!(!out.contains("not measured"), "{out}");
}

#[test]
fn the_cluster_bench_prints_its_figures() {
    assert_ran(
        &[
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

/// tether and keyshade-run.js (Node.js) following the keyshade test server, and the floor.
#[test]
fn the_keyshade_bench_prints_its_figures() {
    assert_ran(
        &["keyshade", "--events", "3", "--idle-secs", "1"],
        &[
            "tether (signal)",
            "keyshade run (node)",
            "peak RSS (VmHWM)",
            "event → child p99",
            "floor: a bare Socket.IO client",
            "peak RSS",
        ],
    );
}

/// Six agents under max_unavailable 2 with a short bake: the rollout bench completes and
/// prints its figures (needs the node's rollout routes and the agents' health reports).
#[test]
fn the_rollout_bench_prints_its_figures() {
    assert_ran(
        &[
            "rollout",
            "--agents",
            "6",
            "--max-unavailable",
            "2",
            "--bake",
            "200ms",
            "--solo-rounds",
            "1",
        ],
        &[
            "one agent alone, write → healthy (restart + bake)",
            "6 agents started and healthy",
            "write → every agent healthy (6 agents, max_unavailable 2)",
            "ideal (3 rounds × ",
            "ratio to the ideal",
        ],
    );
}
