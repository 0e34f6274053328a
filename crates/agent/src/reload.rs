//! tether's own configuration read again, on SIGHUP (`systemctl reload`) or when its file
//! (`--config`) changes: built as at start (the file as it is now, under the same flags and
//! `TETHER_*` variables), validated the same way, and applied in place.
//!
//! A configuration with any problem is refused whole, every problem logged with its key,
//! and the running one stays. Otherwise only what changed is touched: outputs (matched by
//! path; a removed one's file removed unless `keep_outputs`, an added one written at once),
//! actions, file sources, the network and keyshade sources (a new follower only when what
//! it follows changed), debounce, the supervisor's timings, forwarded signals, the
//! environment's rules, the log level. The child is restarted only when its environment changes. The
//! command and the log format take a restart of tether; that is logged.

mod plan;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::config::{Config, Origin, Problem};
use crate::output::{Format, Output};
use crate::run::{Agent, Sink, supervisor_options};
use crate::source::keyshade::{self, KeyshadeSource};
use crate::source::net::NetSource;
use crate::source::watch::SourceWatcher;
use crate::source::{self, SourceKind, SourceSpec};
use crate::state::{Entries, Layers};
use crate::supervisor::Control;
use plan::{NetChange, Plan};

/// A burst of edits of the config file gives one reload, once it has been quiet this long...
const QUIET: Duration = Duration::from_millis(200);
/// ...or this long after its first edit.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// Watches tether's own config file (as sources are watched: saves by rename, Kubernetes'
/// `..data` swap, a symlink re-pointed) and says when a burst of edits has settled.
pub(crate) struct ConfigWatch {
    watch: Option<(SourceWatcher, mpsc::UnboundedReceiver<usize>)>,
    first: Option<Instant>,
    due: Option<Instant>,
}

impl ConfigWatch {
    pub(crate) fn new(origin: Option<&Origin>) -> ConfigWatch {
        let watch = origin.and_then(Origin::config_file).and_then(|path| {
            let (tx, rx) = mpsc::unbounded_channel();
            let file = SourceSpec {
                kind: SourceKind::Dotenv,
                path: path.to_path_buf(),
            };
            match source::watch::watch(&[file], tx) {
                Ok(w) => Some((w, rx)),
                Err(e) => {
                    tracing::warn!(error = %e, config = %path.display(), "cannot watch the config file; edits take effect on SIGHUP only");
                    None
                }
            }
        });
        ConfigWatch {
            watch,
            first: None,
            due: None,
        }
    }

    /// Resolves once the config file changed and the edits settled. Cancel-safe: what it
    /// has seen is kept for the next call.
    pub(crate) async fn changed(&mut self) {
        let ConfigWatch { watch, first, due } = self;
        let Some((watcher, rx)) = watch.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        return std::future::pending().await;
                    }
                    while rx.try_recv().is_ok() {}
                    // A symlinked config may point somewhere else now.
                    watcher.follow(0);
                    let now = Instant::now();
                    let start = *first.get_or_insert(now);
                    *due = Some((now + QUIET).min(start + MAX_WAIT));
                }
                _ = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    *due = None;
                    *first = None;
                    return;
                }
            }
        }
    }
}

/// What a reload prepared before touching anything running.
struct Prepared {
    /// New file sources: their watcher, its events, and each one's entries.
    sources: Option<(
        SourceWatcher,
        mpsc::UnboundedReceiver<usize>,
        Vec<Option<Entries>>,
    )>,
    /// The network source's replacement (`Some(None)`: removed).
    net: Option<Option<NetSource>>,
    /// The keyshade source's replacement (`Some(None)`: removed).
    keyshade: Option<Option<KeyshadeSource>>,
}

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem {
        key: key.to_string(),
        message: message.into(),
    }
}

impl Agent {
    /// Read the configuration again and apply it, or refuse it whole (see the module doc).
    pub(crate) async fn reload(&mut self, sink: &Sink, trigger: &str) {
        tether_core::notify::reloading();
        tracing::info!(trigger, "reloading the configuration");
        match self.try_reload(sink).await {
            Ok(()) => {
                // The endpoints and systemd's status describe the new configuration.
                crate::health::config_changed(&self.cfg);
                crate::health::ready();
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!(key = %p.key, problem = %p.message, "invalid configuration");
                }
                tracing::error!(
                    problems = problems.len(),
                    "configuration not reloaded: the running configuration stays"
                );
                tether_core::notify::ready(&format!(
                    "configuration not reloaded ({} problem(s), see the log); running on the previous one",
                    problems.len()
                ));
            }
        }
    }

    async fn try_reload(&mut self, sink: &Sink) -> Result<(), Vec<Problem>> {
        let Some(origin) = &self.cfg.origin else {
            return Err(vec![problem(
                "config",
                "this configuration was not built from flags and a file; nothing to read again",
            )]);
        };
        let mut new = origin.build().map_err(|e| e.0)?;
        let plan = Plan::between(&self.cfg, &new);
        if plan.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
            return Ok(());
        }
        let prepared = self.prepare(&plan, &new)?;
        for key in &plan.need_restart {
            tracing::warn!(
                key,
                "changed in the configuration, but only a restart of tether applies it; the running value stays"
            );
        }
        new.command = self.cfg.command.clone();
        new.log_format = self.cfg.log_format;
        self.commit(sink, &plan, new, prepared);
        if plan.changed.is_empty() {
            tracing::info!("configuration reloaded: nothing that applies while running changed");
            return Ok(());
        }
        tracing::info!(changed = %plan.changed.join(", "), "configuration reloaded");
        if self.stale || self.layers.merged() != self.applied {
            self.apply(sink).await;
        }
        Ok(())
    }

    /// Everything that can fail, done before anything running is touched: the new sources
    /// read and watched, the new network source started, the log level set (last, so that
    /// nothing after it can fail). On a problem all of it is dropped.
    fn prepare(&mut self, plan: &Plan, new: &Config) -> Result<Prepared, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut sources = None;
        if plan.sources {
            let (tx, rx) = mpsc::unbounded_channel();
            match source::watch::watch(&new.sources, tx) {
                Ok(watcher) => {
                    let entries = self.load_sources(&new.sources, &mut problems);
                    sources = Some((watcher, rx, entries));
                }
                Err(e) => problems.push(problem("source", e.to_string())),
            }
        }
        let net = match (plan.net, &new.net) {
            (NetChange::Start | NetChange::Restart, Some(spec)) => {
                match source::net::start(spec.clone(), &self.tasks) {
                    Ok(n) => Some(Some(n)),
                    Err(e) => {
                        problems.push(problem("server", e));
                        None
                    }
                }
            }
            (NetChange::Stop, _) => Some(None),
            _ => None,
        };
        let ks = match (plan.keyshade, &new.keyshade) {
            (NetChange::Start | NetChange::Restart, Some(spec)) => {
                match keyshade::start_spec(spec, &self.tasks) {
                    Ok(k) => Some(Some(k)),
                    Err(e) => {
                        problems.push(problem("keyshade", e));
                        None
                    }
                }
            }
            (NetChange::Stop, _) => Some(None),
            _ => None,
        };
        if problems.is_empty() && plan.log_level {
            if let Err(e) = self.log.set(new.log_level.as_deref()) {
                problems.push(problem("log_level", e));
            }
        }
        if problems.is_empty() {
            Ok(Prepared {
                sources,
                net,
                keyshade: ks,
            })
        } else {
            Err(problems)
        }
    }

    /// Each new file source's entries. One that is missing but was a source before keeps
    /// its last values (it may be mid-swap); any other that cannot be read is a problem.
    fn load_sources(
        &self,
        specs: &[SourceSpec],
        problems: &mut Vec<Problem>,
    ) -> Vec<Option<Entries>> {
        specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let before = self
                    .cfg
                    .sources
                    .iter()
                    .position(|s| s == spec)
                    .and_then(|j| self.layers.get(j));
                match source::load(spec) {
                    Ok(entries) => Some(entries),
                    Err(e) if e.is_missing() && before.is_some() => {
                        tracing::warn!(source = %spec, "source is gone; keeping its last values until it returns");
                        before.cloned()
                    }
                    Err(e) => {
                        problems.push(problem(&format!("source[{i}]"), e.to_string()));
                        None
                    }
                }
            })
            .collect()
    }

    /// Apply a prepared reload: nothing here fails.
    fn commit(&mut self, sink: &Sink, plan: &Plan, new: Config, prepared: Prepared) {
        // Layers: file sources in their new order, then the network source. A follower
        // that replaces another keeps the old one's values until its first state.
        let net_entries = self
            .cfg
            .net
            .as_ref()
            .and_then(|_| self.layers.get(self.cfg.sources.len()).cloned());
        let file_entries: Vec<Option<Entries>> = match prepared.sources {
            Some((watcher, rx, entries)) => {
                self.watcher = watcher;
                self.source_rx = rx;
                entries
            }
            None => (0..new.sources.len())
                .map(|i| self.layers.get(i).cloned())
                .collect(),
        };
        let ks_entries = self
            .cfg
            .keyshade
            .as_ref()
            .and_then(|_| self.layers.get(keyshade::layer(&self.cfg)).cloned());
        let mut layers = Layers::new(keyshade::layer(&new) + usize::from(new.keyshade.is_some()));
        for (i, entries) in file_entries.into_iter().enumerate() {
            if let Some(e) = entries {
                layers.set(i, e);
            }
        }
        if let (Some(_), Some(e), NetChange::Same | NetChange::Restart) =
            (&new.net, net_entries, plan.net)
        {
            layers.set(new.sources.len(), e);
        }
        if let (Some(_), Some(e), NetChange::Same | NetChange::Restart) =
            (&new.keyshade, ks_entries, plan.keyshade)
        {
            layers.set(keyshade::layer(&new), e);
        }
        self.layers = layers;
        if plan.sources || plan.net != NetChange::Same || plan.keyshade != NetChange::Same {
            // The layers are laid out anew: a bake's values and the last healthy ones no
            // longer line up with them.
            self.layout_changed(sink, prepared.net.is_some());
        }
        if let Some(ks) = prepared.keyshade {
            if plan.keyshade == NetChange::Restart {
                tracing::info!(
                    "keyshade source restarted; its values stay until the new one's first state"
                );
            }
            self.keyshade = ks;
        }
        if let Some(net) = prepared.net {
            if plan.net == NetChange::Restart {
                tracing::info!(
                    "network source restarted; its values stay until the new one's first state"
                );
            }
            // The old source's slot goes with it, and so does its policy.
            self.gate_reset();
            self.net = net;
            self.net_pending = None;
        }

        if plan.outputs {
            self.reconcile_outputs(&new);
        }
        if plan.debounce {
            self.debouncer.retune(new.debounce, new.max_wait, new.splay);
        }
        if let (true, Sink::Child(sup)) = (plan.supervisor, sink) {
            sup.send(Control::Configure(supervisor_options(&new)));
        }
        if plan.signals {
            if let Err(e) = self.signals.ensure(&new) {
                tracing::warn!(error = %e, "cannot install a signal handler; that signal keeps its old handling");
            }
        }
        self.stale |= plan.outputs || plan.env;
        self.cfg = new;
        if plan.outputs {
            self.templates = crate::output::TemplateWatch::new(&self.cfg.outputs);
        }
    }

    /// Outputs matched by path: one whose rendering is the same keeps what it last wrote
    /// (and takes its new action); a changed one starts over; a removed one's file goes
    /// unless `keep_outputs`. The next apply writes what is new or different.
    fn reconcile_outputs(&mut self, new: &Config) {
        let mut old: Vec<Option<Output>> = std::mem::take(&mut self.outputs)
            .into_iter()
            .map(Some)
            .collect();
        for spec in &new.outputs {
            let found = old
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|o| o.spec.path == spec.path))
                .and_then(Option::take);
            let out = match found {
                Some(mut o)
                    if (o.spec.format, o.spec.mode, o.spec.owner)
                        == (spec.format, spec.mode, spec.owner) =>
                {
                    o.spec.on_change = spec.on_change.clone();
                    o.spec.template = spec.template.clone();
                    o.spec.check = spec.check.clone();
                    o
                }
                Some(o) => {
                    // A file becomes a directory or back: the old one must go first.
                    if (o.spec.format == Format::Dir) != (spec.format == Format::Dir) {
                        o.remove();
                    }
                    Output::new(spec.clone())
                }
                None => Output::new(spec.clone()),
            };
            self.outputs.push(out);
        }
        for o in old.into_iter().flatten() {
            let path = o.spec.path.display().to_string();
            if new.keep_outputs {
                tracing::info!(%path, "output no longer configured; left in place (keep_outputs)");
            } else {
                o.remove();
                tracing::info!(%path, "output no longer configured; removed");
            }
        }
    }
}
