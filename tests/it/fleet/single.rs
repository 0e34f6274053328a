//! One node: slots never exceed the policy, a failure halts the rollout, a resume or a fix
//! starts it again, a restart keeps the halt and the slots, a vanished holder's slot comes
//! back after its lease, policies reach the agents, and the policy API checks its tokens
//! and its input.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tether_core::protocol::ServerMsg;

use super::bots::{Bot, ENV, http, metric, rollout, runtime, set_policy, write};
use crate::support::{Tether, Work, start_node, wait_for};

fn node(w: &Work, extra: &[&str]) -> (Tether, String, u16) {
    let data = w.path("data").display().to_string();
    let mut args = vec!["--data", data.as_str()];
    args.extend_from_slice(extra);
    let (node, port) = start_node(w.dir.path(), &args);
    (node, format!("http://127.0.0.1:{port}"), port)
}

/// Run `bots` through a rollout whose first answers were read: the granted act and report,
/// the others wait for their grant and do the same. Returns the most slots that were held
/// at once, as the agents saw it: counted from a grant until just before the report that
/// gives the slot back, so it can only be more than the node's own count if the node
/// granted past its limit.
pub async fn finish(bots: Vec<Bot>, granted: Vec<bool>, outstanding: usize) -> (usize, Vec<Bot>) {
    let now = Arc::new(AtomicUsize::new(outstanding));
    let most = Arc::new(AtomicUsize::new(outstanding));
    let mut tasks = Vec::new();
    for (mut bot, has) in bots.into_iter().zip(granted) {
        let (now, most) = (now.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            if !has {
                bot.granted().await;
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
            }
            // Acting: a restart takes a moment, during which others may ask.
            tokio::time::sleep(Duration::from_millis(30)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            bot.report(true).await;
            bot
        }));
    }
    let mut bots = Vec::new();
    for t in tasks {
        bots.push(t.await.expect("a bot task"));
    }
    (most.load(Ordering::SeqCst), bots)
}

/// Ten agents under `max_unavailable = 3`: three are granted, seven hold, and as they
/// report their health the others are granted, never more than three at once.
#[test]
fn ten_agents_never_take_more_than_three_slots() {
    let w = Work::new();
    let (_node, base, port) = node(&w, &[]);
    write(&base, "1");
    set_policy(&base, json!({"max_unavailable": 3}));
    runtime().block_on(async {
        let mut bots = Vec::new();
        for i in 0..10 {
            bots.push(Bot::connect(port, &format!("bot-{i}")).await);
        }
        let v = write(&base, "2");
        let mut granted = Vec::new();
        let mut holds = Vec::new();
        for bot in &mut bots {
            bot.until_version(v).await;
            bot.slot().await;
            granted.push(bot.answer(&mut holds).await);
        }
        assert_eq!(granted.iter().filter(|g| **g).count(), 3, "{holds:?}");
        assert_eq!(holds.len(), 7);
        assert!(
            holds.iter().all(|(r, h)| r == "3 of 3 slots in use" && !h),
            "{holds:?}"
        );
        let r = rollout(&base);
        assert_eq!(r["slots"], json!({"held": 3, "max": 3}), "{r}");
        assert_eq!(r["state"], "rolling");
        assert_eq!(
            metric(&base, r#"tether_rollout_slots_held{env="prod"}"#),
            Some(3)
        );
        assert_eq!(metric(&base, r#"tether_rollout_wave{env="prod"}"#), Some(1));
        assert_eq!(
            metric(
                &base,
                r#"tether_rollout_agents{env="prod",state="pending"}"#
            ),
            Some(10)
        );
        let (most, _bots) = finish(bots, granted, 3).await;
        assert!(most <= 3, "{most} slots were held at once");
        wait_for("every agent healthy", || {
            let r = rollout(&base);
            r["state"] == "done" && r["healthy"] == 10
        });
        let r = rollout(&base);
        assert_eq!(r["slots"]["held"], 0, "{r}");
        assert_eq!(r["applied"], 10, "{r}");
        assert_eq!(
            metric(
                &base,
                r#"tether_rollout_agents{env="prod",state="healthy"}"#
            ),
            Some(10)
        );
        assert_eq!(
            metric(&base, r#"tether_rollout_slots_held{env="prod"}"#),
            Some(0)
        );
    });
}

/// A failure halts the rollout (`max_failures = 1`): waiting agents hear `hold … halted`,
/// so do new requests; a resume lifts it; a new write (a fix) starts a new rollout.
#[test]
fn a_failure_halts_resume_lifts_it_and_a_fix_starts_over() {
    let w = Work::new();
    let (_node, base, port) = node(&w, &[]);
    write(&base, "1");
    set_policy(&base, json!({"max_unavailable": 1, "max_failures": 1}));
    runtime().block_on(async {
        let mut b = Vec::new();
        for i in 0..4 {
            b.push(Bot::connect(port, &format!("bot-{i}")).await);
        }
        let v = write(&base, "bad");
        for bot in &mut b {
            bot.until_version(v).await;
        }
        let mut holds = Vec::new();
        b[0].slot().await;
        assert!(b[0].answer(&mut holds).await);
        b[1].slot().await;
        assert!(!b[1].answer(&mut holds).await);
        assert_eq!(holds, [("1 of 1 slots in use".to_string(), false)]);

        b[0].report(false).await;
        // The waiting agent hears the new reason.
        assert!(!b[1].answer(&mut holds).await);
        let reason = format!("halted: 1 agent failed version {v} (max_failures 1)");
        assert_eq!(holds.last(), Some(&(reason.clone(), true)));
        let r = rollout(&base);
        assert_eq!(r["state"], "halted", "{r}");
        assert_eq!(r["halted_reason"], reason.as_str());
        assert_eq!(
            (r["failed"].clone(), r["rolled_back"].clone()),
            (json!(1), json!(1)),
            "{r}"
        );
        let (_, status) = http("GET", &format!("{base}/v1/envs/{ENV}/status"), None, None);
        assert_eq!(status["rollout"]["state"], "halted", "{status}");
        assert_eq!(status["connected"].as_array().map(Vec::len), Some(4));
        assert_eq!(
            metric(&base, r#"tether_rollout_halted{env="prod"}"#),
            Some(1)
        );
        assert_eq!(metric(&base, "tether_rollout_halts_total"), Some(1));
        assert_eq!(
            metric(&base, r#"tether_rollout_agents{env="prod",state="failed"}"#),
            Some(1)
        );
        b[2].slot().await;
        assert!(!b[2].answer(&mut holds).await);
        assert_eq!(holds.last(), Some(&(reason, true)));

        let (code, r) = http(
            "POST",
            &format!("{base}/v1/envs/{ENV}/rollout/resume"),
            None,
            None,
        );
        assert_eq!(code, 200, "{r}");
        assert_eq!(r["state"], "rolling", "{r}");
        // The first waiting agent is granted; the one after it waits for its slot.
        b[1].granted().await;
        b[1].report(true).await;
        b[2].granted().await;
        b[2].report(false).await;
        wait_for("halted again", || rollout(&base)["state"] == "halted");

        // A fix: the next request is of a newer version, a new rollout.
        let fix = write(&base, "good");
        b[3].until_version(fix).await;
        b[3].slot().await;
        assert!(b[3].answer(&mut holds).await, "{holds:?}");
        let r = rollout(&base);
        assert_eq!(
            (r["state"].as_str(), r["version"].as_u64()),
            (Some("rolling"), Some(fix)),
            "{r}"
        );
        assert!(r.get("halted_reason").is_none(), "{r}");
    });
}

/// A node restarted on its data keeps the halt and the slots held: a new agent is held,
/// the holder asking again (it reconnected) keeps its slot.
#[test]
fn a_restart_keeps_the_halt_and_the_slots() {
    let w = Work::new();
    let (first, base, port) = node(&w, &[]);
    write(&base, "1");
    set_policy(&base, json!({"max_unavailable": 2, "max_failures": 1}));
    let rt = runtime();
    let v = rt.block_on(async {
        let mut b0 = Bot::connect(port, "bot-0").await;
        let mut b1 = Bot::connect(port, "bot-1").await;
        let v = write(&base, "bad");
        let mut holds = Vec::new();
        for b in [&mut b0, &mut b1] {
            b.until_version(v).await;
            b.slot().await;
            assert!(b.answer(&mut holds).await);
        }
        b1.report(false).await;
        wait_for("halted", || rollout(&base)["state"] == "halted");
        v
    });
    drop(first);
    let (_second, base, port) = node(&w, &[]);
    let r = rollout(&base);
    assert_eq!(r["state"], "halted", "{r}");
    assert_eq!(
        (r["agents"].as_u64(), r["slots"]["held"].as_u64()),
        (Some(0), Some(1)),
        "{r}"
    );
    rt.block_on(async {
        let mut holds = Vec::new();
        let mut b2 = Bot::connect(port, "bot-2").await;
        b2.slot().await;
        assert!(!b2.answer(&mut holds).await);
        assert_eq!(
            holds,
            [(
                format!("halted: 1 agent failed version {v} (max_failures 1)"),
                true
            )]
        );
        let mut b0 = Bot::connect(port, "bot-0").await;
        b0.slot().await;
        assert!(
            b0.answer(&mut holds).await,
            "the holder keeps its slot: {holds:?}"
        );
        let r = rollout(&base);
        assert_eq!(
            (r["state"].as_str(), r["slots"]["held"].as_u64()),
            (Some("halted"), Some(1)),
            "{r}"
        );
    });
}

/// A connected holder's slot is renewed past its lease; once its agent is gone the slot
/// comes back after the lease and the next agent is granted.
#[test]
fn a_vanished_holder_gives_its_slot_back_after_the_lease() {
    let w = Work::new();
    let (_node, base, port) = node(&w, &["--slot-lease", "2s"]);
    write(&base, "1");
    set_policy(&base, json!({"max_unavailable": 1}));
    runtime().block_on(async {
        let mut b0 = Bot::connect(port, "bot-0").await;
        let mut b1 = Bot::connect(port, "bot-1").await;
        let mut holds = Vec::new();
        b0.slot().await;
        assert!(b0.answer(&mut holds).await);
        let granted_at = Instant::now();
        b1.slot().await;
        assert!(!b1.answer(&mut holds).await);
        // Two leases pass while the holder is connected: its node renews the slot.
        while granted_at.elapsed() < Duration::from_secs(4) {
            let frames = b1.drain().await;
            assert!(
                frames.is_empty(),
                "nothing new for the waiting agent: {frames:?}"
            );
        }
        assert_eq!(rollout(&base)["slots"]["held"], 1);
        drop(b0);
        let holds = b1.granted().await;
        assert!(holds.is_empty(), "{holds:?}");
        // Nothing to act on after all: given back at once.
        b1.release().await;
        wait_for("the slot given back", || {
            rollout(&base)["slots"]["held"] == 0
        });
    });
}

/// A policy set or cleared reaches the connected agents at once; clearing it answers the
/// waiting ones (`policy` null: they act on their own).
#[test]
fn policies_reach_the_agents_and_clearing_one_frees_the_waiting() {
    let w = Work::new();
    let (_node, base, port) = node(&w, &[]);
    write(&base, "1");
    runtime().block_on(async {
        let mut b0 = Bot::connect(port, "bot-0").await;
        let mut b1 = Bot::connect(port, "bot-1").await;
        let mut holds = Vec::new();
        // No policy: granted at once, nothing recorded.
        b0.slot().await;
        assert!(b0.answer(&mut holds).await);
        assert!(rollout(&base).get("slots").is_none());
        set_policy(&base, json!({"max_unavailable": 1, "waves": [1, "50%"]}));
        for b in [&mut b0, &mut b1] {
            match b.next().await {
                ServerMsg::Policy {
                    env,
                    policy: Some(p),
                } => {
                    assert_eq!(env, ENV);
                    assert_eq!(p.waves.len(), 2);
                }
                other => panic!("expected the policy, got {other:?}"),
            }
        }
        b0.slot().await;
        assert!(b0.answer(&mut holds).await);
        b1.slot().await;
        assert!(!b1.answer(&mut holds).await);
        let (code, r) = http(
            "DELETE",
            &format!("{base}/v1/envs/{ENV}/policy"),
            None,
            None,
        );
        assert_eq!((code, r), (200, json!({"env": ENV, "policy": null})));
        assert_eq!(
            b1.next().await,
            ServerMsg::Policy {
                env: ENV.into(),
                policy: None
            }
        );
        assert!(rollout(&base).get("slots").is_none());
    });
}

const ADMIN: &str = "admin-token-fleet-0123456789";
const WRITER: &str = "writer-token-fleet-0123456789";
const READER: &str = "reader-token-fleet-0123456789";

fn token_config(w: &Work) -> String {
    use sha2::{Digest, Sha256};
    let mut toml = String::new();
    for (name, token, role, envs) in [
        ("admin", ADMIN, "admin", r#""*""#),
        ("ci", WRITER, "write", r#""prod""#),
        ("agents", READER, "read", r#""prod""#),
    ] {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        toml.push_str(&format!(
            "[[token]]\nname = \"{name}\"\nhash = \"sha256:{hash}\"\nrole = \"{role}\"\nenvs = [{envs}]\n\n"
        ));
    }
    w.write("node.toml", &toml);
    w.path("node.toml").display().to_string()
}

/// The policy routes: read needs read, set/clear/resume need write on the environment;
/// a bad policy is 400 naming the field, and leaves the stored one as it was.
#[test]
fn the_policy_api_checks_tokens_and_input() {
    let w = Work::new();
    let config = token_config(&w);
    let (_node, base, _) = node(&w, &["--config", &config]);
    let url = |env: &str, path: &str| format!("{base}/v1/envs/{env}/{path}");
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<Json>| {
        http(method, &url(ENV, path), token, body)
    };
    assert_eq!(call("GET", "policy", None, None).0, 401);
    assert_eq!(
        call("GET", "policy", Some(READER), None),
        (200, json!({"env": ENV, "policy": null}))
    );
    let policy =
        json!({"max_unavailable": "10%", "waves": [1, "50%"], "bake_ms": 5000, "max_failures": 2});
    assert_eq!(
        call("PUT", "policy", Some(READER), Some(policy.clone())).0,
        403
    );
    let other = http(
        "PUT",
        &url("staging", "policy"),
        Some(WRITER),
        Some(policy.clone()),
    );
    assert_eq!(other.0, 403, "{}", other.1);
    let (code, r) = call("PUT", "policy", Some(WRITER), Some(policy.clone()));
    assert_eq!((code, &r["policy"]), (200, &policy), "{r}");
    for (bad, field) in [
        (json!({"max_unavailable": 0}), "max_unavailable"),
        (json!({"max_unavailable": "120%"}), "max_unavailable"),
        (
            json!({"max_unavailable": 1, "max_failure": 2}),
            "max_failure",
        ),
        (json!({"max_unavailable": 1, "waves": [5, 2]}), "waves"),
        (
            json!({"max_unavailable": 1, "max_failures": 0}),
            "max_failures",
        ),
        (json!({"waves": [1]}), "max_unavailable"),
    ] {
        let (code, r) = call("PUT", "policy", Some(WRITER), Some(bad.clone()));
        assert_eq!(code, 400, "{bad}: {r}");
        assert_eq!(r["error"]["code"], "invalid", "{r}");
        let message = r["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with(&format!("bad policy: {field}:")),
            "{bad}: {message}"
        );
    }
    assert_eq!(
        call("GET", "policy", Some(READER), None).1["policy"],
        policy
    );
    let r = call("GET", "rollout", Some(READER), None);
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["state"], "idle");
    assert_eq!(r.1["slots"], json!({"held": 0, "max": 1}));
    assert_eq!(call("GET", "status", Some(READER), None).1["rollout"], r.1);
    assert_eq!(call("POST", "rollout/resume", Some(READER), None).0, 403);
    assert_eq!(call("POST", "rollout/resume", Some(WRITER), None).0, 200);
    assert_eq!(call("DELETE", "policy", Some(READER), None).0, 403);
    assert_eq!(
        call("DELETE", "policy", Some(ADMIN), None),
        (200, json!({"env": ENV, "policy": null}))
    );
    assert_eq!(
        call("GET", "policy", Some(READER), None).1["policy"],
        Json::Null
    );
    let (code, r) = call("POST", "rollout/resume", Some(WRITER), None);
    assert_eq!(
        (code, r["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{r}"
    );
}
