//! `tether status`: rollout status of environments, added up over the `--server` nodes
//! given (a node of a cluster answers for the whole cluster); and `--watch`, which follows
//! one environment's rollout until it is done or halted (the node's `"rollout"` object;
//! for older nodes without one: until every agent is current), or `--timeout` passes.

use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::args::{StatusArgs, one_env};
use crate::rollout::{self, Rollout};
use crate::{Client, ClientError, seg};
use tether_core::settings::parse_duration;

/// Exit code of `status --watch` when the timeout passes before every agent is current
/// (EX_TEMPFAIL: the rollout may still complete; ask again).
pub const EXIT_TIMEOUT: i32 = 75;
/// How often `--watch` asks for the status.
const POLL: Duration = Duration::from_millis(500);
/// `--watch`'s default `--timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One environment's status, added up over the nodes, and how many nodes answered.
struct Status {
    total: Json,
    answered: usize,
}

pub fn status(args: &StatusArgs) -> Result<i32, ClientError> {
    let env = one_env(args.env_arg.as_deref(), args.env.as_deref()).map_err(ClientError::Usage)?;
    let watch = watch_settings(args, env.is_some())?;
    let client = Client::new(&args.client)?;
    if let (Some((timeout, min_agents)), Some(env)) = (watch, &env) {
        return follow(&client, env, timeout, min_agents, args.json);
    }
    let envs: Vec<String> = match &env {
        Some(e) => vec![e.clone()],
        None => client
            .call("GET", "/v1/envs", None)?
            .get("envs")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get("env")?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    };
    for env in envs {
        let s = gather(&client, &env)?;
        if args.json {
            println!("{}", serde_json::to_string(&s.total).unwrap_or_default());
        } else {
            print_text(&env, &s);
        }
    }
    Ok(0)
}

/// `--watch`'s timeout (None: no limit) and least number of agents, checked with the
/// flags that only go with it.
fn watch_settings(
    args: &StatusArgs,
    has_env: bool,
) -> Result<Option<(Option<Duration>, u64)>, ClientError> {
    if !args.watch {
        for (given, flag) in [
            (args.timeout.is_some(), "--timeout"),
            (args.min_agents.is_some(), "--min-agents"),
        ] {
            if given {
                return Err(ClientError::Usage(format!("{flag} goes with --watch")));
            }
        }
        return Ok(None);
    }
    if !has_env {
        return Err(ClientError::Usage(
            "--watch follows one environment: give it (ENV or --env NAME)".into(),
        ));
    }
    let timeout = match &args.timeout {
        None => Some(DEFAULT_TIMEOUT),
        Some(t) => match parse_duration(t) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(e) => return Err(ClientError::Usage(format!("--timeout: {e}"))),
        },
    };
    Ok(Some((timeout, args.min_agents.unwrap_or(1))))
}

/// Ask every node given for `env`'s status and add the answers up. A node of a cluster
/// answers for the whole cluster; single nodes each know their own agents.
fn gather(client: &Client, env: &str) -> Result<Status, ClientError> {
    let path = format!("/v1/envs/{}/status", seg(env));
    let mut total = json!({"env": env, "position": Json::Null, "agents": 0, "current": 0, "failed": 0, "by_version": {}, "connected": [], "nodes": []});
    let mut best: Option<(String, u64)> = None;
    let mut rollouts: Vec<Json> = Vec::new();
    for base in &client.bases {
        match client.call_one(base, "GET", &path, None) {
            Ok(r) if r["scope"] == "cluster" => {
                let mut whole = r.clone();
                whole["nodes"] = json!(
                    r["node_registries"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|n| json!({"server": base, "node": n["node"], "agents": n["agents"]}))
                        .collect::<Vec<_>>()
                );
                // Servers tried before this one that did not answer stay listed.
                if let Some(earlier) = total["nodes"].as_array().cloned() {
                    if let Some(nodes) = whole["nodes"].as_array_mut() {
                        nodes.extend(earlier);
                    }
                }
                total = whole;
                break;
            }
            Ok(r) => {
                if let Some(w) = r.get("warning") {
                    total["warning"] = w.clone();
                }
                let pos = (
                    r.pointer("/position/epoch")
                        .and_then(|e| e.as_str())
                        .unwrap_or("")
                        .to_string(),
                    r.pointer("/position/version")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0),
                );
                if best.as_ref().is_none_or(|b| pos > *b) {
                    best = Some(pos);
                    total["position"] = r["position"].clone();
                }
                for key in ["agents", "current", "failed"] {
                    total[key] =
                        json!(total[key].as_u64().unwrap_or(0) + r[key].as_u64().unwrap_or(0));
                }
                if let Some(map) = r["by_version"].as_object() {
                    for (v, n) in map {
                        let sum =
                            total["by_version"][v].as_u64().unwrap_or(0) + n.as_u64().unwrap_or(0);
                        total["by_version"][v] = json!(sum);
                    }
                }
                if let (Some(all), Some(these)) =
                    (total["connected"].as_array_mut(), r["connected"].as_array())
                {
                    all.extend(these.iter().cloned());
                }
                if let Some(nodes) = total["nodes"].as_array_mut() {
                    nodes.push(json!({"server": base, "agents": r["agents"]}));
                }
                if let Some(r) = r.get("rollout") {
                    rollouts.push(r.clone());
                }
            }
            Err(ClientError::Unreachable(why)) => {
                if let Some(nodes) = total["nodes"].as_array_mut() {
                    nodes.push(json!({"server": base, "error": why}));
                }
            }
            Err(e) => return Err(e),
        }
    }
    if total.get("scope").is_none() {
        let merged = rollout::merge(&rollouts);
        if !merged.is_null() {
            total["rollout"] = merged;
        }
    }
    let answered = total["nodes"]
        .as_array()
        .map_or(0, |n| n.iter().filter(|n| n.get("error").is_none()).count());
    if answered == 0 {
        let why: Vec<String> = total["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["error"].as_str().map(str::to_owned))
            .collect();
        return Err(ClientError::Unreachable(format!(
            "{} (asked for {env})",
            why.join("; ")
        )));
    }
    Ok(Status { total, answered })
}

fn print_text(env: &str, s: &Status) {
    println!(
        "{env}: version {}, {} agent(s) on {} node(s), {} current, {} failed",
        s.total.pointer("/position/version").unwrap_or(&Json::Null),
        s.total["agents"],
        s.answered,
        s.total["current"],
        s.total["failed"].as_u64().unwrap_or(0),
    );
    if let Some(r) = s.total.get("rollout").filter(|r| r.is_object()) {
        for line in Rollout::of(r).lines() {
            println!("  {line}");
        }
    }
    if let Some(map) = s.total["by_version"].as_object() {
        for (v, n) in map {
            println!("  version {v}: {n}");
        }
    }
    let failed = failures(&s.total);
    for line in failed.iter().take(FAILURES_SHOWN) {
        println!("  {line}");
    }
    if failed.len() > FAILURES_SHOWN {
        println!(
            "  ... and {} more failed (see --json)",
            failed.len() - FAILURES_SHOWN
        );
    }
    if let Some(w) = s.total["warning"].as_str() {
        println!("  warning: {w}");
    }
    for n in s.total["nodes"].as_array().into_iter().flatten() {
        if let Some(err) = n.get("error").and_then(|e| e.as_str()) {
            println!(
                "  {} did not answer: {err}",
                n["server"].as_str().unwrap_or("")
            );
        }
    }
}

/// Where a rollout stands, as `--watch` compares and prints it.
#[derive(Debug, PartialEq, Eq)]
struct Progress {
    version: Option<u64>,
    agents: u64,
    current: u64,
    failed: u64,
    /// Agents per acknowledged version (`"7"`, `"7 (failed)"`, `"none"`), as the node counts.
    by_version: Vec<(String, u64)>,
    /// The node's rollout; `None` from a node older than rollouts.
    rollout: Option<Rollout>,
}

impl Progress {
    fn of(total: &Json) -> Progress {
        let n = |k: &str| total[k].as_u64().unwrap_or(0);
        Progress {
            version: total.pointer("/position/version").and_then(Json::as_u64),
            agents: n("agents"),
            current: n("current"),
            failed: n("failed"),
            by_version: total["by_version"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(v, c)| (v.clone(), c.as_u64().unwrap_or(0)))
                .collect(),
            rollout: total
                .get("rollout")
                .filter(|r| r.is_object())
                .map(Rollout::of),
        }
    }

    /// The exit code once the rollout is over: the node's verdict (done, halted), or for a
    /// node without rollouts, 0 once every agent applied the current version; and at least
    /// `min_agents` agents either way.
    fn verdict(&self, min_agents: u64) -> Option<i32> {
        match &self.rollout {
            Some(r) => r.verdict(min_agents),
            None => (self.agents >= min_agents && self.current == self.agents).then_some(0),
        }
    }

    fn line(&self, env: &str, min_agents: u64) -> String {
        if let Some(r) = &self.rollout {
            if r.agents > 0 || min_agents == 0 {
                return format!("{env}: {}", r.line());
            }
        }
        let version = self.version.map_or("none".to_string(), |v| v.to_string());
        if self.agents == 0 {
            return format!(
                "{env}: version {version}: no agent connected (waiting for {min_agents})"
            );
        }
        let mut line = format!(
            "{env}: version {version}: {} of {} agent(s) current, {} failed",
            self.current, self.agents, self.failed
        );
        let behind: Vec<String> = self
            .by_version
            .iter()
            .filter(|(v, _)| Some(v.as_str()) != self.version.map(|x| x.to_string()).as_deref())
            .map(|(v, c)| format!("{v}: {c}"))
            .collect();
        if !behind.is_empty() {
            line.push_str(&format!(" (others at {})", behind.join(", ")));
        }
        line
    }
}

/// `status --watch`: a line each time the counts change; the verdict once the rollout is
/// over (0 done; [`rollout::EXIT_HALTED`] halted or done with failed agents), or
/// [`EXIT_TIMEOUT`] when `timeout` passes first. A node that stops answering meanwhile is
/// reported and asked again until the timeout; one that never answered is an error.
fn follow(
    client: &Client,
    env: &str,
    timeout: Option<Duration>,
    min_agents: u64,
    json: bool,
) -> Result<i32, ClientError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut shown: Option<Progress> = None;
    let mut last: Option<Status> = None;
    let mut unreachable: Option<String> = None;
    loop {
        match gather(client, env) {
            Ok(s) => {
                unreachable = None;
                let p = Progress::of(&s.total);
                if shown.as_ref() != Some(&p) {
                    if json {
                        println!("{}", serde_json::to_string(&s.total).unwrap_or_default());
                    } else {
                        println!("{}", p.line(env, min_agents));
                    }
                    shown = Some(p);
                }
                if let Some(code) = shown.as_ref().and_then(|p| p.verdict(min_agents)) {
                    finished(env, &s.total, code, json);
                    return Ok(code);
                }
                last = Some(s);
            }
            Err(ClientError::Unreachable(why)) if last.is_some() => {
                if unreachable.as_deref() != Some(why.as_str()) {
                    eprintln!("tether: {why}; asking again until the timeout");
                }
                unreachable = Some(why);
            }
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if let Some(deadline) = deadline {
            if now >= deadline {
                let t = format!("{:?}", timeout.unwrap_or_default());
                let shown = shown.map_or(String::new(), |p| p.line(env, min_agents));
                eprintln!("tether: {env}: rollout not complete after {t}: {shown}");
                if let Some(why) = unreachable {
                    eprintln!("  the nodes stopped answering: {why}");
                }
                if let Some(s) = last {
                    for line in failures(&s.total).iter().take(FAILURES_SHOWN) {
                        eprintln!("  {line}");
                    }
                }
                return Ok(EXIT_TIMEOUT);
            }
            std::thread::sleep(POLL.min(deadline - now));
        } else {
            std::thread::sleep(POLL);
        }
    }
}

/// The last words of a watch that ended: how, and which agents failed.
fn finished(env: &str, total: &Json, code: i32, json: bool) {
    let r = total
        .get("rollout")
        .filter(|r| r.is_object())
        .map(Rollout::of);
    if !json {
        match &r {
            Some(r) if r.state == "halted" => println!(
                "{env}: rollout halted: {}",
                r.halted_reason.as_deref().unwrap_or("(no reason given)")
            ),
            Some(r) if r.failed > 0 => {
                println!("{env}: rollout done, {} agent(s) failed", r.failed)
            }
            _ => println!("{env}: rollout complete"),
        }
    }
    if code != 0 {
        for line in failures(total).iter().take(FAILURES_SHOWN) {
            eprintln!("  {line}");
        }
    }
}

/// Failed agents listed one per line in the text output; the rest are counted.
const FAILURES_SHOWN: usize = 20;

/// One line per agent whose last ack failed: who, where, at which version, and why. Agent
/// names and errors come from agents: control characters are shown escaped.
fn failures(status: &Json) -> Vec<String> {
    let text = |v: &Json| v.as_str().unwrap_or("").escape_debug().to_string();
    status["connected"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["ack"]["ok"] == Json::Bool(false))
        .map(|a| {
            format!(
                "failed: {} on node {} at version {}: {}",
                text(&a["agent"]),
                text(&a["node"]),
                a["ack"]["position"]["version"],
                text(&a["ack"]["error"]),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_agents_are_listed_with_control_characters_escaped() {
        let status = serde_json::json!({"connected": [
            {"agent": "web-1", "node": "n1", "ack": {"position": {"epoch": "0000000000000001", "version": 5}, "ok": false, "error": "disk\nfull\u{1b}[31m"}},
            {"agent": "web-2", "node": "n1", "ack": {"position": {"epoch": "0000000000000001", "version": 5}, "ok": true}},
            {"agent": "web-3", "node": "n2", "ack": null},
        ]});
        assert_eq!(
            failures(&status),
            ["failed: web-1 on node n1 at version 5: disk\\nfull\\u{1b}[31m"]
        );
    }

    fn status(v: u64, agents: u64, current: u64, by: Json) -> Json {
        json!({"position": {"epoch": "0000000000000001", "version": v}, "agents": agents,
               "current": current, "failed": 0, "by_version": by})
    }

    #[test]
    fn progress_is_complete_when_every_agent_is_current() {
        let p = Progress::of(&status(7, 2, 1, json!({"7": 1, "6": 1})));
        assert_eq!(p.verdict(1), None);
        assert_eq!(
            p.line("prod", 1),
            "prod: version 7: 1 of 2 agent(s) current, 0 failed (others at 6: 1)"
        );
        assert_eq!(
            Progress::of(&status(7, 2, 2, json!({"7": 2}))).verdict(1),
            Some(0)
        );
        let none = Progress::of(&status(7, 0, 0, json!({})));
        assert_eq!(none.verdict(1), None, "no agent is not a finished rollout");
        assert_eq!(none.verdict(0), Some(0), "unless --min-agents 0");
        assert!(none.line("prod", 1).contains("no agent connected"));
    }

    #[test]
    fn a_rollout_object_decides_over_the_acks() {
        // Every agent acked the version (current), but they are not healthy yet.
        let mut s = status(43, 2, 2, json!({"43": 2}));
        s["rollout"] = json!({"state": "rolling", "version": 43, "agents": 2, "applied": 2,
                              "healthy": 0, "failed": 0, "pending": 0});
        let p = Progress::of(&s);
        assert_eq!(p.verdict(1), None);
        assert_eq!(
            p.line("prod", 1),
            "prod: version 43: 2/2 applied, 0 healthy, 0 failed, 0 pending · rolling"
        );
        s["rollout"]["state"] = json!("done");
        s["rollout"]["healthy"] = json!(2);
        assert_eq!(Progress::of(&s).verdict(1), Some(0));
        s["rollout"]["state"] = json!("halted");
        assert_eq!(Progress::of(&s).verdict(1), Some(rollout::EXIT_HALTED));
        s["rollout"] = json!(null);
        assert_eq!(
            Progress::of(&s).verdict(1),
            Some(0),
            "null: an older node's rules"
        );
    }
}
