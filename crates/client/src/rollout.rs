//! The `"rollout"` object of a node's status (`docs/rollouts.md`, "Seeing it"): read
//! leniently, printed as one line, added up over separate single nodes, and judged by
//! `status --watch` (done, halted, still rolling).

use serde_json::{Value as Json, json};

/// Exit code of `status --watch` for a rollout that halted, or finished with failed agents
/// (EX_DATAERR: the change itself is bad; waiting longer will not help).
pub const EXIT_HALTED: i32 = 65;

/// One environment's rollout, as the node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub state: String,
    pub version: Option<u64>,
    pub agents: u64,
    pub applied: u64,
    pub healthy: u64,
    pub failed: u64,
    pub rolled_back: u64,
    pub pending: u64,
    /// (wave, waves), under a policy.
    pub wave: Option<(u64, u64)>,
    /// (held, max), under a policy.
    pub slots: Option<(u64, u64)>,
    pub halted_reason: Option<String>,
}

impl Rollout {
    pub fn of(r: &Json) -> Rollout {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        Rollout {
            state: r["state"].as_str().unwrap_or("unknown").to_string(),
            version: r["version"].as_u64(),
            agents: n("agents"),
            applied: n("applied"),
            healthy: n("healthy"),
            failed: n("failed"),
            rolled_back: n("rolled_back"),
            pending: n("pending"),
            wave: r["wave"].as_u64().zip(r["waves"].as_u64()),
            slots: r
                .pointer("/slots/held")
                .and_then(Json::as_u64)
                .zip(r.pointer("/slots/max").and_then(Json::as_u64)),
            // It comes from agents' reports: control characters are shown escaped.
            // Printed after `halted: `: a reason that starts so already is not said twice.
            halted_reason: r["halted_reason"].as_str().map(|s| {
                s.strip_prefix("halted: ")
                    .unwrap_or(s)
                    .escape_debug()
                    .to_string()
            }),
        }
    }

    /// `version 43: 12/50 applied, 10 healthy, 0 failed, 38 pending · wave 2/4 · slots 2/5 · rolling`
    pub fn line(&self) -> String {
        let version = self.version.map_or("none".to_string(), |v| v.to_string());
        let mut line = format!(
            "version {version}: {}/{} applied, {} healthy, {} failed",
            self.applied, self.agents, self.healthy, self.failed
        );
        if self.rolled_back > 0 {
            line.push_str(&format!(" ({} rolled back)", self.rolled_back));
        }
        line.push_str(&format!(", {} pending", self.pending));
        if let Some((w, n)) = self.wave {
            line.push_str(&format!(" · wave {w}/{n}"));
        }
        if let Some((h, m)) = self.slots {
            line.push_str(&format!(" · slots {h}/{m}"));
        }
        line.push_str(&format!(" · {}", self.state));
        line
    }

    /// The lines `status` prints for it: the counts, and why it halted.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![self.line()];
        if self.state == "halted" {
            out.push(format!(
                "halted: {}",
                self.halted_reason.as_deref().unwrap_or("(no reason given)")
            ));
        }
        out
    }

    /// `status --watch`'s verdict: `Some(exit code)` once the rollout is over, `None` while
    /// it goes on. Done is 0, or [`EXIT_HALTED`] when agents failed; halted is
    /// [`EXIT_HALTED`]. A done rollout with fewer than `min_agents` agents is not over.
    pub fn verdict(&self, min_agents: u64) -> Option<i32> {
        match self.state.as_str() {
            "halted" => Some(EXIT_HALTED),
            "done" if self.agents >= min_agents => {
                Some(if self.failed > 0 { EXIT_HALTED } else { 0 })
            }
            "idle" if min_agents == 0 => Some(0),
            _ => None,
        }
    }
}

/// The rollouts of separate single nodes (each knows its own agents) as one: counts added
/// up, halted if any halted, rolling if any rolls, done once every node with agents is.
/// Wave and slots are kept only when one node reports them (they are not additive).
pub fn merge(parts: &[Json]) -> Json {
    let mut parts: Vec<&Json> = parts.iter().filter(|p| p.is_object()).collect();
    if parts.len() <= 1 {
        return parts.pop().cloned().unwrap_or(Json::Null);
    }
    let mut total = json!({});
    for k in [
        "agents",
        "applied",
        "healthy",
        "failed",
        "rolled_back",
        "pending",
    ] {
        total[k] = json!(
            parts
                .iter()
                .map(|p| p[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        );
    }
    total["version"] = json!(parts.iter().filter_map(|p| p["version"].as_u64()).max());
    let states: Vec<&str> = parts.iter().filter_map(|p| p["state"].as_str()).collect();
    total["state"] = json!(if states.contains(&"halted") {
        "halted"
    } else if states.contains(&"rolling") {
        "rolling"
    } else if states.iter().all(|s| *s == "idle") {
        "idle"
    } else if states.iter().all(|s| matches!(*s, "idle" | "done")) {
        "done"
    } else {
        "rolling"
    });
    let reasons: Vec<&str> = parts
        .iter()
        .filter_map(|p| p["halted_reason"].as_str())
        .collect();
    if !reasons.is_empty() {
        total["halted_reason"] = json!(reasons.join("; "));
    }
    let with_waves: Vec<&&Json> = parts.iter().filter(|p| p.get("wave").is_some()).collect();
    if let [only] = with_waves.as_slice() {
        for k in ["wave", "waves", "wave_sizes", "slots", "policy"] {
            if let Some(v) = only.get(k) {
                total[k] = v.clone();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of docs/rollouts.md.
    fn documented() -> Json {
        serde_json::from_str(
            r#"{"state": "rolling", "version": 43, "agents": 50, "applied": 12, "healthy": 10, "failed": 0,
 "pending": 38, "wave": 2, "waves": 4, "wave_sizes": [1, 5, 25, 50],
 "slots": {"held": 2, "max": 5}, "policy": {"max_unavailable": 5, "bake_ms": 0, "max_failures": 1}}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_documented_rollout_prints_as_one_line() {
        let r = Rollout::of(&documented());
        assert_eq!(
            r.lines(),
            [
                "version 43: 12/50 applied, 10 healthy, 0 failed, 38 pending · wave 2/4 · slots 2/5 · rolling"
            ]
        );
        assert_eq!(r.verdict(1), None);
    }

    #[test]
    fn a_halt_prints_its_reason_and_ends_a_watch_with_65() {
        let mut j = documented();
        j["state"] = json!("halted");
        j["failed"] = json!(2);
        j["rolled_back"] = json!(2);
        j["halted_reason"] = json!("halted: 2 agents failed version 43 (max_failures 2)\n");
        let r = Rollout::of(&j);
        assert_eq!(
            r.lines(),
            [
                "version 43: 12/50 applied, 10 healthy, 2 failed (2 rolled back), 38 pending · wave 2/4 · slots 2/5 · halted",
                "halted: 2 agents failed version 43 (max_failures 2)\\n",
            ]
        );
        assert_eq!(r.verdict(1), Some(EXIT_HALTED));
    }

    #[test]
    fn done_is_0_unless_agents_failed_and_needs_min_agents() {
        let no_policy = json!({"state": "done", "version": 7, "agents": 3, "applied": 3, "healthy": 3, "failed": 0, "pending": 0});
        let r = Rollout::of(&no_policy);
        assert_eq!(
            r.line(),
            "version 7: 3/3 applied, 3 healthy, 0 failed, 0 pending · done"
        );
        assert_eq!(r.verdict(1), Some(0));
        assert_eq!(r.verdict(4), None, "fewer agents than --min-agents");
        let mut failed = no_policy.clone();
        failed["failed"] = json!(1);
        assert_eq!(Rollout::of(&failed).verdict(1), Some(EXIT_HALTED));
        let idle = json!({"state": "idle", "version": 7, "agents": 0});
        assert_eq!(Rollout::of(&idle).verdict(1), None);
        assert_eq!(Rollout::of(&idle).verdict(0), Some(0));
    }

    #[test]
    fn separate_nodes_add_up() {
        let a = json!({"state": "done", "version": 7, "agents": 2, "applied": 2, "healthy": 2, "failed": 0, "pending": 0});
        let b = json!({"state": "rolling", "version": 7, "agents": 3, "applied": 1, "healthy": 0, "failed": 0, "pending": 2});
        let m = Rollout::of(&merge(&[a.clone(), b]));
        assert_eq!(
            m.line(),
            "version 7: 3/5 applied, 2 healthy, 0 failed, 2 pending · rolling"
        );
        let idle = json!({"state": "idle", "version": 7, "agents": 0});
        assert_eq!(Rollout::of(&merge(&[a.clone(), idle])).state, "done");
        let h = json!({"state": "halted", "version": 7, "agents": 1, "failed": 1, "halted_reason": "1 agent failed"});
        let m = Rollout::of(&merge(&[a.clone(), h]));
        assert_eq!(
            (m.state.as_str(), m.halted_reason.as_deref()),
            ("halted", Some("1 agent failed"))
        );
        assert_eq!(
            merge(&[a.clone(), Json::Null]),
            a,
            "a node without rollouts adds nothing"
        );
        assert_eq!(merge(&[]), Json::Null);
    }
}
