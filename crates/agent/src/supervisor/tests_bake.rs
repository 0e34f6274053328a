//! What a bake reads from the supervisor, on a paused clock: the child's own exits (not
//! those the supervisor caused) and the spawn generation.

use tokio::time::sleep_until;

use super::testchild::{Behaviour, TestSpawner};
use super::tests::{finished, opts, respawned, secs, start};
use super::*;

/// A termination's exit is not the child's own: a bake never sees it as a failure.
#[tokio::test(start_paused = true)]
async fn an_exit_caused_by_a_termination_is_not_counted() {
    let spawner = TestSpawner::new(Behaviour::runs());
    let (sup, done) = start(&spawner, opts(RestartPolicy::Never));
    let exits = sup.exits();
    sup.hold(true);
    sleep_until(spawner.at(secs(1))).await;
    sup.send(Control::Terminate(Signal::TERM));
    assert_eq!(finished(done).await, Exit::Signaled(15));
    assert_eq!(*exits.borrow(), ChildExits::default());
}

/// The generation moves only once the new child runs (after the old one stopped).
#[tokio::test(start_paused = true)]
async fn the_spawn_generation_moves_when_the_new_child_starts() {
    let spawner = TestSpawner::new(Behaviour::runs().dies_after(secs(3)));
    let (sup, _done) = start(&spawner, opts(RestartPolicy::Never));
    let spawns = sup.spawns();
    assert_eq!(spawns.borrow().generation, 0);
    sleep_until(spawner.at(secs(1))).await;
    sup.send(Control::Restart(EnvVars::new()));
    sleep_until(spawner.at(secs(3))).await;
    assert_eq!(
        spawns.borrow().generation,
        0,
        "the old child is still stopping"
    );
    respawned(&spawner, 1).await;
    assert_eq!(
        *spawns.borrow(),
        Spawns {
            generation: 1,
            exits_before: 0
        }
    );
    assert_eq!(
        sup.exits().borrow().count,
        0,
        "a restart's stop is not counted"
    );
}
