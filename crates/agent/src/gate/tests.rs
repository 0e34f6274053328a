//! Unit tests of the gate's decisions: when a change asks for a slot, waits, is withdrawn,
//! acts under a grant, and when it acts alone for want of a node.

use super::*;
use tether_core::protocol::Epoch;
use tether_core::rollout::Amount;
use tether_core::signal::Signal;

const SPLAY: Duration = Duration::from_secs(10);

fn at(version: u64) -> Position {
    Position {
        epoch: Epoch(1),
        version,
    }
}

fn policy(signals: bool) -> Policy {
    Policy {
        signals,
        ..Policy::new(Amount::Count(1))
    }
}

/// A gate with a node connected and `policy`.
fn gate(policy: Option<Policy>) -> Gate {
    let mut g = Gate::default();
    g.connected();
    g.set_policy(policy);
    g
}

fn yes(_: &Policy) -> bool {
    true
}

fn no(_: &Policy) -> bool {
    false
}

#[test]
fn only_paced_actions_take_a_slot() {
    let restart = Actions {
        restart: true,
        ..Actions::default()
    };
    let signal = Actions {
        signals: vec![Signal::HUP],
        ..Actions::default()
    };
    let hook = Actions {
        hooks: vec![vec!["reload".into()]],
        ..Actions::default()
    };
    let nothing = Actions::default();
    assert!(paced(&policy(false), &restart));
    assert!(paced(&policy(true), &restart));
    assert!(!paced(&policy(false), &signal));
    assert!(paced(&policy(true), &signal));
    assert!(
        !paced(&policy(false), &hook),
        "exec hooks are paced like signals"
    );
    assert!(paced(&policy(true), &hook));
    assert!(!paced(&policy(true), &nothing));
}

#[test]
fn without_a_policy_or_a_node_position_a_change_acts_at_once() {
    let now = Instant::now();
    let mut g = gate(None);
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Act);
    assert!(!g.engaged());

    let mut g = gate(Some(policy(false)));
    // A file-source edit alone: no position of the network source to pace.
    assert_eq!(g.check(None, yes, now, SPLAY), Check::Act);
    // A change whose actions are not paced.
    assert_eq!(g.check(Some(at(2)), no, now, SPLAY), Check::Act);
    assert!(!g.engaged());
}

#[test]
fn a_paced_change_asks_once_and_newer_versions_update_the_request() {
    let now = Instant::now();
    let mut g = gate(Some(policy(false)));
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Ask(at(2)));
    assert!(g.waiting());
    assert_eq!(g.alone_at(), None, "a node is there: no fallback");
    // Another trigger (a file edit, the debounce again) while waiting: still waiting.
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Wait);
    // A newer version: asked for under the same wait.
    assert_eq!(g.check(Some(at(3)), yes, now, SPLAY), Check::Ask(at(3)));
    assert!(g.waiting());
}

#[test]
fn a_change_that_no_longer_needs_a_slot_withdraws_the_request() {
    let now = Instant::now();
    let mut g = gate(Some(policy(false)));
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Ask(at(2)));
    // The policy cleared while waiting.
    g.set_policy(None);
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Withdraw);
    assert!(!g.engaged());

    // The newest version's actions are no longer paced (a signal only, without `signals`).
    g.set_policy(Some(policy(false)));
    assert_eq!(g.check(Some(at(3)), yes, now, SPLAY), Check::Ask(at(3)));
    assert_eq!(g.check(Some(at(4)), no, now, SPLAY), Check::Withdraw);
    assert!(!g.engaged());
}

#[test]
fn a_grant_is_taken_only_while_waiting_and_covers_newer_changes() {
    let now = Instant::now();
    let mut g = gate(Some(policy(false)));
    assert!(!g.granted(now), "a grant not asked for is not taken");
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Ask(at(2)));
    assert!(g.granted(now));
    assert!(g.engaged() && !g.waiting(), "holding the slot");
    assert!(!g.granted(now), "a second grant is not a second slot");
    // While the slot is held, a newer paced change acts under it.
    assert_eq!(g.check(Some(at(3)), yes, now, SPLAY), Check::Act);
    g.returned(now);
    assert!(!g.engaged());
    assert_eq!(g.check(Some(at(4)), yes, now, SPLAY), Check::Ask(at(4)));
}

#[test]
fn without_a_node_the_agent_acts_alone_after_its_splay_unless_one_comes_back() {
    let now = Instant::now();
    let mut g = gate(Some(policy(false)));
    assert_eq!(g.lost(now, SPLAY), None, "not waiting: nothing to schedule");
    g.connected();

    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Ask(at(2)));
    let splay = g.lost(now, SPLAY).expect("a splay drawn while waiting");
    assert!(
        splay >= ALONE_FLOOR && splay < ALONE_FLOOR + SPLAY,
        "{splay:?}"
    );
    assert_eq!(g.alone_at(), Some(now + splay));
    assert_eq!(g.lost(now, SPLAY), None, "drawn once per wait");
    assert_eq!(g.alone_at(), Some(now + splay));
    // The node is back before the splay ends: wait for the grant instead.
    assert!(g.connected());
    assert_eq!(g.alone_at(), None);
    assert!(g.waiting());
    assert!(!g.connected(), "nothing left to call off");

    // A change asked for while no node is reachable schedules the fallback at once; with
    // no splay configured it is due after the floor.
    let mut g = gate(Some(policy(false)));
    g.lost(now, SPLAY);
    assert_eq!(
        g.check(Some(at(2)), yes, now, Duration::ZERO),
        Check::Ask(at(2))
    );
    assert_eq!(g.alone_at(), Some(now + ALONE_FLOOR));
    g.returned(now);
    assert_eq!(g.alone_at(), None);
}

#[test]
fn each_hold_reason_is_told_once_per_wait() {
    let now = Instant::now();
    let mut g = gate(Some(policy(false)));
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Ask(at(2)));
    assert!(g.held("5 of 5 slots in use", false));
    assert!(!g.held("5 of 5 slots in use", false));
    assert!(g.held("halted: 2 agents failed version 2", true));
    assert!(
        g.held("5 of 5 slots in use", false),
        "a reason back again is news"
    );
    assert!(g.granted(now));
    g.returned(now);
    assert_eq!(g.check(Some(at(3)), yes, now, SPLAY), Check::Ask(at(3)));
    assert!(
        g.held("5 of 5 slots in use", false),
        "a new wait tells it again"
    );
}

/// With the default splay of 0 a lost node still leaves the floor for a failover.
#[test]
fn acting_alone_waits_at_least_the_floor_even_without_a_splay() {
    let now = Instant::now();
    let mut g = gate(Some(policy(false)));
    assert_eq!(
        g.check(Some(at(2)), yes, now, Duration::ZERO),
        Check::Ask(at(2))
    );
    assert_eq!(g.lost(now, Duration::ZERO), Some(ALONE_FLOOR));
    assert_eq!(g.alone_at(), Some(now + ALONE_FLOOR));
}

/// A rollout last said to be halted is never acted on alone, whatever the nodes do.
#[test]
fn a_halted_rollout_is_never_acted_on_alone() {
    let now = Instant::now();
    let mut g = gate(Some(policy(false)));
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Ask(at(2)));
    g.held("halted: 1 agent failed version 2", true);
    assert_eq!(g.lost(now, SPLAY), None);
    assert_eq!(g.alone_at(), None);
    // A newer version asked for under the same wait stays halted.
    assert_eq!(g.check(Some(at(3)), yes, now, SPLAY), Check::Ask(at(3)));
    assert_eq!(g.lost(now, SPLAY), None);
    // A node back that no longer says halted: a later loss falls back again.
    g.connected();
    g.held("1 of 1 slots in use", false);
    assert!(g.lost(now, SPLAY).is_some());
    // A new wait starts unhalted.
    let mut g = gate(Some(policy(false)));
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Ask(at(2)));
    g.held("halted", true);
    g.returned(now);
    assert_eq!(g.check(Some(at(3)), yes, now, SPLAY), Check::Ask(at(3)));
    assert!(g.lost(now, SPLAY).is_some());
}

/// A request still waiting is asked again every RESEND (a node may have dropped it).
#[test]
fn a_waiting_request_is_asked_again_periodically() {
    let now = Instant::now();
    let mut g = gate(Some(policy(false)));
    assert_eq!(g.resend_at(), None);
    assert_eq!(g.check(Some(at(2)), yes, now, SPLAY), Check::Ask(at(2)));
    assert_eq!(g.resend_at(), Some(now + RESEND));
    let later = now + RESEND;
    assert_eq!(g.resent(later), Some(at(2)));
    assert_eq!(g.resend_at(), Some(later + RESEND));
    assert_eq!(g.check(Some(at(3)), yes, later, SPLAY), Check::Ask(at(3)));
    assert_eq!(g.resent(later + RESEND), Some(at(3)), "the newest position");
    assert!(g.granted(later));
    assert_eq!(g.resend_at(), None, "not while holding");
    assert_eq!(g.resent(later), None);
}
