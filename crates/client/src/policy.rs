//! `tether policy set|get|clear` and `tether rollout resume`: an environment's rollout
//! policy (`docs/rollouts.md`), checked here before it is sent, and lifting a halt.

use serde_json::{Value as Json, json};
use tether_core::rollout::{Amount, Policy};
use tether_core::settings::parse_duration;

use crate::args::{
    PolicyAction, PolicyArgs, PolicySetArgs, ResumeArgs, RolloutAction, RolloutArgs, one_env,
};
use crate::{Client, ClientError, seg};

pub fn policy(args: &PolicyArgs) -> Result<i32, ClientError> {
    match &args.action {
        PolicyAction::Set(a) => {
            let p = from_flags(a)?;
            let client = Client::new(&a.client)?;
            let body = serde_json::to_value(&p).map_err(|e| ClientError::Usage(e.to_string()))?;
            let answer = client.call("PUT", &path(&a.env), Some(body))?;
            // The node's own view of what it stored, when it says; else what was sent.
            let stored = read_answer(&answer).ok().flatten().unwrap_or(p);
            println!("{}: policy set: {}", a.env, summary(&stored));
            Ok(0)
        }
        PolicyAction::Get(a) => {
            let client = Client::new(&a.client)?;
            let policy = match client.call("GET", &path(&a.env), None) {
                Ok(answer) => read_answer(&answer).map_err(|why| ClientError::Api {
                    url: a.client.servers.join(","),
                    status: 200,
                    message: why,
                })?,
                Err(e) => none_if_absent(e)?,
            };
            if a.json {
                println!("{}", json!({ "env": a.env, "policy": policy }));
            } else {
                match policy {
                    Some(p) => print!("{}", lines(&p)),
                    None => println!(
                        "{}: no policy (agents act on a change at once, each rolling back by itself)",
                        a.env
                    ),
                }
            }
            Ok(0)
        }
        PolicyAction::Clear(a) => {
            let client = Client::new(&a.client)?;
            match client.call("DELETE", &path(&a.env), None) {
                Ok(_) => println!("{}: policy cleared", a.env),
                Err(e) => {
                    none_if_absent(e)?;
                    println!("{}: had no policy", a.env);
                }
            }
            Ok(0)
        }
    }
}

pub fn rollout(args: &RolloutArgs) -> Result<i32, ClientError> {
    match &args.action {
        RolloutAction::Resume(a) => resume(a),
    }
}

fn resume(args: &ResumeArgs) -> Result<i32, ClientError> {
    let env = one_env(args.env_arg.as_deref(), args.env.as_deref())
        .map_err(ClientError::Usage)?
        .ok_or_else(|| {
            ClientError::Usage("rollout resume: give the environment (ENV or --env)".into())
        })?;
    let client = Client::new(&args.client)?;
    let answer = client.call(
        "POST",
        &format!("/v1/envs/{}/rollout/resume", seg(&env)),
        Some(json!({})),
    )?;
    // The node answers with the rollout as it now stands (or a short note).
    match answer.get("rollout").unwrap_or(&answer) {
        r if r.get("state").is_some() => {
            println!("{env}: resumed; {}", crate::rollout::Rollout::of(r).line())
        }
        Json::Null => println!("{env}: resumed"),
        other => println!("{env}: resumed: {other}"),
    }
    Ok(0)
}

fn path(env: &str) -> String {
    format!("/v1/envs/{}/policy", seg(env))
}

/// The policy the flags describe, checked as a node would.
fn from_flags(a: &PolicySetArgs) -> Result<Policy, ClientError> {
    let bad = |flag: &str, why: String| ClientError::Usage(format!("{flag}: {why}"));
    let mut p = Policy::new(
        a.max_unavailable
            .parse::<Amount>()
            .map_err(|e| bad("--max-unavailable", e))?,
    );
    p.waves = a
        .waves
        .iter()
        .map(|w| w.parse::<Amount>())
        .collect::<Result<_, _>>()
        .map_err(|e| bad("--waves", e))?;
    if let Some(b) = &a.bake {
        let d = parse_duration(b).map_err(|e| bad("--bake", e))?;
        p.bake_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    }
    if let Some(n) = a.max_failures {
        p.max_failures = n;
    }
    p.signals = a.signals;
    p.validate().map_err(|e| {
        // The core names the JSON field; name the flag.
        let e = e
            .replace("max_failures:", "--max-failures:")
            .replace("waves:", "--waves:")
            .replace("bake_ms:", "--bake:");
        ClientError::Usage(e)
    })?;
    Ok(p)
}

/// A node's answer to GET (or PUT) as a policy: `{"policy": {...}}`, `{"policy": null}`, or
/// the policy itself.
fn read_answer(answer: &Json) -> Result<Option<Policy>, String> {
    let p = match answer.get("policy") {
        Some(p) => p,
        None if answer.get("max_unavailable").is_some() => answer,
        None => return Ok(None),
    };
    if p.is_null() {
        return Ok(None);
    }
    serde_json::from_value(p.clone())
        .map_err(|e| format!("the node sent a policy this client cannot read: {e}"))
}

/// A 404 of the policy itself means "none"; a 404 of the route means the node is older than
/// rollout policies, which is said plainly.
fn none_if_absent(e: ClientError) -> Result<Option<Policy>, ClientError> {
    match e {
        ClientError::Api {
            status: 404,
            message,
            url,
        } if message == "no such endpoint" => Err(ClientError::Api {
            url,
            status: 404,
            message: "this node has no rollout policies (a version older than rollouts?)".into(),
        }),
        ClientError::Api { status: 404, .. } => Ok(None),
        other => Err(other),
    }
}

fn bake(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn waves(p: &Policy) -> String {
    if p.waves.is_empty() {
        return "one wave of everyone".into();
    }
    p.waves
        .iter()
        .map(Amount::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One line, as `policy set` confirms it.
fn summary(p: &Policy) -> String {
    format!(
        "max_unavailable {}, waves {}, bake {}, max_failures {}{}",
        p.max_unavailable,
        waves(p),
        bake(p.bake_ms),
        p.max_failures,
        if p.signals {
            ", signals take slots"
        } else {
            ""
        }
    )
}

/// One line per field, as `policy get` prints it.
fn lines(p: &Policy) -> String {
    format!(
        "max_unavailable: {}\nwaves: {}\nbake: {}\nmax_failures: {}\nsignals: {}\n",
        p.max_unavailable,
        waves(p),
        bake(p.bake_ms),
        p.max_failures,
        if p.signals {
            "take slots too"
        } else {
            "do not take slots (only restarts do)"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::ClientArgs;

    fn set(
        mu: &str,
        waves: &[&str],
        bake: Option<&str>,
        max_failures: Option<u32>,
    ) -> PolicySetArgs {
        PolicySetArgs {
            client: ClientArgs::default(),
            env: "prod".into(),
            max_unavailable: mu.into(),
            waves: waves.iter().map(|s| s.to_string()).collect(),
            bake: bake.map(str::to_owned),
            max_failures,
            signals: false,
        }
    }

    #[test]
    fn flags_make_the_documented_policy() {
        let p = from_flags(&set(
            "5",
            &["1", "10%", "50%", "100%"],
            Some("30s"),
            Some(2),
        ))
        .unwrap();
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"max_unavailable":5,"waves":[1,"10%","50%","100%"],"bake_ms":30000,"max_failures":2}"#
        );
        let p = from_flags(&set("10%", &[], Some("250ms"), None)).unwrap();
        assert_eq!(p.max_unavailable, Amount::Percent(10));
        assert_eq!((p.bake_ms, p.max_failures), (250, 1));
    }

    #[test]
    fn bad_flags_are_named() {
        let err = |a: PolicySetArgs| from_flags(&a).unwrap_err().to_string();
        assert!(err(set("0", &[], None, None)).starts_with("--max-unavailable:"));
        assert!(err(set("five", &[], None, None)).starts_with("--max-unavailable:"));
        assert!(err(set("5", &["1", "x"], None, None)).starts_with("--waves:"));
        assert!(
            err(set("5", &["10", "5"], None, None)).starts_with("--waves:"),
            "shrinking waves"
        );
        assert!(err(set("5", &[], Some("soon"), None)).starts_with("--bake:"));
        assert!(
            err(set("5", &[], Some("30d"), None)).starts_with("--bake:"),
            "over a week"
        );
        assert!(err(set("5", &[], None, Some(0))).starts_with("--max-failures:"));
    }

    #[test]
    fn answers_read_as_a_policy_or_none() {
        let doc = json!({"max_unavailable": 5, "waves": [1, "10%", "50%", "100%"], "bake_ms": 30000, "max_failures": 1, "signals": false});
        let p = read_answer(&json!({ "policy": doc })).unwrap().unwrap();
        assert_eq!(read_answer(&doc).unwrap(), Some(p.clone()));
        assert_eq!(read_answer(&json!({"policy": null})).unwrap(), None);
        assert!(read_answer(&json!({"policy": {"max_unavailable": 0}})).is_err());
        assert_eq!(
            lines(&p),
            "max_unavailable: 5\nwaves: 1,10%,50%,100%\nbake: 30s\nmax_failures: 1\n\
             signals: do not take slots (only restarts do)\n"
        );
        assert_eq!(
            summary(&Policy::new(Amount::Percent(20))),
            "max_unavailable 20%, waves one wave of everyone, bake 0s, max_failures 1"
        );
    }

    #[test]
    fn a_missing_policy_is_none_and_a_missing_route_an_error() {
        let api = |m: &str| ClientError::Api {
            url: "u".into(),
            status: 404,
            message: m.into(),
        };
        assert!(matches!(
            none_if_absent(api("no policy for prod")),
            Ok(None)
        ));
        let e = none_if_absent(api("no such endpoint"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no rollout policies"), "{e}");
        assert!(none_if_absent(ClientError::Unreachable("x".into())).is_err());
    }
}
