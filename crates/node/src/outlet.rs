//! One agent connection's delivery state, shared by the connection's task and the node's
//! fan-out threads. The fan-out offers every change set of an environment the connection
//! follows; under the outlet's lock it decides, per the protocol's rule, to send it (the
//! next version), drop it (already sent) or ask the task to catch up from the store (a
//! gap, a new epoch). On a plain socket the frame goes straight into the kernel from the
//! fan-out thread, so a change reaches ten thousand agents without waking ten thousand
//! tasks; otherwise (TLS, tests) the frame is queued and the task is woken to send it.
//! While the task catches up, offers wait in order and are judged when it is done.
//! Frames queued for the task are capped in bytes: past the cap they are dropped and the
//! task catches every environment up from the store, so a slow TLS agent costs a catch-up,
//! not memory without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::ws::Utf8Bytes;
use smallvec::SmallVec;
use tokio::sync::Notify;

use super::hub::Published;
use super::plain::{Overflow, PlainSocket};
use tether_core::protocol::{Position, Verdict, judge_change};

pub struct Outlet {
    pub id: u64,
    secrets: bool,
    plain: Option<Arc<PlainSocket>>,
    /// Offers kept while the task catches up; past this, it catches up again instead.
    deferred_cap: usize,
    /// Bytes of frames kept for the task to send; past this, it catches up instead.
    frames_cap: usize,
    state: Mutex<Delivery>,
    wake: Notify,
}

struct Delivery {
    /// Each followed environment; the fan-out names one by its index here (the hub keeps
    /// it), the task by its name (through `find`). The first is kept in place: most
    /// connections follow one, and a fan-out then has one allocation less to bring in.
    sent: SmallVec<[Followed; 1]>,
    /// Where each environment is in `sent`, when there are more than [`LINEAR_MAX`]: an
    /// agent may follow tens of thousands, and a hello or a catch-up looks each of them up.
    /// Most follow one or two, and a map would cost each connection a few hundred bytes.
    index: Option<HashMap<String, usize>>,
    /// The task is catching up from the store: offers wait in `deferred`, with the index
    /// of their environment.
    paused: bool,
    deferred: Vec<(Arc<Published>, usize)>,
    lagged: bool,
    /// Environments (indices into `sent`) the task must catch up from the store, each
    /// once, in the order asked ([`Followed::asked`] marks those in the list).
    resync: Vec<usize>,
    /// Frames for the task to send (connections without a plain socket).
    frames: VecDeque<Queued>,
    /// Bytes in `frames`.
    queued: usize,
    /// The agent stopped reading: its backlog overflowed.
    overflow: bool,
    closed: bool,
    /// The token table was reloaded: the task checks its token against the new one.
    recheck: bool,
}

/// A frame waiting for the task, with the position its environment had before it: where
/// the environment goes back to if the frame is dropped unsent.
struct Queued {
    frame: Utf8Bytes,
    index: usize,
    before: Option<Position>,
}

/// Up to this many environments are found by a linear search (here and in a hello's
/// de-duplication); past it, through a map or set.
pub const LINEAR_MAX: usize = 16;

struct Followed {
    env: String,
    /// Last position sent.
    pos: Option<Position>,
    /// In the resync list.
    asked: bool,
}

impl Delivery {
    fn find(&self, env: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(env).copied(),
            None => self.sent.iter().position(|f| f.env == env),
        }
    }

    fn slot(&mut self, env: &str) -> Option<&mut Option<Position>> {
        let i = self.find(env)?;
        Some(&mut self.sent[i].pos)
    }

    /// The frames queued for the task, which takes them.
    fn take_frames(&mut self) -> VecDeque<Utf8Bytes> {
        self.queued = 0;
        std::mem::take(&mut self.frames)
            .into_iter()
            .map(|q| q.frame)
            .collect()
    }

    fn ask_resync(&mut self, index: usize) {
        if !std::mem::replace(&mut self.sent[index].asked, true) {
            self.resync.push(index);
        }
    }
}

/// What the task has to do after a wake-up.
pub struct Work {
    pub frames: VecDeque<Utf8Bytes>,
    pub resync: Vec<String>,
    pub overflow: bool,
    /// The token table was reloaded since the last look: check the connection's token.
    pub recheck: bool,
}

impl Outlet {
    /// A new outlet starts paused: the task catches up first. `sent` names each
    /// environment once.
    pub fn new(
        id: u64,
        secrets: bool,
        plain: Option<Arc<PlainSocket>>,
        sent: Vec<(String, Option<Position>)>,
        deferred_cap: usize,
        frames_cap: usize,
    ) -> Outlet {
        let index = (sent.len() > LINEAR_MAX).then(|| {
            let mut index = HashMap::with_capacity(sent.len());
            for (i, (env, _)) in sent.iter().enumerate() {
                index.entry(env.clone()).or_insert(i);
            }
            index
        });
        let sent = sent
            .into_iter()
            .map(|(env, pos)| Followed {
                env,
                pos,
                asked: false,
            })
            .collect();
        Outlet {
            id,
            secrets,
            plain,
            deferred_cap,
            frames_cap,
            state: Mutex::new(Delivery {
                sent,
                index,
                paused: true,
                deferred: Vec::new(),
                lagged: false,
                resync: Vec::new(),
                frames: VecDeque::new(),
                queued: 0,
                overflow: false,
                closed: false,
                recheck: false,
            }),
            wake: Notify::new(),
        }
    }

    /// Bring this outlet into the cache ahead of an [`Outlet::offer`].
    pub fn prefetch(&self) {
        super::prefetch_value(self);
    }

    /// Bring this outlet's socket into the cache ahead of an [`Outlet::offer`]; best after
    /// [`Outlet::prefetch`] had time to bring in the outlet itself.
    pub fn prefetch_socket(&self) {
        if let Some(plain) = &self.plain {
            plain.prefetch();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Delivery> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves when the fan-out left work for the task (see [`Outlet::take_work`]).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    pub fn envs(&self) -> Vec<String> {
        self.lock().sent.iter().map(|f| f.env.clone()).collect()
    }

    pub fn follows(&self, env: &str) -> bool {
        self.lock().find(env).is_some()
    }

    /// Last position sent for `env`.
    pub fn sent(&self, env: &str) -> Option<Position> {
        self.lock().slot(env).and_then(|p| *p)
    }

    pub fn set_sent(&self, env: &str, pos: Option<Position>) {
        if let Some(slot) = self.lock().slot(env) {
            *slot = pos;
        }
    }

    /// From the fan-out: a change set of the environment at `index` in this outlet's list
    /// (see [`Outlet::envs`]). Returns how many frames went into the socket; a frame queued
    /// for the task counts when the task sends it.
    pub fn offer(&self, p: &Arc<Published>, index: usize) -> u64 {
        let mut st = self.lock();
        // The index comes from the hub's map, which is keyed by environment: no names are
        // compared per connection.
        if st.closed || st.overflow || index >= st.sent.len() {
            return 0;
        }
        if st.paused {
            if st.deferred.len() < self.deferred_cap {
                st.deferred.push((p.clone(), index));
            } else {
                st.deferred.clear();
                st.lagged = true;
            }
            return 0;
        }
        self.judge(&mut st, p, index)
    }

    fn judge(&self, st: &mut Delivery, p: &Published, index: usize) -> u64 {
        let sent = st.sent[index].pos;
        if p.set.changes.is_empty() {
            // Moved beyond what change sets can bridge: catch up from the store.
            if sent != Some(p.set.position) {
                self.ask_resync(st, index);
            }
            return 0;
        }
        match judge_change(sent, p.set.position) {
            Verdict::Apply => {
                st.sent[index].pos = Some(p.set.position);
                match &self.plain {
                    Some(plain) => match plain.send(p.wire(self.secrets)) {
                        Ok(()) => 1,
                        Err(Overflow) => {
                            st.overflow = true;
                            self.wake.notify_one();
                            0
                        }
                    },
                    None => {
                        // Counted as sent when the task sends it.
                        self.queue(st, p.frame(self.secrets), index, sent);
                        0
                    }
                }
            }
            Verdict::Drop => 0,
            Verdict::Resync => {
                self.ask_resync(st, index);
                0
            }
        }
    }

    /// Queue a frame for the task (which may yet drop it, past the cap).
    fn queue(&self, st: &mut Delivery, frame: Utf8Bytes, index: usize, before: Option<Position>) {
        if st.frames.is_empty() || st.queued + frame.len() <= self.frames_cap {
            st.queued += frame.len();
            st.frames.push_back(Queued {
                frame,
                index,
                before,
            });
            self.wake.notify_one();
            return;
        }
        // The task sends slower than changes come. Drop what waits, put each environment
        // back to before its first dropped frame (newest first, so the oldest wins), and
        // catch every environment up from the store, as after too many deferred offers.
        tracing::warn!(
            agent = self.id,
            queued = st.queued,
            "agent reads slower than changes come; catching it up from the store"
        );
        st.sent[index].pos = before;
        for q in std::mem::take(&mut st.frames).into_iter().rev() {
            st.sent[q.index].pos = q.before;
        }
        st.queued = 0;
        for i in 0..st.sent.len() {
            st.ask_resync(i);
        }
        self.wake.notify_one();
    }

    fn ask_resync(&self, st: &mut Delivery, index: usize) {
        st.ask_resync(index);
        self.wake.notify_one();
    }

    /// For the task: what the fan-out left for it.
    pub fn take_work(&self) -> Work {
        let mut st = self.lock();
        Work {
            frames: st.take_frames(),
            resync: std::mem::take(&mut st.resync)
                .into_iter()
                .map(|i| {
                    st.sent[i].asked = false;
                    st.sent[i].env.clone()
                })
                .collect(),
            overflow: st.overflow,
            recheck: std::mem::take(&mut st.recheck),
        }
    }

    /// The token table was reloaded: wake the task to check its token against it.
    pub fn recheck(&self) {
        self.lock().recheck = true;
        self.wake.notify_one();
    }

    /// The task starts catching up: offers wait from now on. Returns frames queued before,
    /// which go out first.
    pub fn pause(&self) -> VecDeque<Utf8Bytes> {
        let mut st = self.lock();
        st.paused = true;
        st.take_frames()
    }

    /// The task caught up: judge what waited, in order, and go live; returns how many
    /// frames that wrote into the socket (as [`Outlet::offer`] counts them). None when too
    /// much waited: the task must catch up every environment again (still paused).
    pub fn resume(&self) -> Option<u64> {
        let mut st = self.lock();
        if std::mem::take(&mut st.lagged) {
            return None;
        }
        st.paused = false;
        let mut sent = 0;
        for (p, i) in std::mem::take(&mut st.deferred) {
            sent += self.judge(&mut st, &p, i);
        }
        Some(sent)
    }

    /// The connection is ending: nothing more is written to it.
    pub fn close(&self) {
        self.lock().closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, change_frame};
    use crate::store::ChangeSet;
    use futures_util::FutureExt;
    use tether_core::protocol::{Epoch, WireChange};

    fn pos(epoch: u64, version: u64) -> Position {
        Position {
            epoch: Epoch(epoch),
            version,
        }
    }

    fn published(env: &str, p: Position) -> Arc<Published> {
        let set = ChangeSet {
            env: env.into(),
            position: p,
            changes: vec![WireChange {
                name: "A".into(),
                value: Some(tether_core::secret::Value::from(p.version.to_string())),
                secret: false,
                delete: false,
            }],
        };
        let (full, redacted) = (change_frame(&set, true), change_frame(&set, false));
        Arc::new(Published::new(set, full, redacted))
    }

    fn outlet(at: Option<Position>, cap: usize) -> Outlet {
        Outlet::new(1, true, None, vec![("prod".into(), at)], cap, 1 << 20)
    }

    fn versions(o: &Outlet) -> Vec<u64> {
        o.take_work()
            .frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
                v["position"]["version"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn a_recheck_wakes_the_task_once() {
        let o = outlet(Some(pos(1, 1)), 16);
        o.recheck();
        o.recheck();
        assert!(o.notified().now_or_never().is_some(), "woken");
        assert!(o.take_work().recheck);
        assert!(!o.take_work().recheck, "taken once");
    }

    #[test]
    fn offers_wait_while_catching_up_then_are_judged_in_order() {
        let o = outlet(Some(pos(1, 1)), 16);
        for v in [2, 3, 2, 5] {
            assert_eq!(o.offer(&published("prod", pos(1, v)), 0), 0, "paused");
        }
        assert!(versions(&o).is_empty());
        // The catch-up brought it to 2: 2 is a duplicate, 3 applies, 5 is a gap.
        o.set_sent("prod", Some(pos(1, 2)));
        assert_eq!(o.resume(), Some(0), "queued for the task, not sent");
        let work = o.take_work();
        assert_eq!(work.frames.len(), 1);
        assert_eq!(work.resync, vec!["prod".to_string()]);
        assert_eq!(o.sent("prod"), Some(pos(1, 3)));
    }

    #[test]
    fn live_offers_apply_next_drop_old_and_ask_a_resync_on_gaps_and_epochs() {
        let o = outlet(Some(pos(1, 1)), 16);
        assert_eq!(o.resume(), Some(0));
        assert_eq!(o.offer(&published("prod", pos(1, 2)), 0), 0, "queued");
        assert_eq!(o.offer(&published("prod", pos(1, 2)), 0), 0);
        assert_eq!(o.offer(&published("prod", pos(1, 1)), 0), 0);
        assert_eq!(versions(&o), vec![2]);
        assert_eq!(o.offer(&published("prod", pos(1, 4)), 0), 0);
        assert_eq!(o.take_work().resync, vec!["prod".to_string()]);
        assert_eq!(o.offer(&published("prod", pos(2, 1)), 0), 0);
        assert_eq!(o.take_work().resync, vec!["prod".to_string()]);
        assert_eq!(o.sent("prod"), Some(pos(1, 2)), "never moved by a gap");
    }

    #[test]
    fn too_many_offers_while_paused_mean_catching_up_again() {
        let o = outlet(Some(pos(1, 1)), 3);
        for v in 2..=6 {
            o.offer(&published("prod", pos(1, v)), 0);
        }
        assert_eq!(o.resume(), None, "lagged: catch up again, still paused");
        o.offer(&published("prod", pos(1, 7)), 0);
        o.set_sent("prod", Some(pos(1, 6)));
        assert_eq!(o.resume(), Some(0));
        assert_eq!(versions(&o), vec![7]);
    }

    #[test]
    fn a_move_without_changes_asks_a_resync_unless_already_there() {
        let o = outlet(Some(pos(1, 3)), 16);
        o.resume();
        let moved = |p: Position| {
            let set = ChangeSet {
                env: "prod".into(),
                position: p,
                changes: Vec::new(),
            };
            let empty = Utf8Bytes::from_static("");
            Arc::new(Published::new(set, empty.clone(), empty))
        };
        o.offer(&moved(pos(1, 3)), 0);
        assert!(o.take_work().resync.is_empty());
        o.offer(&moved(pos(2, 7)), 0);
        assert_eq!(o.take_work().resync, vec!["prod".to_string()]);
    }

    #[test]
    fn a_closed_outlet_takes_nothing() {
        let o = outlet(Some(pos(1, 1)), 16);
        o.resume();
        o.close();
        assert_eq!(o.offer(&published("prod", pos(1, 2)), 0), 0);
        assert!(versions(&o).is_empty());
    }

    /// Without a plain socket, frames wait for the task. When more bytes wait than the cap
    /// (a TLS agent reading slower than changes come), they are dropped, every environment
    /// goes back to what the task really took and is caught up from the store; meanwhile
    /// nothing more piles up.
    #[test]
    fn frames_past_the_cap_are_dropped_and_every_environment_catches_up() {
        let len = published("prod", pos(1, 2)).full.len();
        let envs = vec![
            ("prod".into(), Some(pos(1, 1))),
            ("dev".into(), Some(pos(1, 1))),
        ];
        let o = Outlet::new(1, true, None, envs, 16, 3 * len + 2);
        o.resume();
        o.offer(&published("prod", pos(1, 2)), 0);
        o.offer(&published("prod", pos(1, 3)), 0);
        assert_eq!(versions(&o), vec![2, 3], "taken by the task");
        o.offer(&published("prod", pos(1, 4)), 0);
        o.offer(&published("dev", pos(1, 2)), 1);
        o.offer(&published("prod", pos(1, 5)), 0);
        assert_eq!(o.offer(&published("dev", pos(1, 3)), 1), 0, "past the cap");
        for v in 6..100 {
            o.offer(&published("prod", pos(1, v)), 0);
        }
        let work = o.take_work();
        assert!(work.frames.is_empty(), "{} frames kept", work.frames.len());
        let mut resync = work.resync.clone();
        resync.sort();
        assert_eq!(resync, vec!["dev".to_string(), "prod".to_string()]);
        assert_eq!(
            o.sent("prod"),
            Some(pos(1, 3)),
            "back to what the task took"
        );
        assert_eq!(o.sent("dev"), Some(pos(1, 1)));
        // Caught up from the store, it goes live again.
        o.pause();
        o.set_sent("prod", Some(pos(1, 99)));
        o.set_sent("dev", Some(pos(1, 3)));
        assert_eq!(o.resume(), Some(0));
        o.offer(&published("prod", pos(1, 100)), 0);
        assert_eq!(versions(&o), vec![100]);
    }

    /// Lookups by name and resync requests with many environments: each environment is
    /// found where it is, and asked to catch up once however often its gaps are seen.
    #[test]
    fn many_environments_are_found_by_name_and_resynced_once_each() {
        // Either side of the switch from a linear search to a map, and far past it.
        for n in [3, LINEAR_MAX as u64, LINEAR_MAX as u64 + 1, 50_000] {
            found_by_name_and_resynced_once(n);
        }
    }

    fn found_by_name_and_resynced_once(n: u64) {
        let envs = (0..n).map(|i| (format!("env{i}"), None)).collect();
        let o = Outlet::new(1, true, None, envs, 16, 1 << 20);
        for i in 0..n {
            o.set_sent(&format!("env{i}"), Some(pos(1, i + 1)));
        }
        for i in 0..n {
            let env = format!("env{i}");
            assert!(o.follows(&env));
            assert_eq!(o.sent(&env), Some(pos(1, i + 1)), "{env}");
        }
        let past = format!("env{n}");
        assert!(!o.follows(&past) && o.sent(&past).is_none());
        o.set_sent(&past, Some(pos(1, 1)));
        assert!(
            !o.follows(&past),
            "an environment not followed is not added"
        );
        assert_eq!(o.envs().len(), n as usize);
        o.resume();
        // Gaps in two environments, each seen twice, and one change that applies.
        let last = n - 1;
        for _ in 0..2 {
            for i in [last, 0] {
                o.offer(&published(&format!("env{i}"), pos(1, i + 5)), i as usize);
            }
        }
        o.offer(&published("env1", pos(1, 3)), 1);
        let work = o.take_work();
        assert_eq!(work.resync, vec![format!("env{last}"), "env0".to_string()]);
        assert_eq!(work.frames.len(), 1);
        // Asked again after the task took them: asked again.
        o.offer(&published("env0", pos(1, 6)), 0);
        assert_eq!(o.take_work().resync, vec!["env0"]);
    }

    /// Through the hub's fan-out threads: only outlets of the environment get it, and an
    /// outlet detached gets nothing more. Ids 12 and 24 share a fan-out thread for any
    /// count up to four, so one frame to `dev` shows the thread is past what `prod` got.
    #[tokio::test]
    async fn the_hub_offers_an_environment_to_its_outlets_only() {
        let hub = Hub::new(16);
        let follow = |id, env: &str| {
            Arc::new(Outlet::new(
                id,
                true,
                None,
                vec![(env.into(), Some(pos(1, 1)))],
                16,
                1 << 20,
            ))
        };
        let (prod, dev) = (follow(12, "prod"), follow(24, "dev"));
        for o in [&prod, &dev] {
            hub.attach(o);
            o.resume();
        }
        let wait = |o: Arc<Outlet>| async move {
            tokio::time::timeout(std::time::Duration::from_secs(10), o.notified())
                .await
                .expect("woken within the deadline");
            versions(&o)
        };
        hub.publish(published("prod", pos(1, 2)).set.clone(), None);
        assert_eq!(wait(prod.clone()).await, vec![2]);
        hub.publish(published("dev", pos(1, 2)).set.clone(), None);
        assert_eq!(wait(dev.clone()).await, vec![2]);
        assert!(versions(&prod).is_empty());
        hub.detach(&prod);
        hub.publish(published("prod", pos(1, 3)).set.clone(), None);
        hub.publish(published("dev", pos(1, 3)).set.clone(), None);
        assert_eq!(wait(dev.clone()).await, vec![3]);
        assert!(versions(&prod).is_empty(), "detached");
    }
}
