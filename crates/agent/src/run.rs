//! The agent loop shared by `run` and `watch`: sources → state → debounce/splay → outputs →
//! actions. In `run` the actions go to the supervised child; in `watch` to other processes
//! found by pidfile or name, or to hooks.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::action::Actions;
use crate::config::{Action, Config, Mode, Sighup};
use crate::debounce::Debouncer;
use crate::output::{EnvVars, Output};
use crate::reload::ConfigWatch;
use crate::signals::Signals;
use crate::source::keyshade::{self, KeyshadeEvent, KeyshadeSource};
use crate::source::net::{FleetEvent, NetSource, NetUpdate};
use crate::source::{self, SourceError, watch::SourceWatcher};
use crate::state::{Entries, Layers, changed_keys};
use crate::supervisor::{self, ChildSpec, Control, Exit, Reaper, Supervisor};
use crate::target;
use crate::tasks::Tasks;
use tether_core::protocol::Position;
use tether_core::settings::LogControl;
use tether_core::signal::Signal;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Watch(#[from] source::watch::WatchError),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error(transparent)]
    Spawn(#[from] supervisor::SpawnError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("network source: {0}")]
    Net(String),
    #[error("keyshade source: {0}")]
    Keyshade(String),
    #[error(transparent)]
    Endpoints(#[from] crate::health::ListenError),
    #[error(transparent)]
    Once(#[from] crate::once::OnceError),
}

impl AgentError {
    /// The process exit code for this failure: a one-shot's are distinct (`crate::once`).
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Once(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// What the network source's channels bring.
enum NetEvent {
    Fleet(FleetEvent),
    Update(NetUpdate),
}

/// Where actions go.
pub(crate) enum Sink {
    Child(Supervisor),
    External,
}

/// An exec hook to run: its command, the names that changed, its timeout.
pub(crate) type Hook = (Vec<String>, Vec<String>, Duration);

/// The running agent. `reload` (tether's own configuration read again) changes its parts
/// in place, so its fields are the crate's.
pub(crate) struct Agent {
    pub(crate) cfg: Config,
    pub(crate) layers: Layers,
    pub(crate) outputs: Vec<Output>,
    pub(crate) applied: Entries,
    pub(crate) env: EnvVars,
    pub(crate) debouncer: Debouncer,
    pub(crate) reaper: Reaper,
    pub(crate) hooks: mpsc::UnboundedSender<Hook>,
    pub(crate) watcher: SourceWatcher,
    pub(crate) source_rx: mpsc::UnboundedReceiver<usize>,
    /// The network source (the last layer) and the position still to acknowledge.
    pub(crate) net: Option<NetSource>,
    pub(crate) net_pending: Option<Position>,
    /// The keyshade source (the layer after the network source's).
    pub(crate) keyshade: Option<KeyshadeSource>,
    /// An output failed to update: try again then (doubling up to a minute).
    pub(crate) retry: Option<(Instant, std::time::Duration)>,
    pub(crate) tasks: Tasks,
    pub(crate) signals: Signals,
    pub(crate) log: LogControl,
    pub(crate) config_watch: ConfigWatch,
    /// The outputs' template files.
    pub(crate) templates: crate::output::TemplateWatch,
    /// A reload changed an output or the environment's rules: the next apply renders
    /// everything even though no value changed.
    pub(crate) stale: bool,
    /// The version from the nodes being baked (`crate::bake`).
    pub(crate) baking: Option<crate::bake::Baking>,
    /// The layers of the last version that was healthy: what a rollback puts back.
    pub(crate) healthy: Option<Layers>,
    /// The last version that failed and was rolled back: not applied again.
    pub(crate) failed: Option<Position>,
    /// The network source's rollout slot: its policy, and a slot asked for or held.
    pub(crate) gate: crate::gate::Gate,
    /// The last restart asked of the supervisor: its spawn receiver and generation then
    /// (a bake of it waits for the new child, `crate::bake`).
    pub(crate) restarted: Option<(tokio::sync::watch::Receiver<supervisor::Spawns>, u64)>,
}

/// How long the agent waits for its tasks once it is done.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);
/// How long a stopping agent gives its follower to send its last reports (a health
/// report, a slot's release) when no node is connected.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// Run the agent until the child exits (run) or TERM/INT (watch). Returns the exit code.
/// Every task it started has stopped (or the deadline passed) when it returns. `log` changes
/// the log filter when a reload asks for another level.
pub async fn run(cfg: Config, log: LogControl) -> Result<i32, AgentError> {
    let tasks = Tasks::new();
    let result = match cfg.once.clone() {
        Some(once) => crate::once::run(cfg, once, &tasks).await,
        None => run_with(cfg, log, &tasks).await,
    };
    crate::health::stopping();
    tasks.shutdown(SHUTDOWN_DEADLINE).await;
    result
}

async fn run_with(cfg: Config, log: LogControl, tasks: &Tasks) -> Result<i32, AgentError> {
    // Handlers first: nothing sent to tether from here on is lost or fatal.
    let (signals, mut signal_rx) = Signals::install(&cfg, tasks).map_err(AgentError::Signals)?;
    crate::health::start(&cfg, tasks).await?;
    // Its own config file is watched from the start: an edit made while it waits for a
    // node is reloaded once it runs.
    let config_watch = ConfigWatch::new(cfg.origin.as_ref());
    let reaper = Reaper::start().map_err(AgentError::Signals)?;
    if cfg.mode == Mode::Run && std::process::id() != 1 {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a subreaper; orphans of the child go to init");
        }
    }

    // Watch before the first read so no change can fall between the two.
    let (source_tx, source_rx) = mpsc::unbounded_channel();
    let watcher = source::watch::watch(&cfg.sources, source_tx)?;
    let mut layers = Layers::new(keyshade::layer(&cfg) + usize::from(cfg.keyshade.is_some()));
    for (i, spec) in cfg.sources.iter().enumerate() {
        layers.set(i, source::load(spec)?);
    }
    // keyshade's layer is the last: it starts now and is waited for after the nodes.
    let mut ks = match &cfg.keyshade {
        Some(spec) => Some(keyshade::start_spec(spec, tasks).map_err(AgentError::Keyshade)?),
        None => None,
    };

    // The network source is the last layer; the first render waits for its first state.
    let mut net = match &cfg.net {
        Some(spec) => Some(source::net::start(spec.clone(), tasks).map_err(AgentError::Net)?),
        None => None,
    };
    let mut net_pending = None;
    let mut reload_asked = false;
    if let Some(n) = net.as_mut() {
        tracing::info!("waiting for the first state from a node");
        let mut pulse = crate::health::Pulse::start();
        let first = loop {
            tokio::select! {
                _ = pulse.tick() => {}
                u = n.updates.recv() => {
                    break u.ok_or_else(|| AgentError::Net("the network source stopped".into()))?;
                }
                Some(sig) = signal_rx.recv() => {
                    // No child yet: only TERM and INT mean anything, and a reload, which
                    // waits until the agent runs.
                    if sig == Signal::TERM || sig == Signal::INT {
                        tracing::info!(signal = %sig, "stopped before the first state arrived");
                        return Ok(128 + sig.number());
                    }
                    if sig == Signal::HUP && cfg.sighup == Sighup::Reload {
                        tracing::info!("reload asked before the first state arrived; it runs once the agent does");
                        reload_asked = true;
                    }
                }
            }
        };
        log_net_update(&first);
        net_pending = Some(first.position);
        layers.set(cfg.sources.len(), first.entries);
    }
    if let Some(k) = ks.as_mut() {
        let hup_reloads = cfg.sighup == Sighup::Reload;
        let first = keyshade::first_state(k, &mut signal_rx, hup_reloads, &mut reload_asked);
        match first.await.map_err(AgentError::Keyshade)? {
            Ok(entries) => layers.set(keyshade::layer(&cfg), entries),
            Err(code) => return Ok(code),
        };
    }

    let applied = layers.merged();
    let mut outputs: Vec<Output> = cfg.outputs.iter().cloned().map(Output::new).collect();
    for o in &mut outputs {
        if let Err(e) = crate::health::render(o, &applied).await {
            if let (Some(n), Some(p)) = (&net, net_pending) {
                n.ack(p, Err(e.to_string()));
            }
            return Err(e.into());
        }
    }
    let env = render_env(&cfg, &applied);
    tracing::info!(
        entries = applied.len(),
        outputs = outputs.len(),
        "first render complete"
    );

    let hooks = target::spawn_hook_runner(reaper.clone(), tasks);
    let templates = crate::output::TemplateWatch::new(&cfg.outputs);
    let mut agent = Agent {
        debouncer: Debouncer::new(cfg.debounce, cfg.max_wait, cfg.splay),
        cfg,
        layers,
        outputs,
        applied,
        env,
        reaper,
        hooks,
        watcher,
        source_rx,
        net,
        net_pending,
        keyshade: ks,
        retry: None,
        tasks: tasks.clone(),
        signals,
        log,
        config_watch,
        templates,
        stale: false,
        baking: None,
        healthy: None,
        failed: None,
        gate: crate::gate::Gate::default(),
        restarted: None,
    };
    // The first version: acknowledged now, baked once the child runs (`serve`).
    let first = agent.ack(Ok(()));
    let code = agent.serve(signal_rx, reload_asked, first).await;
    // Best effort: a slot asked for or held goes back, and every report made goes out,
    // before the follower stops (given a moment when no node is connected).
    agent.gate_reset();
    if let Some(net) = &agent.net {
        if !net.flush(FLUSH_DEADLINE).await {
            tracing::warn!("stopping before the last reports reached a node");
        }
    }
    if !agent.cfg.keep_outputs {
        for o in &agent.outputs {
            o.remove();
        }
    }
    code
}

/// The supervisor's part of the configuration.
pub(crate) fn supervisor_options(cfg: &Config) -> supervisor::Options {
    supervisor::Options {
        stop_signal: cfg.stop_signal,
        stop_timeout: cfg.stop_timeout,
        restart_on_exit: cfg.restart_on_exit,
        reload_grace: cfg.reload_grace,
    }
}

fn log_net_update(u: &NetUpdate) {
    if u.degraded {
        tracing::warn!(position = %u.position, entries = u.entries.len(), "DEGRADED: running on saved state");
    } else {
        tracing::debug!(position = %u.position, entries = u.entries.len(), "state from node");
    }
}

/// The child's injected variables (none when injection is off).
pub(crate) fn render_env(cfg: &Config, entries: &Entries) -> EnvVars {
    let Some(spec) = &cfg.env else {
        return EnvVars::new();
    };
    let (vars, skipped) = spec.render(entries);
    for s in skipped {
        tracing::error!(key = %tether_core::logname::name(&s.name), reason = s.reason, "entry not injected into the environment");
    }
    vars
}

impl Agent {
    async fn serve(
        &mut self,
        mut signals: mpsc::UnboundedReceiver<Signal>,
        reload_asked: bool,
        first: Option<Position>,
    ) -> Result<i32, AgentError> {
        let (sink, mut done) = match self.cfg.mode {
            Mode::Run => {
                let spec = ChildSpec::new(self.cfg.command.clone());
                // Held from its start when the first version will be baked.
                let hold = first.is_some() && self.cfg.health.needs_bake(Mode::Run, true);
                let (sup, done) = Supervisor::start(
                    spec,
                    self.env.clone(),
                    supervisor_options(&self.cfg),
                    self.reaper.clone(),
                    &self.tasks,
                    hold,
                )?;
                (Sink::Child(sup), Some(done))
            }
            Mode::Watch => (Sink::External, None),
        };
        crate::health::ready();
        // Starting the child (or the first render, in watch mode) acted on the first version.
        self.after_first(&sink, first);
        let mut pulse = crate::health::Pulse::start();
        if reload_asked {
            self.reload(&sink, "SIGHUP").await;
        }
        loop {
            let deadline = self.debouncer.deadline();
            tokio::select! {
                _ = pulse.tick() => {}
                Some(first) = self.source_rx.recv() => {
                    let mut dirty = BTreeSet::from([first]);
                    while let Ok(i) = self.source_rx.try_recv() {
                        dirty.insert(i);
                    }
                    if self.reload_sources(dirty) {
                        self.kick(&sink).await;
                    }
                }
                () = self.templates.changed() => {
                    tracing::info!("a template changed; rendering again");
                    self.stale = true;
                    self.kick(&sink).await;
                }
                () = self.config_watch.changed() => {
                    self.reload(&sink, "config file changed").await;
                }
                // One arm for both of the network source's channels (they borrow it alike);
                // what the node says of the rollout goes first, so a policy sent before a
                // change is known when the change is judged.
                Some(event) = async {
                    let net = self.net.as_mut().expect("guarded");
                    tokio::select! {
                        biased;
                        Some(e) = net.fleet.recv() => Some(NetEvent::Fleet(e)),
                        Some(u) = net.updates.recv() => Some(NetEvent::Update(u)),
                        else => None,
                    }
                }, if self.net.is_some() => match event {
                    NetEvent::Fleet(event) => self.on_fleet(event, &sink).await,
                    NetEvent::Update(update) => self.net_update(update, &sink).await,
                },
                _ = sleep_until(self.gate.alone_at().unwrap_or_else(Instant::now)), if self.gate.alone_at().is_some() => {
                    self.act_alone(&sink).await;
                }
                _ = sleep_until(self.gate.resend_at().unwrap_or_else(Instant::now)), if self.gate.resend_at().is_some() => {
                    self.resend_slot();
                }
                Some(event) = async { self.keyshade.as_mut().expect("guarded").updates.recv().await }, if self.keyshade.is_some() => {
                    match event {
                        KeyshadeEvent::State(entries) => {
                            if self.layers.set(keyshade::layer(&self.cfg), entries) && self.layers.merged() != self.applied {
                                self.kick(&sink).await;
                            }
                        }
                        KeyshadeEvent::Fatal(message) => {
                            // The child goes first: tether never leaves it running.
                            if let (Sink::Child(sup), Some(done)) = (&sink, done.as_mut()) {
                                tracing::info!("stopping the child");
                                sup.send(Control::Terminate(self.cfg.stop_signal));
                                let _ = done.await;
                            }
                            return Err(AgentError::Keyshade(message));
                        }
                    }
                }
                verdict = async { self.baking.as_mut().expect("guarded").verdict().await }, if self.baking.is_some() => {
                    self.bake_done(&sink, verdict).await;
                }
                // Not while a slot is waited for: the grant's apply writes them anyway.
                _ = sleep_until(self.retry.map_or_else(Instant::now, |r| r.0)), if self.retry.is_some() && !self.gate.waiting() => {
                    tracing::info!("retrying the outputs that failed");
                    self.apply(&sink).await;
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.debouncer.reset();
                    self.apply(&sink).await;
                }
                Some(sig) = signals.recv() => {
                    let terminating = sig == Signal::TERM || sig == Signal::INT;
                    if terminating {
                        crate::health::stopping();
                        // Stopping is not a failure of the version: its bake ends unreported.
                        if let Some(b) = self.baking.take() {
                            tracing::info!(position = %b.position, "stopping: this version's bake ends unreported");
                        }
                        if matches!(sink, Sink::Child(_)) {
                            // Given back while the child stops, so the follower can send it.
                            self.gate_reset();
                        }
                    }
                    match &sink {
                        _ if sig == Signal::HUP && self.cfg.sighup == Sighup::Reload => {
                            self.reload(&sink, "SIGHUP").await;
                        }
                        Sink::Child(sup) if terminating => {
                            let fwd = if self.cfg.forward_signals.contains(&sig) { sig } else { self.cfg.stop_signal };
                            tracing::info!(signal = %sig, "stopping: signal forwarded to the child");
                            sup.send(Control::Terminate(fwd));
                        }
                        Sink::Child(sup) if self.cfg.forward_signals.contains(&sig) || sig == Signal::CONT => {
                            tracing::debug!(signal = %sig, "forwarding signal");
                            sup.send(Control::Signal(sig));
                        }
                        Sink::External if terminating => {
                            tracing::info!(signal = %sig, "stopping");
                            return Ok(0);
                        }
                        // Its handler stays from an earlier configuration; no longer wanted.
                        _ => tracing::debug!(signal = %sig, "signal ignored (no longer forwarded)"),
                    }
                }
                exit = async { done.as_mut().expect("guarded").await }, if done.is_some() => {
                    let exit = exit.unwrap_or(Exit::Code(1));
                    tracing::info!(%exit, code = exit.code(), "tether exits with the child's status");
                    return Ok(exit.code());
                }
            }
        }
    }

    /// A new state from the network source.
    async fn net_update(&mut self, update: NetUpdate, sink: &Sink) {
        log_net_update(&update);
        if self.skip_position(update.position) {
            return;
        }
        self.net_pending = Some(update.position);
        let layer = self.cfg.sources.len();
        self.layers.set(layer, update.entries);
        if self.layers.merged() != self.applied {
            self.kick(sink).await;
        } else if self.debouncer.deadline().is_none() {
            // Nothing this agent renders changed: applied as it stands.
            self.gate_nothing_to_do();
            let acked = self.ack(Ok(()));
            self.after_ack(sink, acked, &Ok(()), false);
        }
    }

    /// Re-read the dirty sources. Returns whether the merged view now differs from what
    /// was last applied.
    fn reload_sources(&mut self, dirty: BTreeSet<usize>) -> bool {
        for i in dirty {
            // A symlinked source may point somewhere else now.
            self.watcher.follow(i);
            let Some(spec) = self.cfg.sources.get(i) else {
                continue;
            };
            match source::load(spec) {
                Ok(entries) => {
                    if self.layers.set(i, entries) {
                        tracing::debug!(source = %spec, "source changed");
                    }
                }
                Err(e) if e.is_missing() => {
                    tracing::warn!(source = %spec, "source is gone; keeping its last values until it returns");
                }
                Err(e) => {
                    tracing::error!(error = %e, "source not applied; keeping its last good values");
                }
            }
        }
        self.layers.merged() != self.applied
    }

    /// A change arrived: start or extend the debounce window, or act now when there is none
    /// (a zero-length sleep would still wait for the timer's next millisecond tick).
    pub(crate) async fn kick(&mut self, sink: &Sink) {
        let now = Instant::now();
        self.debouncer.kick(now);
        if self.debouncer.deadline().is_some_and(|d| d <= now) {
            self.debouncer.reset();
            self.apply(sink).await;
        }
    }

    /// Acknowledge the network source's latest position, once. Returns the position
    /// acknowledged, if there was one. A position that failed to apply stays pending: the
    /// outputs' retry goes through the gate again and acknowledges (and bakes) it anew.
    pub(crate) fn ack(&mut self, result: Result<(), String>) -> Option<Position> {
        if let (Some(net), Some(p)) = (&self.net, self.net_pending.take()) {
            if result.is_ok() {
                crate::health::position_applied(p);
            } else {
                self.net_pending = Some(p);
            }
            net.ack(p, result);
            return Some(p);
        }
        None
    }

    /// Render outputs and act on what changed (after a reload, render even when no value
    /// changed: an output or the environment's rules may have). Every apply passes the
    /// slot gate first (`crate::gate`): under a rollout policy a change from the nodes that
    /// would restart (or signal) waits there for a slot, and is applied by
    /// [`Agent::apply_now`] once granted.
    pub(crate) async fn apply(&mut self, sink: &Sink) {
        if self.gate_holds_back() {
            return;
        }
        self.apply_now(sink).await;
    }

    /// Render outputs and act on what changed now (the gate passed), acknowledge the
    /// version from the nodes, then bake it (`crate::bake`). Returns whether an action
    /// fired (a restart, a signal, an exec hook).
    pub(crate) async fn apply_now(&mut self, sink: &Sink) -> bool {
        self.before_act(sink);
        let (result, acted) = self.render_and_act(sink, false).await;
        let acked = self.ack(result.clone());
        self.after_ack(sink, acked, &result, acted);
        self.gate_acted(acted);
        acted
    }

    /// Render outputs and act on what changed; `force_restart` restarts the child even when
    /// no output asks for it (a rollback after the child exited). Returns whether every
    /// output was written, and whether anything (a restart, a signal, a hook) fired.
    pub(crate) async fn render_and_act(
        &mut self,
        sink: &Sink,
        force_restart: bool,
    ) -> (Result<(), String>, bool) {
        let retry = self.retry.take();
        self.restarted = None;
        let merged = self.layers.merged();
        let changed = changed_keys(&self.applied, &merged);
        if changed.is_empty() && !self.stale && !force_restart {
            return (Ok(()), false);
        }
        let values_changed = !changed.is_empty();
        let mut failures: Vec<String> = Vec::new();
        if values_changed {
            tracing::info!(keys = %tether_core::logname::names(&changed), "configuration changed");
        }
        let all_or_nothing = self.cfg.atomic_outputs;
        let written =
            crate::output::land(&mut self.outputs, &merged, all_or_nothing, &mut failures).await;
        let Actions {
            mut restart,
            signals,
            hooks,
        } = Actions::of(
            written.iter().map(|&i| &self.outputs[i].spec.on_change),
            values_changed,
        );
        restart |= force_restart;
        for &i in written.iter().filter(|_| !values_changed) {
            let o = &self.outputs[i];
            if o.spec.on_change == Action::Restart {
                tracing::info!(
                    output = %o.spec.path.display(),
                    "output rewritten after a reload; the child is not restarted for it (only a value or environment change restarts it)"
                );
            }
        }
        let env = render_env(&self.cfg, &merged);
        if env != self.env && (failures.is_empty() || !all_or_nothing) {
            // The child can only see a new environment by starting again.
            restart = true;
            self.env = env;
        }
        if failures.is_empty() {
            self.applied = merged;
            self.stale = false;
            crate::health::change_applied();
        } else {
            // Keep the difference so the next attempt rewrites what failed (outputs that
            // succeeded hold their new content and are not written or acted on again).
            let delay = retry.map_or(std::time::Duration::from_secs(1), |r| {
                (r.1 * 2).min(std::time::Duration::from_secs(60))
            });
            self.retry = Some((Instant::now() + delay, delay));
        }

        let acted = restart || !signals.is_empty() || !hooks.is_empty();
        match sink {
            Sink::Child(sup) if restart => {
                tracing::info!("restarting the child");
                let spawns = sup.spawns();
                let generation = spawns.borrow().generation;
                self.restarted = Some((spawns, generation));
                sup.send(Control::Restart(self.env.clone()));
            }
            Sink::Child(sup) => {
                for s in signals {
                    tracing::info!(signal = %s, "signalling the child");
                    sup.send(Control::Reload(s));
                }
            }
            Sink::External => {
                for s in signals {
                    target::signal_targets(&self.cfg.target, s);
                }
            }
        }
        for argv in hooks {
            let _ = self
                .hooks
                .send((argv, changed.clone(), self.cfg.exec_timeout));
        }
        let result = if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        };
        (result, acted)
    }
}
