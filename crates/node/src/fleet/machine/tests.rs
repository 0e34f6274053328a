//! The rollout state machine's rules, one by one.

use super::*;
use tether_core::protocol::Epoch;
use tether_core::rollout::Amount;

const LEASE: u64 = 30_000;

fn at(version: u64) -> Position {
    Position {
        epoch: Epoch(1),
        version,
    }
}

fn policy(max: u32) -> Policy {
    Policy::new(Amount::Count(max))
}

fn name(i: usize) -> String {
    format!("agent-{i}")
}

fn granted(o: &Outcome) -> bool {
    matches!(o, Outcome::Grant)
}

#[test]
fn slots_never_exceed_the_limit_and_free_on_health_or_release() {
    let p = policy(3);
    let mut r = Record::default();
    let outcomes: Vec<Outcome> = (0..10)
        .map(|i| acquire(&mut r, &p, 10, &name(i), at(2), 0, LEASE))
        .collect();
    assert_eq!(outcomes.iter().filter(|o| granted(o)).count(), 3);
    assert_eq!(
        outcomes[3],
        Outcome::Hold {
            reason: "3 of 3 slots in use".into(),
            halted: false
        }
    );
    assert_eq!(r.slots.len(), 3);
    assert_eq!(report(&mut r, &p, &name(0), at(2), true, 5), None);
    assert!(granted(&acquire(&mut r, &p, 10, &name(3), at(2), 6, LEASE)));
    assert!(!granted(&acquire(
        &mut r,
        &p,
        10,
        &name(4),
        at(2),
        6,
        LEASE
    )));
    release(&mut r, &name(1));
    assert!(
        !r.granted.contains(&name(1)),
        "released without acting: not a member"
    );
    assert!(granted(&acquire(&mut r, &p, 10, &name(4), at(2), 7, LEASE)));
    assert_eq!(r.slots.len(), 3);
}

#[test]
fn a_percentage_is_of_the_agents_following() {
    let p = Policy::new(Amount::Percent(20));
    let mut r = Record::default();
    let n = (0..20)
        .filter(|i| granted(&acquire(&mut r, &p, 20, &name(*i), at(1), 0, LEASE)))
        .count();
    assert_eq!(n, 4, "20% of 20");
    let mut r = Record::default();
    let n = (0..20)
        .filter(|i| granted(&acquire(&mut r, &p, 3, &name(*i), at(1), 0, LEASE)))
        .count();
    assert_eq!(n, 1, "20% of 3 rounds up to one");
}

#[test]
fn a_holder_asking_again_keeps_its_slot_renewed() {
    let p = policy(1);
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 5, "a", at(1), 0, LEASE)));
    assert!(granted(&acquire(&mut r, &p, 5, "a", at(1), 20_000, LEASE)));
    assert_eq!(r.slots["a"], 50_000);
    assert_eq!(r.slots.len(), 1);
    assert!(!granted(&acquire(&mut r, &p, 5, "b", at(1), 40_000, LEASE)));
    renew(&mut r, ["a", "nobody"], 45_000, LEASE);
    assert_eq!(r.slots["a"], 75_000);
    assert_eq!(r.slots.len(), 1);
}

#[test]
fn a_slot_expires_with_its_lease_and_goes_to_the_next_agent() {
    let p = policy(1);
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 5, "gone", at(1), 0, LEASE)));
    assert!(!granted(&acquire(
        &mut r,
        &p,
        5,
        "next",
        at(1),
        LEASE - 1,
        LEASE
    )));
    assert!(granted(&acquire(
        &mut r,
        &p,
        5,
        "next",
        at(1),
        LEASE,
        LEASE
    )));
    assert!(!r.slots.contains_key("gone"));
    assert!(
        !r.granted.contains("gone"),
        "it never reported: out of its wave"
    );
    assert_eq!(expire(&mut r, 2 * LEASE), vec!["next".to_string()]);
}

#[test]
fn waves_advance_only_when_complete_and_baked() {
    let mut p = policy(10);
    p.waves = vec![Amount::Count(1), Amount::Percent(50)];
    p.bake_ms = 1000;
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 10, "a", at(1), 0, LEASE)));
    let hold = acquire(&mut r, &p, 10, "b", at(1), 1, LEASE);
    assert!(
        matches!(&hold, Outcome::Hold { reason, .. } if reason.contains("wave 1 of 3 is full")),
        "{hold:?}"
    );
    report(&mut r, &p, "a", at(1), true, 100);
    let hold = acquire(&mut r, &p, 10, "b", at(1), 1099, LEASE);
    assert!(
        matches!(&hold, Outcome::Hold { reason, .. } if reason.contains("baking")),
        "{hold:?}"
    );
    assert!(granted(&acquire(&mut r, &p, 10, "b", at(1), 1100, LEASE)));
    assert_eq!(r.wave, 1);
    for x in ["c", "d", "e"] {
        assert!(granted(&acquire(&mut r, &p, 10, x, at(1), 1100, LEASE)));
    }
    assert!(
        !granted(&acquire(&mut r, &p, 10, "f", at(1), 1100, LEASE)),
        "wave 2 is 5 agents"
    );
    for x in ["b", "c", "d", "e"] {
        report(&mut r, &p, x, at(1), true, 2000);
    }
    assert!(!granted(&acquire(&mut r, &p, 10, "f", at(1), 2999, LEASE)));
    assert!(granted(&acquire(&mut r, &p, 10, "f", at(1), 3000, LEASE)));
    assert_eq!(r.wave, 2);
    for x in ["g", "h", "i", "j"] {
        assert!(granted(&acquire(&mut r, &p, 10, x, at(1), 3000, LEASE)));
    }
    assert!(
        granted(&acquire(&mut r, &p, 10, "k", at(1), 3000, LEASE)),
        "the last wave is everyone, even past the count"
    );
    assert_eq!(
        r.current_wave(&p.wave_sizes(10), p.bake_ms, 1_000_000),
        2,
        "never past the last"
    );
}

#[test]
fn the_rollout_halts_at_max_failures_and_holds_say_so() {
    let mut p = policy(5);
    p.max_failures = 2;
    let mut r = Record::default();
    for x in ["a", "b", "c"] {
        assert!(granted(&acquire(&mut r, &p, 10, x, at(4), 0, LEASE)));
    }
    assert_eq!(report(&mut r, &p, "a", at(4), false, 1), None);
    assert_eq!(
        report(&mut r, &p, "a", at(3), false, 1),
        None,
        "an older version does not count"
    );
    let reason = report(&mut r, &p, "b", at(4), false, 2).expect("halted");
    assert_eq!(reason, "halted: 2 agents failed version 4 (max_failures 2)");
    assert_eq!(
        report(&mut r, &p, "c", at(4), false, 3),
        None,
        "halted once"
    );
    assert!(r.slots.is_empty(), "every report freed its slot");
    assert_eq!(
        acquire(&mut r, &p, 10, "d", at(4), 4, LEASE),
        Outcome::Hold {
            reason,
            halted: true
        }
    );
    assert!(
        !granted(&acquire(&mut r, &p, 10, "d", at(3), 4, LEASE)),
        "older counts against the current"
    );
}

#[test]
fn a_fix_starts_over_and_resume_forgets_the_failures() {
    let p = policy(5);
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 10, "a", at(4), 0, LEASE)));
    assert!(granted(&acquire(&mut r, &p, 10, "slow", at(4), 0, LEASE)));
    assert!(report(&mut r, &p, "a", at(4), false, 1).is_some());
    assert!(!granted(&acquire(&mut r, &p, 10, "b", at(4), 2, LEASE)));
    // Resume: the halt and the failures are gone, the rollout goes on.
    assert!(resume(&mut r));
    assert!(r.failed.is_empty() && r.halted.is_none());
    assert!(granted(&acquire(&mut r, &p, 10, "b", at(4), 3, LEASE)));
    assert!(
        report(&mut r, &p, "b", at(4), false, 4).is_some(),
        "halts again at the next failure"
    );
    // A fix: a newer version starts a new rollout, the halt lifted; a slot held stays held.
    assert!(granted(&acquire(&mut r, &p, 10, "c", at(5), 5, LEASE)));
    assert_eq!(r.version, Some(at(5)));
    assert!(r.halted.is_none() && r.failed.is_empty());
    assert_eq!(
        r.granted,
        ["c", "slow"].map(String::from).into(),
        "a holder carried over is a member of the new wave"
    );
    assert!(
        r.slots.contains_key("slow"),
        "still acting on the old version"
    );
    assert_eq!(r.slots.len(), 2);
    assert!(!resume(&mut r), "nothing to resume");
}

#[test]
fn a_resumed_wave_completes_with_its_forgiven_failures() {
    let mut p = policy(5);
    p.waves = vec![Amount::Count(1)];
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 3, "a", at(1), 0, LEASE)));
    assert!(report(&mut r, &p, "a", at(1), false, 1).is_some());
    resume(&mut r);
    assert!(
        granted(&acquire(&mut r, &p, 3, "b", at(1), 2, LEASE)),
        "the failed member counts as reported"
    );
}

#[test]
fn the_record_round_trips_as_json() {
    let p = policy(2);
    let mut r = Record::default();
    acquire(&mut r, &p, 4, "a", at(9), 7, LEASE);
    report(&mut r, &p, "b", at(9), false, 8);
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    assert_eq!(
        serde_json::from_str::<Record>("{}").unwrap(),
        Record::default()
    );
}

#[test]
fn one_wave_never_holds_past_the_count() {
    let p = policy(2);
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 1, "a", at(1), 0, LEASE)));
    assert!(
        granted(&acquire(&mut r, &p, 1, "b", at(1), 0, LEASE)),
        "{r:?}"
    );
}

#[test]
fn a_repeated_report_changes_nothing_and_a_resume_sticks() {
    let p = policy(5);
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 10, "a", at(4), 0, LEASE)));
    assert!(granted(&acquire(&mut r, &p, 10, "b", at(4), 0, LEASE)));
    assert!(report(&mut r, &p, "a", at(4), false, 1).is_some());
    assert!(resume(&mut r));
    // The agent reconnects and sends its last report again.
    assert_eq!(report(&mut r, &p, "a", at(4), false, 2), None);
    assert!(r.halted.is_none(), "the resume holds: {r:?}");
    assert!(r.forgiven.contains("a") && r.failed.is_empty());
    assert_eq!(report(&mut r, &p, "b", at(4), true, 3), None);
    assert_eq!(report(&mut r, &p, "b", at(4), true, 50), None);
    assert_eq!(
        r.last_report_ms,
        Some(3),
        "the bake counts from the first word"
    );
}

#[test]
fn a_report_of_an_older_version_leaves_a_newer_slot_held() {
    let p = policy(1);
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 10, "a", at(2), 0, LEASE)));
    // On a reconnect the agent re-sends its health of version 1 first.
    report(&mut r, &p, "a", at(1), true, 1);
    assert!(r.slots.contains_key("a"), "{r:?}");
    assert!(
        !granted(&acquire(&mut r, &p, 10, "b", at(2), 2, LEASE)),
        "the one slot is still taken"
    );
    // Asked again for a newer version under the same slot: only that one frees it.
    assert!(granted(&acquire(&mut r, &p, 10, "a", at(3), 3, LEASE)));
    report(&mut r, &p, "a", at(2), true, 4);
    assert!(r.slots.contains_key("a"));
    report(&mut r, &p, "a", at(3), true, 5);
    assert!(r.slots.is_empty());
    assert!(granted(&acquire(&mut r, &p, 10, "b", at(3), 6, LEASE)));
}

#[test]
fn a_slot_of_an_older_record_is_freed_by_any_report() {
    let old = r#"{"version":{"epoch":"0000000000000001","version":2},"granted":["a"],"slots":{"a":99999}}"#;
    let mut r: Record = serde_json::from_str(old).unwrap();
    assert_eq!(r.agents, 0);
    report(&mut r, &policy(1), "a", at(1), true, 1);
    assert!(r.slots.is_empty());
}

#[test]
fn holders_carried_into_a_new_version_fill_its_first_wave() {
    let mut p = policy(5);
    p.waves = vec![Amount::Count(1)];
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 10, "a", at(1), 0, LEASE)));
    // Version 2 arrives while "a" holds its slot; it acts on 2 under it.
    let hold = acquire(&mut r, &p, 10, "b", at(2), 1, LEASE);
    assert!(
        matches!(&hold, Outcome::Hold { reason, .. } if reason.contains("wave 1 of 2 is full")),
        "{hold:?}"
    );
    // A holder that reports the older version did not act on the newer one: not a member.
    report(&mut r, &p, "a", at(1), true, 2);
    assert!(!r.granted.contains("a"));
    assert!(granted(&acquire(&mut r, &p, 10, "b", at(2), 3, LEASE)));
}

#[test]
fn the_rollout_keeps_the_largest_count_of_agents() {
    let mut p = policy(10);
    p.waves = vec![Amount::Count(1), Amount::Percent(50)];
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 10, "a", at(1), 0, LEASE)));
    assert_eq!(r.agents, 10);
    // A node that just restarted counts only the agents it saw so far.
    let hold = acquire(&mut r, &p, 1, "b", at(1), 1, LEASE);
    assert!(
        matches!(&hold, Outcome::Hold { reason, .. } if reason.contains("wave 1 of 3")),
        "{hold:?}"
    );
    // A new version counts afresh (the fleet may have shrunk).
    report(&mut r, &p, "a", at(1), true, 2);
    assert!(granted(&acquire(&mut r, &p, 4, "a", at(2), 3, LEASE)));
    assert_eq!(r.agents, 4);
}

#[test]
fn a_huge_lease_does_not_overflow() {
    let p = policy(1);
    let mut r = Record::default();
    assert!(granted(&acquire(&mut r, &p, 1, "a", at(1), 5, u64::MAX)));
    assert!(granted(&acquire(&mut r, &p, 1, "a", at(1), 6, u64::MAX)));
    renew(&mut r, ["a"], 7, u64::MAX);
    assert_eq!(r.slots["a"], u64::MAX);
}
