//! Rollout policies and health, as agents, nodes and the admin client share them.
//!
//! An environment may carry a [`Policy`]: at most `max_unavailable` agents act on a change
//! (restart, or signal when `signals`) at once, optionally in `waves` with a `bake` between
//! them, and the rollout halts once `max_failures` agents report the change unhealthy. An
//! [`Amount`] is a count (`5`) or a share of the agents following the environment (`10%`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A number of agents, or a percentage of those following an environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    /// 1 to 100.
    Percent(u8),
}

impl Amount {
    /// How many agents this is out of `n`. A percentage rounds up and is at least one agent
    /// (when there is any), so `1%` of 10 agents still lets one act.
    pub fn of(self, n: usize) -> usize {
        match self {
            Amount::Count(c) => c as usize,
            Amount::Percent(p) => (n * usize::from(p)).div_ceil(100).max(usize::from(n > 0)),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(c) => write!(f, "{c}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Amount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a count (5) or a percentage (10%) of agents");
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| bad())?;
            if p == 0 || p > 100 {
                return Err(format!("{s:?}: a percentage of agents is 1% to 100%"));
            }
            return Ok(Amount::Percent(p));
        }
        let c: u32 = s.parse().map_err(|_| bad())?;
        if c == 0 {
            return Err(format!("{s:?}: a count of agents is at least 1"));
        }
        Ok(Amount::Count(c))
    }
}

/// A count travels as a JSON number, a percentage as `"10%"`.
impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(c) => s.serialize_u32(*c),
            Amount::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Count(u64),
            Text(String),
        }
        let text = match Repr::deserialize(d)? {
            Repr::Count(c) => c.to_string(),
            Repr::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How changes to an environment roll out over the agents that follow it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Agents acting on a change (from asking for a slot until healthy or failed) at once.
    pub max_unavailable: Amount,
    /// Cumulative sizes of the waves: `[1, 10%, 50%, 100%]`. Empty: one wave of everyone.
    /// A list that does not end with everyone gets a last wave of 100%.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Amount>,
    /// Wait after a wave is all healthy before the next starts, in milliseconds.
    #[serde(default)]
    pub bake_ms: u64,
    /// The rollout halts once this many agents report the change failed.
    #[serde(default = "one")]
    pub max_failures: u32,
    /// Signals (not only restarts) take a slot too.
    #[serde(default, skip_serializing_if = "is_false")]
    pub signals: bool,
}

fn one() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Policy {
    /// A policy with only `max_unavailable` (one wave, no bake, halt at the first failure).
    pub fn new(max_unavailable: Amount) -> Policy {
        Policy {
            max_unavailable,
            waves: Vec::new(),
            bake_ms: 0,
            max_failures: 1,
            signals: false,
        }
    }

    /// Problems a node refuses the policy for, with the field to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_failures == 0 {
            return Err("max_failures: must be at least 1".into());
        }
        if self.waves.len() > 100 {
            return Err("waves: at most 100 waves".into());
        }
        if self.bake_ms > 7 * 24 * 3600 * 1000 {
            return Err("bake_ms: at most a week".into());
        }
        // Counts must grow, and so must percentages (a count and a percentage cannot be
        // compared without knowing how many agents follow).
        for pair in self.waves.windows(2) {
            let growing = match (pair[0], pair[1]) {
                (Amount::Count(a), Amount::Count(b)) => a < b,
                (Amount::Percent(a), Amount::Percent(b)) => a < b,
                (Amount::Percent(100), Amount::Count(_)) => false,
                _ => true,
            };
            if !growing {
                return Err(format!(
                    "waves: each wave is larger than the one before ({} then {})",
                    pair[0], pair[1]
                ));
            }
        }
        Ok(())
    }

    /// The cumulative size of each wave for `n` agents following, the last always `n`. Waves
    /// that add nobody are left out (with 3 agents, `[1, 10%, 50%, 100%]` is `[1, 2, 3]`).
    pub fn wave_sizes(&self, n: usize) -> Vec<usize> {
        let mut sizes: Vec<usize> = Vec::new();
        for w in &self.waves {
            let s = w.of(n).min(n);
            if s > sizes.last().copied().unwrap_or(0) {
                sizes.push(s);
            }
        }
        if sizes.last().copied().unwrap_or(0) < n || sizes.is_empty() {
            sizes.push(n);
        }
        sizes
    }

    /// Slots for `n` agents following: at least one.
    pub fn slots(&self, n: usize) -> usize {
        self.max_unavailable.of(n).max(1)
    }
}

/// What an agent says of a version after it applied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// The child passed its health check for the bake time (or nothing needed checking).
    Healthy,
    /// It did not (the child exited, the check failed); the reason says why.
    Failed,
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthState::Healthy => "healthy",
            HealthState::Failed => "failed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_and_print_both_ways() {
        assert_eq!("5".parse(), Ok(Amount::Count(5)));
        assert_eq!(" 10% ".parse(), Ok(Amount::Percent(10)));
        assert!("0".parse::<Amount>().is_err());
        assert!("0%".parse::<Amount>().is_err());
        assert!("101%".parse::<Amount>().is_err());
        assert!("-1".parse::<Amount>().is_err());
        assert!("five".parse::<Amount>().is_err());
        assert_eq!(serde_json::to_string(&Amount::Count(5)).unwrap(), "5");
        assert_eq!(
            serde_json::to_string(&Amount::Percent(10)).unwrap(),
            r#""10%""#
        );
        assert_eq!(
            serde_json::from_str::<Amount>("5").unwrap(),
            Amount::Count(5)
        );
        assert_eq!(
            serde_json::from_str::<Amount>(r#""5""#).unwrap(),
            Amount::Count(5)
        );
        assert_eq!(
            serde_json::from_str::<Amount>(r#""25%""#).unwrap(),
            Amount::Percent(25)
        );
        assert!(serde_json::from_str::<Amount>("0").is_err());
        assert!(serde_json::from_str::<Amount>("-3").is_err());
    }

    #[test]
    fn a_percentage_rounds_up_and_lets_one_act() {
        assert_eq!(Amount::Percent(10).of(50), 5);
        assert_eq!(Amount::Percent(10).of(51), 6);
        assert_eq!(Amount::Percent(1).of(10), 1);
        assert_eq!(Amount::Percent(50).of(0), 0);
        assert_eq!(Amount::Count(5).of(3), 5);
    }

    #[test]
    fn waves_grow_and_end_with_everyone() {
        let mut p = Policy::new(Amount::Count(5));
        assert_eq!(p.wave_sizes(50), vec![50]);
        p.waves = ["1", "10%", "50%", "100%"]
            .iter()
            .map(|w| w.parse().unwrap())
            .collect();
        assert_eq!(p.wave_sizes(50), vec![1, 5, 25, 50]);
        assert_eq!(p.wave_sizes(3), vec![1, 2, 3]);
        p.waves = vec![Amount::Count(2), Amount::Percent(50)];
        assert_eq!(
            p.wave_sizes(10),
            vec![2, 5, 10],
            "a last wave of everyone is implied"
        );
        assert_eq!(p.wave_sizes(0), vec![0]);
        assert!(p.validate().is_ok());
        p.waves = vec![Amount::Count(5), Amount::Count(5)];
        assert!(p.validate().unwrap_err().starts_with("waves:"));
        p.waves = vec![];
        p.max_failures = 0;
        assert!(p.validate().unwrap_err().starts_with("max_failures:"));
        assert_eq!(Policy::new(Amount::Percent(1)).slots(10), 1);
    }

    #[test]
    fn a_policy_reads_with_defaults_and_refuses_unknown_fields() {
        let p: Policy = serde_json::from_str(r#"{"max_unavailable":"10%"}"#).unwrap();
        assert_eq!(p, Policy::new(Amount::Percent(10)));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"max_unavailable":"10%","bake_ms":0,"max_failures":1}"#
        );
        let full = r#"{"max_unavailable":5,"waves":[1,"10%","50%","100%"],"bake_ms":30000,"max_failures":2,"signals":true}"#;
        let p: Policy = serde_json::from_str(full).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), full);
        assert!(
            serde_json::from_str::<Policy>(r#"{"max_unavailable":5,"maxfailures":2}"#).is_err()
        );
        assert!(serde_json::from_str::<Policy>(r#"{"waves":[1]}"#).is_err());
    }
}
