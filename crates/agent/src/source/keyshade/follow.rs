//! The keyshade follower: one task that keeps the followed environment's full entry set and
//! hands it to the agent whenever it changes.
//!
//! A session: upgrade (token header) → namespace `/change-notifier` → `register-client-app`
//! → wait for `client-registered` (no fixed sleep) → REST snapshot → live
//! `configuration-updated` events on top ([`super::view`]). The snapshot is fetched again
//! after every registration and every `snapshot_interval`, so deletions and changes missed
//! while disconnected converge; events received while a snapshot is fetched are applied
//! again on top of it. A refused registration (keyshade's "already connected" after a
//! fast reconnect, among others) is logged with the server's message and retried with
//! capped, jittered backoff (the network source's [`Backoff`]); a refused token waits
//! longest. Nothing the server sends ends the agent, except a secret that cannot be
//! decrypted under `quit_on_decryption_failure`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::crypto::PrivateKey;
use super::rest::{self, RestError, Snapshot};
use super::sio::{self, SioError, Socket};
use super::view::{Undecryptable, Update, View};
use crate::source::net::backoff::{Backoff, Outcome, STABLE};
use crate::state::Entries;
use tether_core::logname::name as logname;
use tether_core::secret::Value;

/// keyshade's change-notifier namespace.
pub const NAMESPACE: &str = "/change-notifier";
/// How long the server may take to answer the registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// A failed snapshot is fetched again after 1 s, doubling up to the snapshot interval.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

/// What the follower needs (built from the `[keyshade]` settings).
#[derive(Clone, Debug)]
pub struct Settings {
    pub base_url: String,
    pub workspace: String,
    pub project: String,
    pub environment: String,
    pub token: Value,
    /// Read again at each connection attempt when set (a rotated token is followed).
    pub token_file: Option<PathBuf>,
    /// Where the token came from, for messages (never the token).
    pub token_source: String,
    pub private_key: Option<PrivateKey>,
    /// Where the private key came from, or where it was looked for, for messages.
    pub private_key_source: String,
    pub quit_on_decryption_failure: bool,
    pub snapshot_interval: Duration,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// What the follower tells the agent.
#[derive(Debug)]
pub enum KeyshadeEvent {
    /// The environment's full entry set, changed since the last one sent.
    State(Entries),
    /// It cannot go on (`quit_on_decryption_failure`): the agent ends, non-zero.
    Fatal(String),
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Socket(#[from] SioError),
    #[error("keyshade refused the registration: {0}")]
    Registration(String),
    #[error("cannot read the token: {0}")]
    Token(String),
    #[error("{0}")]
    Fatal(String),
}

type Fetch = Pin<Box<dyn Future<Output = Result<Snapshot, RestError>> + Send>>;

pub(crate) struct Follower {
    s: Settings,
    url: String,
    client: rest::Client,
    view: View,
    /// The entries last handed to the agent (none yet: it waits for the first).
    sent: Option<Entries>,
    updates: mpsc::UnboundedSender<KeyshadeEvent>,
    /// When the current session registered, if it did.
    registered_at: Option<Instant>,
}

/// How a session's end weighs on the next wait: a refused token waits longest (only an
/// operator fixes it); a refused registration ("already connected") is a failure that
/// heals by itself, retried sooner.
fn outcome(e: &SessionError, stable: bool) -> Outcome {
    match e {
        _ if stable => Outcome::Stable,
        SessionError::Socket(SioError::Refused {
            status: 401 | 403, ..
        }) => Outcome::Refused,
        SessionError::Socket(SioError::Connect(_) | SioError::Timeout(_)) => Outcome::Unreachable,
        _ => Outcome::Failed,
    }
}

impl Follower {
    pub(crate) fn new(
        s: Settings,
        updates: mpsc::UnboundedSender<KeyshadeEvent>,
    ) -> Result<Follower, String> {
        let url = sio::socket_url(&s.base_url).map_err(|e| format!("base_url: {e}"))?;
        let client = rest::Client {
            base: s.base_url.trim_end_matches('/').to_string(),
            token: s.token.clone(),
            token_source: s.token_source.clone(),
            tls: s.tls.clone(),
        };
        Ok(Follower {
            s,
            url,
            client,
            view: View::default(),
            sent: None,
            updates,
            registered_at: None,
        })
    }

    fn label(&self) -> String {
        format!(
            "{}/{}/{}",
            self.s.workspace, self.s.project, self.s.environment
        )
    }

    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff::new();
        loop {
            self.registered_at = None;
            let e = match self.session().await {
                Ok(never) => match never {},
                Err(e) => e,
            };
            crate::health::keyshade_lost();
            if let SessionError::Fatal(message) = e {
                tracing::error!("{message}");
                let _ = self.updates.send(KeyshadeEvent::Fatal(message));
                return;
            }
            let stable = self.registered_at.is_some_and(|at| at.elapsed() >= STABLE);
            let outcome = outcome(&e, stable);
            let delay = backoff.after(outcome, true);
            let base = &self.s.base_url;
            match (&e, outcome) {
                (_, Outcome::Refused) => tracing::error!(
                    error = %e, retry_in = ?delay,
                    "keyshade refused the token from {} on the socket: fix it (retrying every few minutes meanwhile)",
                    self.s.token_source
                ),
                (_, Outcome::Unreachable) => tracing::warn!(
                    error = %e, retry_in = ?delay,
                    "cannot reach keyshade at {base} (check base_url if this lasts)"
                ),
                (SessionError::Registration(_), _) => tracing::warn!(
                    error = %e, retry_in = ?delay,
                    "keyshade did not register this client for {}; retrying (after a fast reconnect keyshade may still see the old session for a while)",
                    self.label()
                ),
                _ => tracing::warn!(error = %e, retry_in = ?delay, "keyshade connection lost"),
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn token(&self) -> Result<Value, SessionError> {
        let Some(path) = &self.s.token_file else {
            return Ok(self.s.token.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| SessionError::Token(format!("token_file {}: {e}", path.display())))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(SessionError::Token(format!(
                "token_file {} is empty",
                path.display()
            )));
        }
        // It goes into a request header as it is: a CR, LF or other control character
        // would end the header (and the same check as at start, which saw the old file).
        if !super::config::header_safe(token.as_bytes()) {
            return Err(SessionError::Token(format!(
                "token_file {} holds a character a token cannot have (a control character or non-ASCII)",
                path.display()
            )));
        }
        Ok(Value::from(token))
    }

    /// One connection, until it fails.
    async fn session(&mut self) -> Result<std::convert::Infallible, SessionError> {
        let token = self.token()?;
        self.client.token = token.clone();
        let tls = self.s.tls.clone();
        let mut sock =
            Socket::connect(&self.url, token.expose_str().unwrap_or_default(), tls).await?;
        let h = &sock.handshake;
        tracing::debug!(ping_interval = ?h.ping_interval, ping_timeout = ?h.ping_timeout, max_payload = h.max_payload, "keyshade socket open");
        let result = self.registered(&mut sock).await;
        sock.close().await;
        result
    }

    async fn registered(
        &mut self,
        sock: &mut Socket,
    ) -> Result<std::convert::Infallible, SessionError> {
        sock.join(NAMESPACE).await?;
        let register = json!({
            "workspaceSlug": self.s.workspace,
            "projectSlug": self.s.project,
            "environmentSlug": self.s.environment,
        });
        sock.send(sio::event_frame(
            NAMESPACE,
            "register-client-app",
            &register,
        ))
        .await?;
        let deadline = Instant::now() + REGISTER_TIMEOUT;
        loop {
            let (name, data) = tokio::time::timeout_at(deadline, sock.next_event(NAMESPACE))
                .await
                .map_err(|_| SioError::Timeout("the answer to register-client-app"))??;
            if name != "client-registered" {
                tracing::debug!(event = %logname(&name), "event before the registration answer skipped");
                continue;
            }
            let message = data
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("no message")
                .to_string();
            if data.get("success").and_then(|s| s.as_bool()) == Some(true) {
                break;
            }
            return Err(SessionError::Registration(message));
        }
        self.registered_at = Some(Instant::now());
        crate::health::keyshade_connected();
        tracing::info!(keyshade = %self.label(), url = %self.url, "registered with keyshade; fetching the snapshot");
        self.follow(sock).await
    }

    fn fetch(&self) -> Fetch {
        let client = self.client.clone();
        let (p, e) = (self.s.project.clone(), self.s.environment.clone());
        Box::pin(async move { client.snapshot(&p, &e).await })
    }

    /// Registered: snapshots and live events until the connection fails.
    async fn follow(
        &mut self,
        sock: &mut Socket,
    ) -> Result<std::convert::Infallible, SessionError> {
        let interval = self.s.snapshot_interval.max(Duration::from_millis(100));
        let mut fetch: Option<Fetch> = Some(self.fetch());
        // Events received while a snapshot is fetched: applied again on top of it.
        let mut during: Vec<Update> = Vec::new();
        let mut next_fetch = Instant::now() + interval;
        let mut retry = SNAPSHOT_RETRY;
        loop {
            tokio::select! {
                event = sock.next_event(NAMESPACE) => {
                    let (name, data) = event?;
                    match name.as_str() {
                        "configuration-updated" => {
                            let update = match Update::parse(&data) {
                                Ok(u) => u,
                                Err(why) => {
                                    tracing::warn!(why, "keyshade sent an update this agent cannot read; the next snapshot has it");
                                    continue;
                                }
                            };
                            tracing::debug!(key = %logname(&update.name), plaintext = update.plaintext, "keyshade update");
                            if fetch.is_some() {
                                during.push(update.clone());
                            }
                            if self.view.is_ready() {
                                let problem = self.view.update(&update, self.s.private_key.as_ref());
                                self.problems(problem.into_iter().collect())?;
                                self.emit();
                            }
                        }
                        "exception" => {
                            let message = data.get("message").and_then(|m| m.as_str()).unwrap_or("no message");
                            tracing::warn!(message = %logname(message), "keyshade reported an exception");
                        }
                        "client-registered" => tracing::debug!("repeated client-registered ignored"),
                        other => tracing::debug!(event = %logname(other), "keyshade event ignored"),
                    }
                }
                result = async { fetch.as_mut().expect("guarded").await }, if fetch.is_some() => {
                    fetch = None;
                    match result {
                        Ok(snap) => {
                            retry = SNAPSHOT_RETRY;
                            next_fetch = Instant::now() + interval;
                            tracing::debug!(secrets = snap.secrets.len(), variables = snap.variables.len(), "keyshade snapshot");
                            let problems = self.view.snapshot(&snap, &during, self.s.private_key.as_ref());
                            during.clear();
                            self.problems(problems)?;
                            self.emit();
                        }
                        Err(e) => {
                            during.clear();
                            next_fetch = Instant::now() + retry;
                            let wait = retry;
                            retry = (retry * 2).min(interval.max(SNAPSHOT_RETRY));
                            if e.is_settings() {
                                tracing::error!(error = %e, retry_in = ?wait, "cannot fetch the keyshade snapshot");
                            } else {
                                tracing::warn!(error = %e, retry_in = ?wait, "cannot fetch the keyshade snapshot");
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_fetch), if fetch.is_none() => {
                    fetch = Some(self.fetch());
                }
            }
        }
    }

    /// Report secrets that cannot be decrypted, by name; fatal under
    /// `quit_on_decryption_failure`.
    fn problems(&self, problems: Vec<Undecryptable>) -> Result<(), SessionError> {
        for p in &problems {
            let name = logname(&p.name);
            let project = &self.s.project;
            if p.no_key {
                tracing::error!(key = %name, "cannot decrypt keyshade secret {name}: no private key for project {project:?} ({}); set private_key or private_key_file in [keyshade] (--keyshade-private-key-file), or add {project:?} to ~/.keyshade/private-keys.json", self.s.private_key_source);
            } else {
                tracing::error!(key = %name, why = %p.why, "cannot decrypt keyshade secret {name} (is the private key from {} the project's?); its last good value stays", self.s.private_key_source);
            }
        }
        match problems.first() {
            Some(p) if self.s.quit_on_decryption_failure => {
                let hint = if p.no_key {
                    format!(
                        "no private key for project {:?} (set private_key or private_key_file, or add it to ~/.keyshade/private-keys.json)",
                        self.s.project
                    )
                } else {
                    p.why.clone()
                };
                Err(SessionError::Fatal(format!(
                    "cannot decrypt keyshade secret {}: {hint}; stopping because quit_on_decryption_failure is set",
                    logname(&p.name)
                )))
            }
            _ => Ok(()),
        }
    }

    /// Hand the state to the agent when it differs from the last one handed over.
    fn emit(&mut self) {
        if !self.view.is_ready() || self.sent.as_ref() == Some(self.view.entries()) {
            return;
        }
        let entries = self.view.entries().clone();
        self.sent = Some(entries.clone());
        let _ = self.updates.send(KeyshadeEvent::State(entries));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_weighed_by_what_can_heal() {
        let token = SessionError::Socket(SioError::Refused {
            status: 401,
            message: "Invalid token".into(),
        });
        assert_eq!(outcome(&token, false), Outcome::Refused);
        let busy = SessionError::Registration("User already connected".into());
        assert_eq!(outcome(&busy, false), Outcome::Failed);
        let down = SessionError::Socket(SioError::Connect("connection refused".into()));
        assert_eq!(outcome(&down, false), Outcome::Unreachable);
        let gone = SessionError::Socket(SioError::Silent(Duration::from_secs(45)));
        assert_eq!(outcome(&gone, false), Outcome::Failed);
        assert_eq!(outcome(&gone, true), Outcome::Stable);
        // A refused registration is retried within seconds, a refused token in minutes.
        let mut b = Backoff::new();
        let busy_waits: Duration = (0..6).map(|_| b.after(outcome(&busy, false), true)).sum();
        let mut b = Backoff::new();
        let token_wait = (0..6).map(|_| b.after(outcome(&token, false), true)).last();
        assert!(busy_waits < Duration::from_secs(7), "{busy_waits:?}");
        assert!(
            token_wait.unwrap() >= Duration::from_secs(60),
            "{token_wait:?}"
        );
    }
}
