//! The agent loop shared by `run` and `watch`: sources → state → debounce/splay → outputs →
//! actions. In `run` the actions go to the supervised child; in `watch` to other processes
//! found by pidfile or name, or to hooks.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::config::{Action, Config, Mode};
use crate::debounce::Debouncer;
use crate::output::{EnvVars, Output};
use crate::source::net::{NetSource, NetUpdate};
use crate::source::{self, SourceError, SourceSpec, watch::SourceWatcher};
use crate::state::{Entries, Layers, changed_keys};
use crate::supervisor::{self, ChildSpec, Control, Exit, Reaper, Supervisor};
use crate::target;
use crate::tasks::Tasks;
use tether_core::protocol::Position;
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

/// Where actions go.
enum Sink {
    Child(Supervisor),
    External,
}

struct Agent {
    cfg: Config,
    layers: Layers,
    outputs: Vec<Output>,
    applied: Entries,
    env: EnvVars,
    debouncer: Debouncer,
    reaper: Reaper,
    hooks: mpsc::UnboundedSender<(Vec<String>, Vec<String>)>,
    watcher: SourceWatcher,
    source_rx: mpsc::UnboundedReceiver<usize>,
    /// The network source (the last layer) and the position still to acknowledge.
    net: Option<NetSource>,
    net_pending: Option<Position>,
    /// An output failed to update: try again then (doubling up to a minute).
    retry: Option<(Instant, std::time::Duration)>,
    tasks: Tasks,
}

/// How long the agent waits for its tasks once it is done.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);

/// Run the agent until the child exits (run) or TERM/INT (watch). Returns the exit code.
/// Every task it started has stopped (or the deadline passed) when it returns.
pub async fn run(cfg: Config) -> Result<i32, AgentError> {
    let tasks = Tasks::new();
    let result = match cfg.once.clone() {
        Some(once) => crate::once::run(cfg, once, &tasks).await,
        None => run_with(cfg, &tasks).await,
    };
    tasks.shutdown(SHUTDOWN_DEADLINE).await;
    result
}

async fn run_with(cfg: Config, tasks: &Tasks) -> Result<i32, AgentError> {
    // Handlers first: nothing sent to tether from here on is lost or fatal.
    let mut signal_rx = install_signals(&cfg, tasks)?;
    let reaper = Reaper::start().map_err(AgentError::Signals)?;
    if cfg.mode == Mode::Run && std::process::id() != 1 {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a subreaper; orphans of the child go to init");
        }
    }

    // Watch before the first read so no change can fall between the two.
    let (source_tx, source_rx) = mpsc::unbounded_channel();
    let watcher = source::watch::watch(&cfg.sources, source_tx)?;
    let mut layers = Layers::new(cfg.sources.len() + usize::from(cfg.net.is_some()));
    for (i, spec) in cfg.sources.iter().enumerate() {
        layers.set(i, source::load(spec)?);
    }

    // The network source is the last layer; the first render waits for its first state.
    let mut net = match &cfg.net {
        Some(spec) => Some(source::net::start(spec.clone(), tasks).map_err(AgentError::Net)?),
        None => None,
    };
    let mut net_pending = None;
    if let Some(n) = net.as_mut() {
        tracing::info!("waiting for the first state from a node");
        let first = loop {
            tokio::select! {
                u = n.updates.recv() => {
                    break u.ok_or_else(|| AgentError::Net("the network source stopped".into()))?;
                }
                Some(sig) = signal_rx.recv() => {
                    // No child yet: only TERM and INT mean anything.
                    if sig == Signal::TERM || sig == Signal::INT {
                        tracing::info!(signal = %sig, "stopped before the first state arrived");
                        return Ok(128 + sig.number());
                    }
                }
            }
        };
        log_net_update(&first);
        net_pending = Some(first.position);
        layers.set(cfg.sources.len(), first.entries);
    }

    let applied = layers.merged();
    let mut outputs: Vec<Output> = cfg.outputs.iter().cloned().map(Output::new).collect();
    for o in &mut outputs {
        if let Err(e) = o.apply(&applied) {
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

    let hooks = spawn_hook_runner(reaper.clone(), cfg.exec_timeout, tasks);
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
        retry: None,
        tasks: tasks.clone(),
    };
    agent.ack(Ok(()));
    let code = agent.serve(signal_rx).await;
    if !agent.cfg.keep_outputs {
        for o in &agent.outputs {
            o.remove();
        }
    }
    code
}

fn log_net_update(u: &NetUpdate) {
    if u.degraded {
        tracing::warn!(position = %u.position, entries = u.entries.len(), "DEGRADED: running on saved state");
    } else {
        tracing::debug!(position = %u.position, entries = u.entries.len(), "state from node");
    }
}

fn render_env(cfg: &Config, entries: &Entries) -> EnvVars {
    let Some(spec) = &cfg.env else {
        return EnvVars::new();
    };
    let (vars, skipped) = spec.render(entries);
    for s in skipped {
        tracing::error!(key = %tether_core::logname::name(&s.name), reason = s.reason, "entry not injected into the environment");
    }
    vars
}

/// Every signal tether handles, delivered as one stream.
fn install_signals(
    cfg: &Config,
    tasks: &Tasks,
) -> Result<mpsc::UnboundedReceiver<Signal>, AgentError> {
    let mut set: BTreeSet<i32> = [Signal::TERM, Signal::INT]
        .iter()
        .map(|s| s.number())
        .collect();
    if cfg.mode == Mode::Run {
        set.extend(cfg.forward_signals.iter().map(|s| s.number()));
        // `fg` must give the terminal back to a stopped child and continue it.
        if crate::supervisor::tty::is_terminal() {
            set.insert(Signal::CONT.number());
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    for n in set {
        let mut stream = signal(SignalKind::from_raw(n)).map_err(AgentError::Signals)?;
        let tx = tx.clone();
        let Ok(sig) = nix::sys::signal::Signal::try_from(n) else {
            continue;
        };
        tasks.spawn(
            tracing::info_span!("signal", signal = %Signal(sig)),
            async move {
                while stream.recv().await.is_some() {
                    if tx.send(Signal(sig)).is_err() {
                        break;
                    }
                }
            },
        );
    }
    Ok(rx)
}

/// Hooks run one at a time, in order.
/// At the shutdown a hook still running is left to itself, as it was before tasks were
/// stopped: its process group goes on without tether.
fn spawn_hook_runner(
    reaper: Reaper,
    limit: std::time::Duration,
    tasks: &Tasks,
) -> mpsc::UnboundedSender<(Vec<String>, Vec<String>)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<String>, Vec<String>)>();
    tasks.spawn(tracing::info_span!("hooks"), async move {
        while let Some(first) = rx.recv().await {
            // Runs that queued up while a hook ran are merged: one run per hook, with every
            // changed name, so a slow hook never falls further and further behind.
            let mut runs: Vec<(Vec<String>, BTreeSet<String>)> = Vec::new();
            let mut queue = vec![first];
            while let Ok(more) = rx.try_recv() {
                queue.push(more);
            }
            for (argv, changed) in queue {
                match runs.iter_mut().find(|(a, _)| *a == argv) {
                    Some((_, names)) => names.extend(changed),
                    None => runs.push((argv, changed.into_iter().collect())),
                }
            }
            for (argv, names) in runs {
                let changed: Vec<String> = names.into_iter().collect();
                target::run_hook(&reaper, &argv, &changed, limit).await;
            }
        }
    });
    tx
}

impl Agent {
    async fn serve(
        &mut self,
        mut signals: mpsc::UnboundedReceiver<Signal>,
    ) -> Result<i32, AgentError> {
        let (sink, mut done) = match self.cfg.mode {
            Mode::Run => {
                let spec = ChildSpec::new(self.cfg.command.clone());
                let opts = supervisor::Options {
                    stop_signal: self.cfg.stop_signal,
                    stop_timeout: self.cfg.stop_timeout,
                    restart_on_exit: self.cfg.restart_on_exit,
                    reload_grace: self.cfg.reload_grace,
                };
                let (sup, done) = Supervisor::start(
                    spec,
                    self.env.clone(),
                    opts,
                    self.reaper.clone(),
                    &self.tasks,
                )?;
                (Sink::Child(sup), Some(done))
            }
            Mode::Watch => (Sink::External, None),
        };
        loop {
            let deadline = self.debouncer.deadline();
            tokio::select! {
                Some(first) = self.source_rx.recv() => {
                    let mut dirty = BTreeSet::from([first]);
                    while let Ok(i) = self.source_rx.try_recv() {
                        dirty.insert(i);
                    }
                    if self.reload(dirty) {
                        self.kick(&sink);
                    }
                }
                Some(update) = async { self.net.as_mut().expect("guarded").updates.recv().await }, if self.net.is_some() => {
                    log_net_update(&update);
                    self.net_pending = Some(update.position);
                    let layer = self.cfg.sources.len();
                    self.layers.set(layer, update.entries);
                    if self.layers.merged() != self.applied {
                        self.kick(&sink);
                    } else if self.debouncer.deadline().is_none() {
                        // Nothing this agent renders changed: applied as it stands.
                        self.ack(Ok(()));
                    }
                }
                _ = sleep_until(self.retry.map_or_else(Instant::now, |r| r.0)), if self.retry.is_some() => {
                    tracing::info!("retrying the outputs that failed");
                    self.apply(&sink);
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.debouncer.reset();
                    self.apply(&sink);
                }
                Some(sig) = signals.recv() => {
                    let terminating = sig == Signal::TERM || sig == Signal::INT;
                    match &sink {
                        Sink::Child(sup) if terminating => {
                            let fwd = if self.cfg.forward_signals.contains(&sig) { sig } else { self.cfg.stop_signal };
                            tracing::info!(signal = %sig, "stopping: signal forwarded to the child");
                            sup.send(Control::Terminate(fwd));
                        }
                        Sink::Child(sup) => {
                            tracing::debug!(signal = %sig, "forwarding signal");
                            sup.send(Control::Signal(sig));
                        }
                        Sink::External => {
                            tracing::info!(signal = %sig, "stopping");
                            return Ok(0);
                        }
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

    /// Re-read the dirty sources. Returns whether the merged view now differs from what
    /// was last applied.
    fn reload(&mut self, dirty: BTreeSet<usize>) -> bool {
        for i in dirty {
            // A symlinked source may point somewhere else now.
            self.watcher.follow(i);
            let spec: &SourceSpec = &self.cfg.sources[i];
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
    fn kick(&mut self, sink: &Sink) {
        let now = Instant::now();
        self.debouncer.kick(now);
        if self.debouncer.deadline().is_some_and(|d| d <= now) {
            self.debouncer.reset();
            self.apply(sink);
        }
    }

    /// Acknowledge the network source's latest position, once.
    fn ack(&mut self, result: Result<(), String>) {
        if let (Some(net), Some(p)) = (&self.net, self.net_pending.take()) {
            net.ack(p, result);
        }
    }

    /// Render outputs and act on what changed.
    fn apply(&mut self, sink: &Sink) {
        let retry = self.retry.take();
        let merged = self.layers.merged();
        let changed = changed_keys(&self.applied, &merged);
        if changed.is_empty() {
            self.ack(Ok(()));
            return;
        }
        let mut failures: Vec<String> = Vec::new();
        tracing::info!(keys = %tether_core::logname::names(&changed), "configuration changed");
        let mut restart = false;
        let mut signals: Vec<Signal> = Vec::new();
        let mut hooks: Vec<Vec<String>> = Vec::new();
        for o in &mut self.outputs {
            match o.apply(&merged) {
                Ok(false) => {}
                Ok(true) => match &o.spec.on_change {
                    Action::Restart => restart = true,
                    Action::Signal(s) if !signals.contains(s) => signals.push(*s),
                    Action::Signal(_) | Action::None => {}
                    Action::Exec(argv) if !hooks.contains(argv) => hooks.push(argv.clone()),
                    Action::Exec(_) => {}
                },
                Err(e) => {
                    tracing::error!(error = %e, "output not updated; it keeps its previous content");
                    failures.push(e.to_string());
                }
            }
        }
        if self.cfg.env.is_some() {
            let env = render_env(&self.cfg, &merged);
            if env != self.env {
                // The child can only see a new environment by starting again.
                restart = true;
                self.env = env;
            }
        }
        if failures.is_empty() {
            self.applied = merged;
        } else {
            // Keep the difference so the next attempt rewrites what failed (outputs that
            // succeeded hold their new content and are not written or acted on again).
            let delay = retry.map_or(std::time::Duration::from_secs(1), |r| {
                (r.1 * 2).min(std::time::Duration::from_secs(60))
            });
            self.retry = Some((Instant::now() + delay, delay));
        }

        match sink {
            Sink::Child(sup) if restart => {
                tracing::info!("restarting the child");
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
            let _ = self.hooks.send((argv, changed.clone()));
        }
        self.ack(if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        });
    }
}
