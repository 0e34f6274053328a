//! The rollout verbs against a real node: `tether policy set|get|clear`, `tether rollout
//! resume`, and the rollout in `tether status` (text, `--json`, `--watch` and its exit codes).

use serde_json::Value as Json;

use crate::rollout_e2e::fleet::{ENV, Fleet};
use crate::support::strip_ansi;

fn ok(f: &Fleet, args: &[&str]) -> String {
    let (code, out, err) = f.cli(args);
    assert_eq!(code, 0, "tether {args:?}:\n{out}{err}");
    out
}

#[test]
fn a_policy_is_set_read_and_cleared() {
    let f = Fleet::start(1, &[]);
    let out = ok(&f, &["policy", "get", "--env", ENV]);
    assert!(out.contains("no policy"), "{out}");
    let out = ok(&f, &["policy", "get", "--env", ENV, "--json"]);
    let json: Json = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["policy"], Json::Null, "{out}");

    let out = ok(
        &f,
        &[
            "policy",
            "set",
            "--env",
            ENV,
            "--max-unavailable",
            "10%",
            "--waves",
            "1,10%,50%,100%",
            "--bake",
            "30s",
            "--max-failures",
            "2",
            "--signals",
        ],
    );
    assert!(out.contains("policy set"), "{out}");
    let out = ok(&f, &["policy", "get", "--env", ENV]);
    for line in [
        "max_unavailable: 10%",
        "waves: 1,10%,50%,100%",
        "bake: 30s",
        "max_failures: 2",
        "signals: take slots too",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
    }
    let out = ok(&f, &["policy", "get", "--env", ENV, "--json"]);
    let json: Json = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["policy"]["max_unavailable"], "10%", "{out}");
    assert_eq!(json["policy"]["bake_ms"], 30000, "{out}");
    assert_eq!(json["policy"]["waves"][0], 1, "{out}");

    let out = ok(&f, &["policy", "clear", "--env", ENV]);
    assert!(out.contains("cleared"), "{out}");
    let out = ok(&f, &["policy", "get", "--env", ENV]);
    assert!(out.contains("no policy"), "{out}");
}

#[test]
fn a_bad_policy_is_refused_before_anything_is_sent() {
    let f = Fleet::start(1, &[]);
    ok(
        &f,
        &["policy", "set", "--env", ENV, "--max-unavailable", "3"],
    );
    for (args, flag) in [
        (&["--max-unavailable", "0"][..], "--max-unavailable"),
        (&["--max-unavailable", "101%"][..], "--max-unavailable"),
        (
            &["--max-unavailable", "2", "--waves", "50%,10%"][..],
            "--waves",
        ),
        (&["--max-unavailable", "2", "--bake", "soon"][..], "--bake"),
        (
            &["--max-unavailable", "2", "--max-failures", "0"][..],
            "--max-failures",
        ),
    ] {
        let mut all = vec!["policy", "set", "--env", ENV];
        all.extend_from_slice(args);
        let (code, out, err) = f.cli(&all);
        assert_eq!(code, 64, "{args:?}:\n{out}{err}");
        assert!(err.contains(flag), "{args:?} names {flag}: {err}");
    }
    let out = ok(&f, &["policy", "get", "--env", ENV]);
    assert!(
        out.lines().any(|l| l == "max_unavailable: 3"),
        "the policy is unchanged:\n{out}"
    );
}

#[test]
fn the_environment_is_given_once() {
    let f = Fleet::start(1, &[]);
    f.write(0, &[("A", "1")]);
    let out = ok(&f, &["status", ENV]);
    assert!(out.starts_with(&format!("{ENV}: version 1")), "{out}");
    for verb in [&["status"][..], &["rollout", "resume"][..]] {
        let mut args = verb.to_vec();
        args.extend([ENV, "--env", "staging"]);
        let (code, out, err) = f.cli(&args);
        assert_eq!(code, 64, "{args:?}:\n{out}{err}");
        assert!(err.contains("two environments"), "{err}");
    }
    let (code, _, err) = f.cli(&["rollout", "resume"]);
    assert_eq!(code, 64, "{err}");
}

/// One agent, then a policy: `status` prints the rollout line, `--watch` exits 0 once it
/// is done and 65 once it halted; `rollout resume` lifts the halt; a fix completes.
#[test]
fn status_follows_a_rollout_to_done_and_to_halted() {
    let mut f = Fleet::start(1, &[]);
    let v1 = f.write(0, &[("MODE", "good")]);
    f.start_agents(1, "1s", &[]);
    let (code, out, err) = f.cli(&["status", ENV, "--watch", "--timeout", "2m"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rollout complete"), "{out}");
    let out = ok(&f, &["status", ENV]);
    assert!(
        out.contains(&format!(
            "version {v1}: 1/1 applied, 1 healthy, 0 failed, 0 pending · done"
        )),
        "{out}"
    );

    f.set_policy(&["--max-unavailable", "1", "--max-failures", "1"]);
    // The node tells its agents within a second; the bad value must meet the policy.
    let agent = &f.agents[0].proc;
    agent.wait_for("the agent to hear of the policy", || {
        strip_ansi(&agent.stderr()).contains("the environment has a rollout policy")
    });
    let v2 = f.write(0, &[("MODE", "bad")]);
    let (code, out, err) = f.cli(&["status", "--env", ENV, "--watch", "--timeout", "2m"]);
    assert_eq!(code, 65, "{out}{err}");
    assert!(out.contains(&format!("{ENV}: rollout halted: ")), "{out}");
    let out = ok(&f, &["status", ENV]);
    assert!(out.contains(&format!("version {v2}: ")), "{out}");
    assert!(out.contains("· halted"), "{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("halted: ")),
        "{out}"
    );
    let (code, out, err) = f.cli(&["status", ENV, "--json", "--watch", "--timeout", "1m"]);
    assert_eq!(code, 65, "{out}{err}");
    let last: Json = serde_json::from_str(out.lines().last().unwrap_or("")).expect("JSON");
    assert_eq!(last["rollout"]["state"], "halted", "{out}");

    let out = ok(&f, &["rollout", "resume", ENV]);
    assert!(out.starts_with(&format!("{ENV}: resumed")), "{out}");
    let r = f.rollout();
    assert_ne!(r["state"], "halted", "resumed: {r}");

    f.write(0, &[("MODE", "fixed")]);
    let (code, out, err) = f.cli(&["status", ENV, "--watch", "--timeout", "2m"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(f.agents[0].child_env("MODE").as_deref(), Some("fixed"));
}
