//! Three nodes over one Redis: slots are counted for the whole cluster, so agents spread
//! over the nodes never take more than the policy allows; a node killed while its agent
//! holds a slot loses neither that slot nor the halt; a policy set through one node
//! reaches the agents of every node.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tether_core::protocol::ServerMsg;

use super::bots::{Bot, http, rollout, runtime, set_policy, write};
use super::single::finish;
use crate::support::{Tether, Work, free_port, start_node, wait_for};

/// A redis-server without persistence on a free loopback port; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(w: &Work) -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(w.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis { child, port };
        wait_for("redis answers PING", || redis.ping());
        redis
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reply = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three nodes on `redis`: (process, base URL, port) each.
fn nodes(w: &Work, redis: &Redis) -> Vec<(Tether, String, u16)> {
    (0..3)
        .map(|i| {
            let (node, port) = start_node(
                w.dir.path(),
                &[
                    "--redis",
                    &redis.url(),
                    "--node-id",
                    &format!("n{i}"),
                    "--heartbeat",
                    "1s",
                ],
            );
            (node, format!("http://127.0.0.1:{port}"), port)
        })
        .collect()
}

/// Twelve agents over three nodes under `max_unavailable = 3`: three granted in all, and
/// never more than three at once until every one is healthy.
#[test]
fn agents_on_three_nodes_share_the_slots() {
    let w = Work::new();
    let redis = Redis::start(&w);
    let nodes = nodes(&w, &redis);
    let base = nodes[0].1.clone();
    write(&base, "1");
    runtime().block_on(async {
        let mut bots = Vec::new();
        for i in 0..12 {
            bots.push(Bot::connect(nodes[i % 3].2, &format!("bot-{i}")).await);
        }
        // Set through one node, the policy reaches the agents of every node.
        set_policy(&nodes[1].1, json!({"max_unavailable": 3}));
        for bot in &mut bots {
            match bot.next().await {
                ServerMsg::Policy {
                    policy: Some(p), ..
                } => assert_eq!(p.max_unavailable.of(12), 3),
                other => panic!("{}: expected the policy, got {other:?}", bot.name),
            }
        }
        let v = write(&nodes[2].1, "2");
        let (mut granted, mut holds) = (Vec::new(), Vec::new());
        for bot in &mut bots {
            bot.until_version(v).await;
            bot.slot().await;
            granted.push(bot.answer(&mut holds).await);
        }
        assert_eq!(granted.iter().filter(|g| **g).count(), 3, "{holds:?}");
        assert!(
            holds.iter().all(|(r, _)| r == "3 of 3 slots in use"),
            "{holds:?}"
        );
        let (most, _bots) = finish(bots, granted, 3).await;
        assert!(most <= 3, "{most} slots were held at once");
        for (_, base, _) in &nodes {
            wait_for("every node sees every agent healthy", || {
                let r = rollout(base);
                r["state"] == "done" && r["healthy"] == 12 && r["slots"]["held"] == 0
            });
        }
    });
}

/// A node killed while its agent holds a slot, after another agent's failure halted the
/// rollout: the other nodes still see the halt and the slot; the agent, reconnected to
/// another node, keeps its slot; a resume through any node lets the waiting go on.
#[test]
fn a_killed_node_loses_no_slot_and_no_halt() {
    let w = Work::new();
    let redis = Redis::start(&w);
    let mut nodes = nodes(&w, &redis);
    let base = nodes[2].1.clone();
    write(&base, "1");
    set_policy(&base, json!({"max_unavailable": 2, "max_failures": 1}));
    runtime().block_on(async {
        let mut holds = Vec::new();
        let mut b0 = Bot::connect(nodes[0].2, "bot-0").await;
        let mut b1 = Bot::connect(nodes[1].2, "bot-1").await;
        let v = write(&base, "bad");
        for b in [&mut b0, &mut b1] {
            b.until_version(v).await;
            b.slot().await;
            assert!(b.answer(&mut holds).await, "{holds:?}");
        }
        b1.report(false).await;
        wait_for("halted", || rollout(&base)["state"] == "halted");
        drop(b0);
        // SIGKILL: nothing of it is cleaned up.
        drop(nodes.remove(0));
        for (_, base, _) in &nodes {
            let r = rollout(base);
            assert_eq!(
                (r["state"].as_str(), r["slots"]["held"].as_u64()),
                (Some("halted"), Some(1)),
                "{r}"
            );
        }
        let mut b2 = Bot::connect(nodes[1].2, "bot-2").await;
        b2.slot().await;
        assert!(!b2.answer(&mut holds).await);
        assert_eq!(holds.last().map(|h| h.1), Some(true), "{holds:?}");
        let mut b0 = Bot::connect(nodes[1].2, "bot-0").await;
        b0.slot().await;
        assert!(
            b0.answer(&mut holds).await,
            "the holder keeps its slot: {holds:?}"
        );
        let (code, r) = http(
            "POST",
            &format!("{}/v1/envs/prod/rollout/resume", nodes[0].1),
            None,
            None,
        );
        assert_eq!(code, 200, "{r}");
        let more = b2.granted().await;
        assert!(more.is_empty(), "{more:?}");
        let r = rollout(&nodes[1].1);
        assert_eq!(r["slots"]["held"], 2, "{r}");
    });
}
