//! The keyshade source: follows one keyshade environment (its secrets and variables) over
//! keyshade's Socket.IO change notifier ([`sio`]), with REST snapshots ([`rest`]) after
//! every registration and periodically, so that nothing is lost ([`follow`], [`view`]);
//! its secrets decrypted the way eccrypto does it ([`crypto`]).
//!
//! In the agent it is one more layer: the last one, after the file sources and the tether
//! nodes, so keyshade's values win (a drop-in for `keyshade run`: what keyshade holds is
//! what the app sees; files and nodes supply the rest). Its entries are marked secret for
//! keyshade secrets and plain for variables.

pub mod config;
pub mod crypto;
pub mod follow;
pub mod rest;
pub mod sio;
mod view;

use tokio::sync::mpsc;

use crate::state::Entries;
use tether_core::signal::Signal;

pub use config::KeyshadeSpec;
pub use follow::{KeyshadeEvent, Settings};

/// The index of keyshade's layer: after the file sources and the network source.
pub(crate) fn layer(cfg: &crate::config::Config) -> usize {
    cfg.sources.len() + usize::from(cfg.net.is_some())
}

/// `W/P/E`, as the status line and logs show the followed environment.
pub fn label(spec: &KeyshadeSpec) -> String {
    format!("{}/{}/{}", spec.workspace, spec.project, spec.environment)
}

/// Whether two settings follow the same thing the same way (a reload keeps the follower).
/// A token read from a file is not compared: the follower reads the file at each attempt.
pub(crate) fn same(a: &KeyshadeSpec, b: &KeyshadeSpec) -> bool {
    let token = a.token_file == b.token_file && (a.token_file.is_some() || a.token == b.token);
    token
        && (&a.base_url, &a.workspace, &a.project, &a.environment)
            == (&b.base_url, &b.workspace, &b.project, &b.environment)
        && a.private_key == b.private_key
        && a.quit_on_decryption_failure == b.quit_on_decryption_failure
        && a.snapshot_interval == b.snapshot_interval
        && a.ca_file == b.ca_file
}

impl Settings {
    /// The follower's settings from the validated `[keyshade]` ones: the TLS settings
    /// built (system roots plus `ca_file`) when the base URL is https.
    pub fn from_spec(spec: &KeyshadeSpec) -> Result<Settings, String> {
        let tls = if spec.base_url.starts_with("https://") {
            Some(tether_core::endpoint::tls_config(spec.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Settings {
            base_url: spec.base_url.clone(),
            workspace: spec.workspace.clone(),
            project: spec.project.clone(),
            environment: spec.environment.clone(),
            token: spec.token.clone(),
            token_file: spec.token_file.clone(),
            token_source: spec.token_source.clone(),
            private_key: spec.private_key.clone(),
            private_key_source: spec.private_key_source.clone(),
            quit_on_decryption_failure: spec.quit_on_decryption_failure,
            snapshot_interval: spec.snapshot_interval,
            tls,
        })
    }
}

/// Start following what `spec` says.
pub fn start_spec(
    spec: &KeyshadeSpec,
    tasks: &crate::tasks::Tasks,
) -> Result<KeyshadeSource, String> {
    start(Settings::from_spec(spec)?, tasks)
}

/// The agent's side of the keyshade follower. Dropping it stops the follower (and its
/// connection): a reload that changes the keyshade settings starts a new one.
pub struct KeyshadeSource {
    pub updates: mpsc::UnboundedReceiver<KeyshadeEvent>,
    _stop: tokio_util::sync::DropGuard,
}

/// Start following. Fails only on settings that can never work (a bad base URL or CA file).
pub fn start(settings: Settings, tasks: &crate::tasks::Tasks) -> Result<KeyshadeSource, String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::info_span!(
        "keyshade",
        env = %format!("{}/{}/{}", settings.workspace, settings.project, settings.environment)
    );
    let follower = follow::Follower::new(settings, tx)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    tasks.spawn(span, async move {
        tokio::select! {
            _ = stopped.cancelled() => tracing::debug!("keyshade follower stopped"),
            _ = follower.run() => {}
        }
    });
    Ok(KeyshadeSource {
        updates: rx,
        _stop: stop.drop_guard(),
    })
}

/// keyshade's first state (its first snapshot), for the agent's first render; `Ok(Err(code))`
/// when TERM or INT came first. A SIGHUP that reloads is noted in `reload_asked` and runs
/// once the agent does.
pub(crate) async fn first_state(
    k: &mut KeyshadeSource,
    signals: &mut mpsc::UnboundedReceiver<Signal>,
    hup_reloads: bool,
    reload_asked: &mut bool,
) -> Result<Result<Entries, i32>, String> {
    tracing::info!("waiting for the first state from keyshade (registration, then its snapshot)");
    let mut pulse = crate::health::Pulse::start();
    loop {
        tokio::select! {
            _ = pulse.tick() => {}
            event = k.updates.recv() => return match event {
                Some(KeyshadeEvent::State(entries)) => Ok(Ok(entries)),
                Some(KeyshadeEvent::Fatal(m)) => Err(m),
                None => Err("the keyshade follower stopped".into()),
            },
            Some(sig) = signals.recv() => {
                if sig == Signal::TERM || sig == Signal::INT {
                    tracing::info!(signal = %sig, "stopped before the first state from keyshade arrived");
                    return Ok(Err(128 + sig.number()));
                }
                if sig == Signal::HUP && hup_reloads {
                    tracing::info!("reload asked before the first state arrived; it runs once the agent does");
                    *reload_asked = true;
                }
            }
        }
    }
}
