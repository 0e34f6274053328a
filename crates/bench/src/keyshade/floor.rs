//! The floor under the event → child figure: the same events read by a bare Socket.IO
//! client in the bench process (tether's own `sio` module: no state, no output, no child).
//! What it measures is the test server's emit path, the loopback and one frame's parse,
//! which every follower pays too.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tether_agent::source::keyshade::sio::{Socket, event_frame, socket_url};

use super::server::Server;
use super::{ENVIRONMENT, PROJECT, WORKSPACE};

const NSP: &str = "/change-notifier";

/// A registered bare client; each `configuration-updated` it reads is stamped. Dropping it
/// closes its connection.
pub struct Bare {
    events: mpsc::Receiver<Instant>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bare {
    pub fn start(server: &Server, token: &str) -> anyhow::Result<Bare> {
        let url = socket_url(&server.url()).map_err(anyhow::Error::msg)?;
        let token = token.to_string();
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let (tx, events) = mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let mut socket = match Socket::connect(&url, &token, None).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let register = json!({"workspaceSlug": WORKSPACE, "projectSlug": PROJECT,
                                      "environmentSlug": ENVIRONMENT});
                if let Err(e) = async {
                    socket.join(NSP).await?;
                    socket
                        .send(event_frame(NSP, "register-client-app", &register))
                        .await
                }
                .await
                {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                loop {
                    let (name, data) = tokio::select! {
                        _ = &mut stopped => break,
                        event = socket.next_event(NSP) => match event {
                            Ok(e) => e,
                            Err(_) => return,
                        },
                    };
                    let at = Instant::now();
                    match name.as_str() {
                        "client-registered" if data["success"] == true => {
                            let _ = ready_tx.send(Ok(()));
                        }
                        "client-registered" => {
                            let _ = ready_tx.send(Err(data["message"].to_string()));
                            return;
                        }
                        "configuration-updated" if tx.send(at).is_err() => return,
                        _ => {}
                    }
                }
                socket.close().await;
            });
        });
        match ready.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => Ok(Bare {
                events,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("the bare client could not register: {e}"),
            Err(_) => bail!("the bare client did not register within 20 s"),
        }
    }

    /// When the next event arrived.
    pub fn wait(&self, limit: Duration) -> anyhow::Result<Instant> {
        self.events
            .recv_timeout(limit)
            .context("the bare client read no event in time")
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
