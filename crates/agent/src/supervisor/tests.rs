//! The supervisor's time rules (stop timeout, restart backoff, reload grace), run against a
//! scripted child with time paused: every assertion is on the virtual clock.

use std::time::Duration;

use tokio::time::sleep_until;

use super::testchild::{Behaviour, Event, TestSpawner, What};
use super::*;

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) fn opts(restart_on_exit: RestartPolicy) -> Options {
    Options {
        stop_signal: Signal::TERM,
        stop_timeout: secs(5),
        restart_on_exit,
        reload_grace: Duration::ZERO,
    }
}

pub(super) fn start(spawner: &TestSpawner, opts: Options) -> (Supervisor, oneshot::Receiver<Exit>) {
    Supervisor::start_with(spawner.clone(), EnvVars::new(), opts, &Tasks::new())
        .expect("scripted spawn")
}

fn ev(at: Duration, pid: i32, what: What) -> Event {
    Event { at, pid, what }
}

pub(super) fn spawns(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| e.what == What::Spawned).collect()
}

/// Wait (on the paused clock) until `times` children were spawned after the first.
pub(super) async fn respawned(spawner: &TestSpawner, times: usize) {
    let what = format!("respawned {times} time(s)");
    spawner
        .wait_until(&what, |e| spawns(e).len() == times + 1)
        .await;
}

/// `done` with a deadline on the paused clock.
pub(super) async fn finished(done: oneshot::Receiver<Exit>) -> Exit {
    timeout(secs(24 * 3600), done)
        .await
        .expect("the supervisor never finished")
        .expect("the supervisor's task ended without an exit")
}

#[test]
fn backoff_doubles_caps_and_resets() {
    let mut b = Backoff::default();
    let short = Duration::from_millis(10);
    assert_eq!(b.next(short), Duration::from_millis(100));
    assert_eq!(b.next(short), Duration::from_millis(200));
    assert_eq!(b.next(short), Duration::from_millis(400));
    for _ in 0..20 {
        b.next(short);
    }
    assert_eq!(b.next(short), Duration::from_secs(30));
    assert_eq!(b.next(Duration::from_secs(11)), Duration::from_millis(100));
}

// ---- stop: stop signal, stop timeout, SIGKILL ----

#[tokio::test(start_paused = true)]
async fn restart_kills_a_child_ignoring_the_stop_signal_at_exactly_the_stop_timeout() {
    let spawner = TestSpawner::new(Behaviour::runs().survives(Signal::TERM));
    let (sup, _done) = start(&spawner, opts(RestartPolicy::Never));
    sleep_until(spawner.at(secs(1))).await;
    sup.send(Control::Restart(EnvVars::new()));
    respawned(&spawner, 1).await;
    assert_eq!(
        spawner.events(),
        [
            ev(ms(0), 1000, What::Spawned),
            ev(secs(1), 1000, What::Signal(Signal::TERM)),
            ev(secs(6), 1000, What::Signal(Signal::KILL)),
            ev(secs(6), 1000, What::Exited(Exit::Signaled(9))),
            ev(secs(6), 1000, What::GroupGone),
            ev(secs(6), 1001, What::Spawned),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn restart_waits_for_a_child_that_stops_within_the_timeout_and_never_kills_it() {
    let spawner = TestSpawner::new(Behaviour::runs().dies_after(ms(300)));
    let (sup, _done) = start(&spawner, opts(RestartPolicy::Never));
    sleep_until(spawner.at(secs(1))).await;
    sup.send(Control::Restart(EnvVars::new()));
    respawned(&spawner, 1).await;
    assert_eq!(
        spawner.events(),
        [
            ev(ms(0), 1000, What::Spawned),
            ev(secs(1), 1000, What::Signal(Signal::TERM)),
            ev(ms(1300), 1000, What::Exited(Exit::Signaled(15))),
            ev(ms(1300), 1000, What::GroupGone),
            ev(ms(1300), 1001, What::Spawned),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn terminate_kills_at_the_stop_timeout_from_the_first_signal_and_never_respawns() {
    let spawner = TestSpawner::new(Behaviour::runs().survives(Signal::TERM));
    let (sup, done) = start(&spawner, opts(RestartPolicy::Always));
    sleep_until(spawner.at(secs(1))).await;
    sup.send(Control::Terminate(Signal::TERM));
    // A second signal (the user pressing Ctrl-C again) does not push the kill back.
    sleep_until(spawner.at(secs(3))).await;
    sup.send(Control::Terminate(Signal::TERM));
    assert_eq!(finished(done).await, Exit::Signaled(9));
    assert_eq!(
        spawner.events(),
        [
            ev(ms(0), 1000, What::Spawned),
            ev(secs(1), 1000, What::Signal(Signal::TERM)),
            ev(secs(3), 1000, What::Signal(Signal::TERM)),
            ev(secs(6), 1000, What::Signal(Signal::KILL)),
            ev(secs(6), 1000, What::Exited(Exit::Signaled(9))),
            ev(secs(6), 1000, What::GroupGone),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_child_with_the_stop_timeout() {
    let spawner = TestSpawner::new(Behaviour::runs().survives(Signal::TERM));
    let (sup, done) = start(&spawner, opts(RestartPolicy::Always));
    sleep_until(spawner.at(secs(2))).await;
    drop(sup);
    assert_eq!(finished(done).await, Exit::Signaled(9));
    let kill = ev(secs(7), 1000, What::Signal(Signal::KILL));
    assert!(spawner.events().contains(&kill), "{:#?}", spawner.events());
}

#[tokio::test(start_paused = true)]
async fn what_is_left_of_the_group_is_killed_before_the_respawn() {
    let child = Behaviour::runs()
        .exits_after(secs(1), Exit::Code(1))
        .leaves_stragglers();
    let spawner = TestSpawner::scripted([child], Behaviour::runs());
    let (_sup, _done) = start(&spawner, opts(RestartPolicy::OnFailure));
    respawned(&spawner, 1).await;
    assert_eq!(
        spawner.events(),
        [
            ev(ms(0), 1000, What::Spawned),
            ev(secs(1), 1000, What::Exited(Exit::Code(1))),
            ev(secs(1), 1000, What::Signal(Signal::KILL)),
            ev(secs(1), 1000, What::GroupGone),
            ev(ms(1100), 1001, What::Spawned),
        ]
    );
}

// ---- restart_on_exit and its backoff ----

/// For each respawn: the time from the previous child's exit to the new child's start.
fn respawn_delays(events: &[Event]) -> Vec<Duration> {
    let mut exited = None;
    let mut delays = Vec::new();
    for e in events {
        match e.what {
            What::Exited(_) => exited = Some(e.at),
            What::Spawned => {
                if let Some(at) = exited.take() {
                    delays.push(e.at - at);
                }
            }
            _ => {}
        }
    }
    delays
}

#[tokio::test(start_paused = true)]
async fn respawns_back_off_from_100ms_doubling_up_to_30s() {
    let spawner = TestSpawner::new(Behaviour::runs().exits_after(ms(10), Exit::Code(1)));
    let (_sup, _done) = start(&spawner, opts(RestartPolicy::Always));
    respawned(&spawner, 12).await;
    let expected: Vec<Duration> = [
        100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000,
    ]
    .into_iter()
    .map(ms)
    .collect();
    assert_eq!(respawn_delays(&spawner.events()), expected);
}

#[tokio::test(start_paused = true)]
async fn backoff_starts_over_after_a_child_ran_for_10s_and_not_before() {
    let short = Behaviour::runs().exits_after(ms(10), Exit::Code(1));
    let script = [
        short.clone(),
        short.clone(),
        Behaviour::runs().exits_after(ms(9_999), Exit::Code(1)),
        Behaviour::runs().exits_after(secs(10), Exit::Code(1)),
    ];
    let spawner = TestSpawner::scripted(script, short);
    let (_sup, _done) = start(&spawner, opts(RestartPolicy::Always));
    respawned(&spawner, 5).await;
    let expected: Vec<Duration> = [100, 200, 400, 100, 200].into_iter().map(ms).collect();
    assert_eq!(respawn_delays(&spawner.events()), expected);
}

#[tokio::test(start_paused = true)]
async fn a_failed_respawn_is_retried_with_a_doubled_delay() {
    let spawner = TestSpawner::new(Behaviour::runs().exits_after(ms(10), Exit::Code(1)));
    let (_sup, _done) = start(&spawner, opts(RestartPolicy::Always));
    spawner.fail_next_spawns(2);
    respawned(&spawner, 1).await;
    let events = spawner.events();
    let tries: Vec<(Duration, What)> = events
        .iter()
        .filter(|e| matches!(e.what, What::Spawned | What::SpawnFailed))
        .map(|e| (e.at, e.what))
        .collect();
    assert_eq!(
        tries,
        [
            (ms(0), What::Spawned),
            (ms(110), What::SpawnFailed),
            (ms(310), What::SpawnFailed),
            (ms(710), What::Spawned),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn terminate_during_the_backoff_ends_with_the_last_exit_and_no_respawn() {
    let spawner = TestSpawner::new(Behaviour::runs().exits_after(ms(10), Exit::Code(3)));
    let (sup, done) = start(&spawner, opts(RestartPolicy::Always));
    sleep_until(spawner.at(ms(50))).await;
    sup.send(Control::Terminate(Signal::TERM));
    assert_eq!(finished(done).await, Exit::Code(3));
    sleep_until(spawner.at(secs(60))).await;
    assert_eq!(spawns(&spawner.events()).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn on_failure_respawns_after_a_failure_and_ends_with_a_success() {
    let script = [Behaviour::runs().exits_after(secs(1), Exit::Code(1))];
    let spawner = TestSpawner::scripted(
        script,
        Behaviour::runs().exits_after(secs(1), Exit::Code(0)),
    );
    let (_sup, done) = start(&spawner, opts(RestartPolicy::OnFailure));
    assert_eq!(finished(done).await, Exit::Code(0));
    let starts: Vec<Duration> = spawns(&spawner.events()).iter().map(|e| e.at).collect();
    assert_eq!(starts, [ms(0), ms(1100)]);
}

#[tokio::test(start_paused = true)]
async fn never_passes_the_first_exit_through() {
    let spawner = TestSpawner::new(Behaviour::runs().exits_after(secs(1), Exit::Code(4)));
    let (_sup, done) = start(&spawner, opts(RestartPolicy::Never));
    assert_eq!(finished(done).await, Exit::Code(4));
    assert_eq!(spawns(&spawner.events()).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_child_ended_by_ctrl_c_at_its_terminal_is_not_respawned() {
    let by_ctrl_c = Behaviour::runs().exits_after(secs(1), Exit::Signaled(Signal::INT.number()));
    let spawner = TestSpawner::new(by_ctrl_c.clone());
    spawner.set_holds_terminal(true);
    let (_sup, done) = start(&spawner, opts(RestartPolicy::Always));
    assert_eq!(finished(done).await, Exit::Signaled(2));
    assert_eq!(spawns(&spawner.events()).len(), 1);

    // Without the terminal, the same death is a crash like any other.
    let spawner = TestSpawner::new(by_ctrl_c);
    let (_sup, _done) = start(&spawner, opts(RestartPolicy::Always));
    respawned(&spawner, 1).await;
}

// ---- reload grace ----

fn reloads() -> Behaviour {
    Behaviour::runs()
        .survives(Signal::HUP)
        .survives(Signal(nix::sys::signal::Signal::SIGUSR1))
}

fn with_grace(grace: Duration) -> Options {
    Options {
        reload_grace: grace,
        ..opts(RestartPolicy::Never)
    }
}

fn signals(events: &[Event]) -> Vec<(Duration, i32, Signal)> {
    events
        .iter()
        .filter_map(|e| match e.what {
            What::Signal(s) => Some((e.at, e.pid, s)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_reload_in_the_grace_period_is_held_until_then_merged_not_lost() {
    let usr1 = Signal(nix::sys::signal::Signal::SIGUSR1);
    let spawner = TestSpawner::new(reloads());
    let (sup, _done) = start(&spawner, with_grace(secs(1)));
    for (at, sig) in [(200, Signal::HUP), (300, Signal::HUP), (400, usr1)] {
        sleep_until(spawner.at(ms(at))).await;
        sup.send(Control::Reload(sig));
    }
    spawner
        .wait_until("held signals delivered", |e| signals(e).len() == 2)
        .await;
    // Past the grace period, a reload goes out at once.
    sleep_until(spawner.at(ms(1500))).await;
    sup.send(Control::Reload(Signal::HUP));
    spawner
        .wait_until("late reload delivered", |e| signals(e).len() == 3)
        .await;
    assert_eq!(
        signals(&spawner.events()),
        [
            (secs(1), 1000, Signal::HUP),
            (secs(1), 1000, usr1),
            (ms(1500), 1000, Signal::HUP),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_forwarded_signal_is_never_held() {
    let spawner = TestSpawner::new(reloads());
    let (sup, _done) = start(&spawner, with_grace(secs(1)));
    sleep_until(spawner.at(ms(200))).await;
    sup.send(Control::Signal(Signal::HUP));
    spawner
        .wait_until("signal delivered", |e| signals(e).len() == 1)
        .await;
    assert_eq!(signals(&spawner.events()), [(ms(200), 1000, Signal::HUP)]);
}

#[tokio::test(start_paused = true)]
async fn the_grace_period_starts_again_with_each_new_child() {
    let spawner = TestSpawner::new(reloads());
    let (sup, _done) = start(&spawner, with_grace(secs(1)));
    sleep_until(spawner.at(secs(2))).await;
    sup.send(Control::Restart(EnvVars::new()));
    sleep_until(spawner.at(ms(2100))).await;
    sup.send(Control::Reload(Signal::HUP));
    spawner
        .wait_until("reload delivered", |e| signals(e).len() == 2)
        .await;
    assert_eq!(
        signals(&spawner.events()),
        [(secs(2), 1000, Signal::TERM), (secs(3), 1001, Signal::HUP)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_held_for_a_child_that_is_replaced_is_dropped() {
    let spawner = TestSpawner::new(reloads());
    let (sup, _done) = start(&spawner, with_grace(secs(1)));
    sleep_until(spawner.at(ms(200))).await;
    sup.send(Control::Reload(Signal::HUP));
    sleep_until(spawner.at(ms(500))).await;
    // The new child reads the new configuration as it starts: no reload is owed to it.
    sup.send(Control::Restart(EnvVars::new()));
    sleep_until(spawner.at(secs(5))).await;
    assert_eq!(signals(&spawner.events()), [(ms(500), 1000, Signal::TERM)]);
}

// ---- new options (tether's configuration reloaded) ----

/// New options reach the running child's owner without touching the child: the next stop
/// uses the new stop signal and timeout.
#[tokio::test(start_paused = true)]
async fn new_options_apply_to_the_next_stop_and_leave_the_child_running() {
    let usr2 = Signal(nix::sys::signal::Signal::SIGUSR2);
    let spawner = TestSpawner::new(Behaviour::runs().survives(Signal::TERM).survives(usr2));
    let (sup, _done) = start(&spawner, opts(RestartPolicy::Never));
    sleep_until(spawner.at(secs(1))).await;
    sup.send(Control::Configure(Options {
        stop_signal: usr2,
        stop_timeout: secs(2),
        ..opts(RestartPolicy::Never)
    }));
    sleep_until(spawner.at(secs(3))).await;
    assert_eq!(spawner.events(), [ev(ms(0), 1000, What::Spawned)]);
    sup.send(Control::Restart(EnvVars::new()));
    respawned(&spawner, 1).await;
    assert_eq!(
        spawner.events(),
        [
            ev(ms(0), 1000, What::Spawned),
            ev(secs(3), 1000, What::Signal(usr2)),
            ev(secs(5), 1000, What::Signal(Signal::KILL)),
            ev(secs(5), 1000, What::Exited(Exit::Signaled(9))),
            ev(secs(5), 1000, What::GroupGone),
            ev(secs(5), 1001, What::Spawned),
        ]
    );
}

// ---- hold: a bake keeps the supervisor for a rollback ----

/// While a change bakes, a child that exits under `never` is counted on `exits` and waits
/// for the agent: a restart (its rollback) starts it again; once the hold ends, the next
/// exit ends the supervisor as before.
#[tokio::test(start_paused = true)]
async fn a_held_exit_waits_for_the_rollback_then_ends_as_before_once_released() {
    let script = [Behaviour::runs().exits_after(secs(1), Exit::Code(3))];
    let spawner = TestSpawner::scripted(
        script,
        Behaviour::runs().exits_after(secs(5), Exit::Code(4)),
    );
    let (sup, mut done) = start(&spawner, opts(RestartPolicy::Never));
    let mut exits = sup.exits();
    sup.hold(true);
    timeout(secs(60), exits.changed())
        .await
        .expect("exit seen")
        .unwrap();
    assert_eq!(
        *exits.borrow_and_update(),
        ChildExits {
            count: 1,
            last: Some(Exit::Code(3))
        }
    );
    // Held: not finished, however long the agent takes.
    sleep_until(spawner.at(secs(30))).await;
    assert!(
        done.try_recv().is_err(),
        "a held exit does not end the supervisor"
    );
    sup.send(Control::Restart(EnvVars::new()));
    respawned(&spawner, 1).await;
    sup.hold(false);
    assert_eq!(finished(done).await, Exit::Code(4));
    assert_eq!(exits.borrow().count, 2);
}

/// A held exit ends the supervisor with the child's status once the hold is let go.
#[tokio::test(start_paused = true)]
async fn a_held_exit_ends_with_the_childs_status_when_the_hold_is_let_go() {
    let spawner = TestSpawner::new(Behaviour::runs().exits_after(secs(1), Exit::Code(3)));
    let (sup, mut done) = start(&spawner, opts(RestartPolicy::Never));
    let mut exits = sup.exits();
    sup.hold(true);
    timeout(secs(60), exits.changed())
        .await
        .expect("exit seen")
        .unwrap();
    sleep_until(spawner.at(secs(10))).await;
    assert!(done.try_recv().is_err());
    sup.hold(false);
    assert_eq!(finished(done).await, Exit::Code(3));
    assert_eq!(spawns(&spawner.events()).len(), 1, "never started again");
}
