//! What an agent re-sends when it reconnects does not undo the rollout: a failure a resume
//! forgave stays forgiven, a report of an older version does not free a newer slot; and a
//! slot request the node refuses is still answered.

use serde_json::json;
use tether_core::protocol::{ClientMsg, Position, ServerMsg};
use tether_core::rollout::HealthState;

use super::bots::{Bot, ENV, http, rollout, runtime, set_policy, write};
use crate::support::{Tether, Work, start_node, wait_for};

fn node(w: &Work) -> (Tether, String, u16) {
    let data = w.path("data").display().to_string();
    let (node, port) = start_node(w.dir.path(), &["--data", data.as_str()]);
    (node, format!("http://127.0.0.1:{port}"), port)
}

/// Every frame `bot` sent before this call was handled: the node answers a release of an
/// environment the connection does not follow, in order.
async fn handled(bot: &mut Bot) {
    bot.send(ClientMsg::Release {
        env: "not-followed".into(),
    })
    .await;
    loop {
        match bot.next().await {
            ServerMsg::Error { code, .. } if code == "not_subscribed" => return,
            _ => {}
        }
    }
}

/// A failed agent reconnects after `rollout resume` and says again that it failed: the
/// rollout stays resumed, the next agent is granted.
#[test]
fn a_failure_said_again_after_a_resume_does_not_halt_again() {
    let w = Work::new();
    let (_node, base, port) = node(&w);
    write(&base, "1");
    set_policy(&base, json!({"max_unavailable": 1, "max_failures": 1}));
    runtime().block_on(async {
        let mut a = Bot::connect(port, "a").await;
        let mut b = Bot::connect(port, "b").await;
        let v = write(&base, "bad");
        a.until_version(v).await;
        b.until_version(v).await;
        let mut holds = Vec::new();
        a.slot().await;
        assert!(a.answer(&mut holds).await);
        a.report(false).await;
        wait_for("halted", || rollout(&base)["state"] == "halted");
        let (code, r) = http(
            "POST",
            &format!("{base}/v1/envs/{ENV}/rollout/resume"),
            None,
            None,
        );
        assert_eq!(code, 200, "{r}");
        drop(a);
        let mut a = Bot::connect(port, "a").await;
        a.until_version(v).await;
        a.report(false).await;
        handled(&mut a).await;
        assert_eq!(rollout(&base)["state"], "rolling");
        b.slot().await;
        assert!(b.answer(&mut holds).await, "{holds:?}");
    });
}

/// An agent holding the one slot for version 2 reconnects and first re-sends its health of
/// version 1: the slot stays its own, the next agent waits until it reports version 2.
#[test]
fn a_report_of_an_older_version_keeps_the_newer_slot() {
    let w = Work::new();
    let (_node, base, port) = node(&w);
    write(&base, "1");
    set_policy(&base, json!({"max_unavailable": 1}));
    runtime().block_on(async {
        let mut a = Bot::connect(port, "a").await;
        let mut b = Bot::connect(port, "b").await;
        let mut holds = Vec::new();
        let v1 = write(&base, "x");
        a.until_version(v1).await;
        a.slot().await;
        assert!(a.answer(&mut holds).await);
        a.report(true).await;
        let old = a.at;
        let v2 = write(&base, "y");
        a.until_version(v2).await;
        b.until_version(v2).await;
        a.slot().await;
        assert!(a.answer(&mut holds).await, "{holds:?}");
        drop(a);
        let mut a = Bot::connect(port, "a").await;
        a.until_version(v2).await;
        a.send(ClientMsg::Health {
            env: ENV.into(),
            position: old,
            state: HealthState::Healthy,
            error: None,
            rolled_back: false,
        })
        .await;
        handled(&mut a).await;
        b.slot().await;
        assert!(!b.answer(&mut holds).await, "b was granted a second slot");
        assert_eq!(
            holds.last().map(|h| h.0.as_str()),
            Some("1 of 1 slots in use")
        );
        a.slot().await;
        assert!(a.answer(&mut holds).await, "a keeps its slot: {holds:?}");
        a.report(true).await;
        b.granted().await;
    });
}

/// A slot request of a position the connection was never sent is refused and answered
/// with a hold, so the agent does not wait in silence.
#[test]
fn a_refused_slot_request_is_answered_with_a_hold() {
    let w = Work::new();
    let (_node, base, port) = node(&w);
    write(&base, "1");
    set_policy(&base, json!({"max_unavailable": 1}));
    runtime().block_on(async {
        let mut a = Bot::connect(port, "a").await;
        let position = Position {
            version: a.at.version + 5,
            ..a.at
        };
        a.send(ClientMsg::Slot {
            env: ENV.into(),
            position,
        })
        .await;
        let mut seen = Vec::new();
        loop {
            let m = a.next().await;
            let done = matches!(m, ServerMsg::Hold { .. });
            seen.push(m);
            if done {
                break;
            }
        }
        assert!(
            seen.iter()
                .any(|m| matches!(m, ServerMsg::Error { code, .. } if code == "unknown_position")),
            "{seen:?}"
        );
        assert!(
            matches!(seen.last(), Some(ServerMsg::Hold { halted: false, reason, .. }) if reason.contains("ask again")),
            "{seen:?}"
        );
    });
}
