//! Wire types of the native protocol between agents and nodes (JSON text frames over a
//! WebSocket), and the position rules both sides follow. `docs/protocol.md` is the
//! reference; the golden tests below pin the exact JSON both ways.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rollout::{HealthState, Policy};
use crate::secret::Value;

/// Largest frame an agent accepts from a node. The node's limits on change sets and
/// environments keep every frame it sends well under it.
pub const MAX_AGENT_FRAME: usize = 16 * 1024 * 1024;

/// Identifies one history of an environment. A new epoch is drawn whenever history is reset
/// (store wiped or restored). Epochs are ordered by creation time: the upper bits are
/// milliseconds since the Unix epoch, the low 16 bits random.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    pub fn generate() -> Epoch {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Epoch((ms << 16) | u64::from(rand::random::<u16>()))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 16 {
            return Err(format!("epoch {s:?} is not 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|_| format!("epoch {s:?} is not 16 hex digits"))
    }
}

impl Serialize for Epoch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where an environment's history stands: `version` grows by one per committed change set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Position {
    pub epoch: Epoch,
    pub version: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.epoch, self.version)
    }
}

/// What an agent at `local` does with an incoming change set at `incoming`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// At or below what we have: a duplicate.
    Drop,
    /// Something was missed (or the history was reset): ask for a resync.
    Resync,
}

/// The rule for change sets: apply only at exactly `local + 1` of the same epoch.
pub fn judge_change(local: Option<Position>, incoming: Position) -> Verdict {
    match local {
        None => Verdict::Resync,
        Some(l) if incoming.epoch < l.epoch => Verdict::Drop,
        Some(l) if incoming.epoch > l.epoch => Verdict::Resync,
        Some(l) if incoming.version <= l.version => Verdict::Drop,
        Some(l) if incoming.version == l.version + 1 => Verdict::Apply,
        Some(_) => Verdict::Resync,
    }
}

/// The rule for snapshots: never move back. A newer epoch is a new history and wins.
pub fn accept_snapshot(local: Option<Position>, incoming: Position) -> bool {
    match local {
        None => true,
        Some(l) if incoming.epoch != l.epoch => incoming.epoch > l.epoch,
        Some(l) => incoming.version > l.version,
    }
}

/// One entry as it travels. `value` is absent when the reader may not see secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_value")]
    pub value: Option<Value>,
    #[serde(default)]
    pub secret: bool,
}

/// One change inside a change set: a set (with value) or a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChange {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_value")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub secret: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub delete: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A subscription: an environment and where the agent stands in it (none if it has nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub env: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

/// Agent → node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// First frame: who the agent is and what it follows.
    Hello {
        agent: String,
        subscribe: Vec<Subscription>,
    },
    /// The agent saw a gap (or a newer epoch): send what follows `position`, or a snapshot.
    Resync {
        env: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
    },
    /// The agent applied (ok) or failed to apply a version.
    Ack {
        env: String,
        position: Position,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// After an `ok` ack: whether the app stayed healthy for its bake time with `position`
    /// applied. Gives back a slot the agent held for it. `rolled_back`: the agent went back
    /// to the last healthy values.
    Health {
        env: String,
        position: Position,
        state: HealthState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        rolled_back: bool,
    },
    /// Under a rollout policy: the agent asks to act (restart or signal) on `position`. The
    /// node answers `grant` now or later, or `hold` with why it waits. Sent again after a
    /// reconnect while the agent waits or holds the slot.
    Slot { env: String, position: Position },
    /// Gives back a slot (or a request for one) without a health report: the agent found
    /// nothing to act on, or stops.
    Release { env: String },
}

/// Node → agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome {
        node: String,
        heartbeat_ms: u64,
    },
    /// The whole environment at a position; replaces what the agent holds.
    Snapshot {
        env: String,
        position: Position,
        entries: Vec<WireEntry>,
    },
    /// One committed change set, at exactly one version above the previous.
    Change {
        env: String,
        position: Position,
        changes: Vec<WireChange>,
    },
    /// The catch-up after a hello or resync is complete: the agent is current at `position`.
    Synced {
        env: String,
        position: Position,
    },
    /// Current positions of the subscribed environments.
    Heartbeat {
        positions: Vec<EnvPosition>,
    },
    /// The environment's rollout policy (`null`: none), after `synced` and whenever it
    /// changes. Under a policy the agent asks for a slot before it acts.
    Policy {
        env: String,
        policy: Option<Policy>,
    },
    /// A slot is the agent's: it may act on `position` (or any newer version) now.
    Grant {
        env: String,
        position: Position,
    },
    /// The agent's slot request waits: every slot is taken, the wave is full or baking, or
    /// the rollout is `halted` (then it waits for a fix or a resume).
    Hold {
        env: String,
        reason: String,
        #[serde(default, skip_serializing_if = "is_false")]
        halted: bool,
    },
    /// A problem with the agent's last frame; the connection stays unless said otherwise.
    Error {
        code: String,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvPosition {
    pub env: String,
    pub position: Position,
}

/// Values travel as UTF-8 strings; bytes that are not UTF-8 go as `{"b64": …}`.
mod opt_value {
    use super::Value;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes { b64: String },
    }

    pub fn serialize<S: Serializer>(v: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(v) => match v.expose_str() {
                Some(t) => s.serialize_str(t),
                None => Repr::Bytes {
                    b64: crate::protocol::b64::encode(v.expose()),
                }
                .serialize(s),
            },
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(None),
            Some(Repr::Text(t)) => Ok(Some(Value::from(t))),
            Some(Repr::Bytes { b64 }) => crate::protocol::b64::decode(&b64)
                .map(|b| Some(Value::new(b)))
                .ok_or_else(|| serde::de::Error::custom("invalid base64 value")),
        }
    }
}

/// Minimal standard base64 (with padding) for the rare non-UTF-8 value.
pub mod b64 {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let s = s.as_bytes();
        if s.len() % 4 != 0 {
            return None;
        }
        let mut out = Vec::with_capacity(s.len() / 4 * 3);
        for chunk in s.chunks(4) {
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 {
                return None;
            }
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                let v = if i >= 4 - pad {
                    0
                } else {
                    A.iter().position(|&a| a == c)? as u32
                };
                n |= v << (18 - 6 * i);
            }
            for i in 0..3 - pad {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: u64, version: u64) -> Position {
        Position {
            epoch: Epoch(epoch),
            version,
        }
    }

    /// Golden frames: each serializes to exactly this text and parses back to the same value.
    fn golden<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(
        msg: T,
        json: &str,
    ) {
        assert_eq!(serde_json::to_string(&msg).unwrap(), json);
        assert_eq!(serde_json::from_str::<T>(json).unwrap(), msg);
    }

    #[test]
    fn client_frames() {
        golden(
            ClientMsg::Hello {
                agent: "web-1/4242".into(),
                subscribe: vec![
                    Subscription {
                        env: "prod".into(),
                        position: Some(pos(0x0190_0000_0000_abcd, 41)),
                    },
                    Subscription {
                        env: "staging".into(),
                        position: None,
                    },
                ],
            },
            r#"{"type":"hello","agent":"web-1/4242","subscribe":[{"env":"prod","position":{"epoch":"019000000000abcd","version":41}},{"env":"staging"}]}"#,
        );
        golden(
            ClientMsg::Resync {
                env: "prod".into(),
                position: Some(pos(1, 41)),
            },
            r#"{"type":"resync","env":"prod","position":{"epoch":"0000000000000001","version":41}}"#,
        );
        golden(
            ClientMsg::Ack {
                env: "prod".into(),
                position: pos(1, 42),
                ok: false,
                error: Some("output /run/x: permission denied".into()),
            },
            r#"{"type":"ack","env":"prod","position":{"epoch":"0000000000000001","version":42},"ok":false,"error":"output /run/x: permission denied"}"#,
        );
    }

    #[test]
    fn server_frames() {
        golden(
            ServerMsg::Welcome {
                node: "n1".into(),
                heartbeat_ms: 15000,
            },
            r#"{"type":"welcome","node":"n1","heartbeat_ms":15000}"#,
        );
        golden(
            ServerMsg::Snapshot {
                env: "prod".into(),
                position: pos(1, 42),
                entries: vec![
                    WireEntry {
                        name: "DB_URL".into(),
                        value: Some(Value::from("postgres://db")),
                        secret: false,
                    },
                    WireEntry {
                        name: "API_KEY".into(),
                        value: None,
                        secret: true,
                    },
                ],
            },
            r#"{"type":"snapshot","env":"prod","position":{"epoch":"0000000000000001","version":42},"entries":[{"name":"DB_URL","value":"postgres://db","secret":false},{"name":"API_KEY","secret":true}]}"#,
        );
        golden(
            ServerMsg::Change {
                env: "prod".into(),
                position: pos(1, 43),
                changes: vec![
                    WireChange {
                        name: "TLS_CERT".into(),
                        value: Some(Value::from("CERT")),
                        secret: true,
                        delete: false,
                    },
                    WireChange {
                        name: "OLD".into(),
                        value: None,
                        secret: false,
                        delete: true,
                    },
                ],
            },
            r#"{"type":"change","env":"prod","position":{"epoch":"0000000000000001","version":43},"changes":[{"name":"TLS_CERT","value":"CERT","secret":true},{"name":"OLD","delete":true}]}"#,
        );
        golden(
            ServerMsg::Synced {
                env: "prod".into(),
                position: pos(1, 43),
            },
            r#"{"type":"synced","env":"prod","position":{"epoch":"0000000000000001","version":43}}"#,
        );
        golden(
            ServerMsg::Heartbeat {
                positions: vec![EnvPosition {
                    env: "prod".into(),
                    position: pos(1, 43),
                }],
            },
            r#"{"type":"heartbeat","positions":[{"env":"prod","position":{"epoch":"0000000000000001","version":43}}]}"#,
        );
        golden(
            ServerMsg::Error {
                code: "unknown_type".into(),
                message: "unknown message type \"bogus\"".into(),
            },
            r#"{"type":"error","code":"unknown_type","message":"unknown message type \"bogus\""}"#,
        );
    }

    #[test]
    fn rollout_frames() {
        use crate::rollout::Amount;
        golden(
            ClientMsg::Health {
                env: "prod".into(),
                position: pos(1, 42),
                state: HealthState::Healthy,
                error: None,
                rolled_back: false,
            },
            r#"{"type":"health","env":"prod","position":{"epoch":"0000000000000001","version":42},"state":"healthy"}"#,
        );
        golden(
            ClientMsg::Health {
                env: "prod".into(),
                position: pos(1, 42),
                state: HealthState::Failed,
                error: Some("the child exited with status 3 within the bake time".into()),
                rolled_back: true,
            },
            r#"{"type":"health","env":"prod","position":{"epoch":"0000000000000001","version":42},"state":"failed","error":"the child exited with status 3 within the bake time","rolled_back":true}"#,
        );
        golden(
            ClientMsg::Slot {
                env: "prod".into(),
                position: pos(1, 42),
            },
            r#"{"type":"slot","env":"prod","position":{"epoch":"0000000000000001","version":42}}"#,
        );
        golden(
            ClientMsg::Release { env: "prod".into() },
            r#"{"type":"release","env":"prod"}"#,
        );
        golden(
            ServerMsg::Policy {
                env: "prod".into(),
                policy: Some(Policy::new(Amount::Count(5))),
            },
            r#"{"type":"policy","env":"prod","policy":{"max_unavailable":5,"bake_ms":0,"max_failures":1}}"#,
        );
        golden(
            ServerMsg::Policy {
                env: "prod".into(),
                policy: None,
            },
            r#"{"type":"policy","env":"prod","policy":null}"#,
        );
        golden(
            ServerMsg::Grant {
                env: "prod".into(),
                position: pos(1, 42),
            },
            r#"{"type":"grant","env":"prod","position":{"epoch":"0000000000000001","version":42}}"#,
        );
        golden(
            ServerMsg::Hold {
                env: "prod".into(),
                reason: "halted: 1 agent failed version 42 (max_failures 1)".into(),
                halted: true,
            },
            r#"{"type":"hold","env":"prod","reason":"halted: 1 agent failed version 42 (max_failures 1)","halted":true}"#,
        );
    }

    #[test]
    fn binary_values_travel_as_base64() {
        let c = WireChange {
            name: "KEYSTORE".into(),
            value: Some(Value::new(vec![0xff, 0x00, 0x10])),
            secret: true,
            delete: false,
        };
        golden(
            c,
            r#"{"name":"KEYSTORE","value":{"b64":"/wAQ"},"secret":true}"#,
        );
        for n in 0..20u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(b64::decode(&b64::encode(&bytes)), Some(bytes));
        }
        assert_eq!(b64::decode("abc"), None);
        assert_eq!(b64::decode("a==="), None);
    }

    #[test]
    fn debug_of_frames_never_shows_values() {
        let m = ServerMsg::Change {
            env: "e".into(),
            position: pos(1, 2),
            changes: vec![WireChange {
                name: "K".into(),
                value: Some(Value::from("s3cr3t")),
                secret: true,
                delete: false,
            }],
        };
        assert!(!format!("{m:?}").contains("s3cr3t"));
    }

    #[test]
    fn change_rules() {
        let l = Some(pos(5, 10));
        assert_eq!(judge_change(l, pos(5, 11)), Verdict::Apply);
        assert_eq!(judge_change(l, pos(5, 10)), Verdict::Drop);
        assert_eq!(judge_change(l, pos(5, 3)), Verdict::Drop);
        assert_eq!(judge_change(l, pos(5, 12)), Verdict::Resync);
        assert_eq!(judge_change(l, pos(6, 1)), Verdict::Resync);
        assert_eq!(judge_change(l, pos(4, 11)), Verdict::Drop);
        assert_eq!(judge_change(None, pos(5, 1)), Verdict::Resync);
    }

    #[test]
    fn snapshots_never_move_back() {
        let l = Some(pos(5, 10));
        assert!(!accept_snapshot(l, pos(5, 9)));
        assert!(!accept_snapshot(l, pos(5, 10)));
        assert!(accept_snapshot(l, pos(5, 11)));
        assert!(
            accept_snapshot(l, pos(6, 1)),
            "a newer epoch is a new history"
        );
        assert!(
            !accept_snapshot(l, pos(4, 99)),
            "an older epoch never comes back"
        );
        assert!(accept_snapshot(None, pos(1, 0)));
    }

    #[test]
    fn epochs_are_ordered_hex() {
        let a = Epoch::generate();
        assert_eq!(a.to_string().len(), 16);
        assert_eq!(a.to_string().parse::<Epoch>(), Ok(a));
        assert!("xyz".parse::<Epoch>().is_err());
    }
}
