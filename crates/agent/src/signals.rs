//! tether's own signal handlers, delivered as one stream. A reload may add handlers (more
//! signals to forward, or SIGHUP to reload on) but never removes one: tokio keeps a
//! handler for good, so a signal no longer wanted is received and dropped, not left to its
//! default action (which for most of them would kill tether).

use std::collections::BTreeSet;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{Config, Mode, Sighup};
use crate::tasks::Tasks;
use tether_core::signal::Signal;

/// The handlers installed so far and where they deliver.
pub struct Signals {
    installed: BTreeSet<i32>,
    tx: mpsc::UnboundedSender<Signal>,
    tasks: Tasks,
}

/// The signals `cfg` asks tether to handle.
pub fn wanted(cfg: &Config) -> BTreeSet<i32> {
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
    if cfg.sighup == Sighup::Reload {
        set.insert(Signal::HUP.number());
    }
    set
}

impl Signals {
    /// Install the handlers `cfg` wants; every signal arrives on the receiver.
    pub fn install(
        cfg: &Config,
        tasks: &Tasks,
    ) -> std::io::Result<(Signals, mpsc::UnboundedReceiver<Signal>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = Signals {
            installed: BTreeSet::new(),
            tx,
            tasks: tasks.clone(),
        };
        s.ensure(cfg)?;
        Ok((s, rx))
    }

    /// Install the handlers `cfg` wants that are not installed yet.
    pub fn ensure(&mut self, cfg: &Config) -> std::io::Result<()> {
        for n in wanted(cfg) {
            if self.installed.contains(&n) {
                continue;
            }
            let Ok(sig) = nix::sys::signal::Signal::try_from(n) else {
                continue;
            };
            let mut stream = signal(SignalKind::from_raw(n))?;
            self.installed.insert(n);
            let tx = self.tx.clone();
            self.tasks.spawn(
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
        Ok(())
    }
}
