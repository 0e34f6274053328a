//! One-shot (`--once`) and dry run (`--dry-run`) of `run` and `watch`: render every output
//! once and exit, for init containers and CI; or print what would be written and which
//! action would fire, and touch nothing.
//!
//! `--once` reads the local sources, waits (at most `--once-timeout`) for the first state of
//! the network source, writes every output, acknowledges the position to the node, keeps
//! the saved state as a running agent does, and exits; the outputs stay (there is no one to
//! clean them up for). `run` starts no child. `--dry-run` implies `--once`; it writes no
//! output and no saved state, sends no acknowledgement (its hello names it `dry-run`),
//! signals nothing and starts nothing.
//!
//! Exit codes (sysexits): 0 rendered (also when degraded: started from the saved state by
//! `--start-without-server`), 64 bad usage, 66 a source cannot be read, 69 no node
//! answered (or keyshade gave no state) in time, 73 an output cannot be written, 128+N
//! stopped by signal N.

mod dry;

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::args::OnceArgs;
use crate::config::{Config, Mode};
use crate::output::{Output, OutputError};
use crate::run::AgentError;
use crate::source::keyshade::{self, KeyshadeEvent};
use crate::source::net::{self, NetSource, NetSpec, NetUpdate};
use crate::source::{self, SourceError};
use crate::state::Layers;
use crate::tasks::Tasks;
use tether_core::protocol::Position;
use tether_core::settings::{Problem, parse_duration};

/// A source cannot be read or parsed (EX_NOINPUT).
pub const EXIT_NOINPUT: i32 = 66;
/// No node answered within `--once-timeout` (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// An output cannot be written (EX_CANTCREAT).
pub const EXIT_CANTCREAT: i32 = 73;

/// How long a one-shot waits for the first state from a node by default: long enough for
/// a node starting beside it (pods start together), short enough for an init container.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot waits for its acknowledgement to go out, at most.
const ACK_DEADLINE: Duration = Duration::from_secs(5);

/// `--once` / `--dry-run` as validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnceSpec {
    pub timeout: Duration,
    pub dry_run: bool,
    pub show_file_values: bool,
}

/// Validate the one-shot flags: `None` when neither `--once` nor `--dry-run` is given.
pub fn spec(args: &OnceArgs) -> Result<Option<OnceSpec>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut push = |key: &str, message: &str| {
        problems.push(Problem {
            key: key.into(),
            message: message.into(),
        })
    };
    let once = args.once || args.dry_run;
    if !args.dry_run && args.show_file_values {
        push("--show-file-values", "applies only with --dry-run");
    }
    let timeout = match &args.once_timeout {
        None => DEFAULT_TIMEOUT,
        Some(_) if !once => {
            push("--once-timeout", "applies only with --once or --dry-run");
            DEFAULT_TIMEOUT
        }
        Some(s) => match parse_duration(s) {
            Ok(d) if d.is_zero() => {
                push("--once-timeout", "must be more than 0");
                DEFAULT_TIMEOUT
            }
            Ok(d) => d,
            Err(e) => {
                push("--once-timeout", &e);
                DEFAULT_TIMEOUT
            }
        },
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(once.then_some(OnceSpec {
        timeout,
        dry_run: args.dry_run,
        show_file_values: args.show_file_values,
    }))
}

/// What a one-shot failed on; each names the source, the nodes or the outputs.
#[derive(Debug, thiserror::Error)]
pub enum OnceError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("no node answered within {}: {why}", humantime::format_duration(*.timeout))]
    NoNode { timeout: Duration, why: String },
    #[error("no state from keyshade within {} (the log says why)", humantime::format_duration(*.0))]
    NoKeyshade(Duration),
    #[error("{}", list(.0))]
    Outputs(Vec<OutputError>),
}

fn list(errors: &[OutputError]) -> String {
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("not written: {}", all.join("; "))
}

impl OnceError {
    pub fn exit_code(&self) -> i32 {
        match self {
            OnceError::Source(_) => EXIT_NOINPUT,
            OnceError::NoNode { .. } | OnceError::NoKeyshade(_) => EXIT_UNAVAILABLE,
            OnceError::Outputs(_) => EXIT_CANTCREAT,
        }
    }
}

/// Render once (or report, in a dry run) and return the exit code.
pub(crate) async fn run(cfg: Config, spec: OnceSpec, tasks: &Tasks) -> Result<i32, AgentError> {
    let mut layers = Layers::new(keyshade::layer(&cfg) + usize::from(cfg.keyshade.is_some()));
    for (i, s) in cfg.sources.iter().enumerate() {
        layers.set(i, source::load(s).map_err(OnceError::from)?);
    }
    let mut followed = None;
    // Names whose value came from a node or keyshade: their secrets are never shown.
    let mut remote = BTreeSet::new();
    if let Some(ns) = &cfg.net {
        let mode = if spec.dry_run {
            net::Mode::DryRun
        } else {
            net::Mode::Follow
        };
        let mut n = net::start_as(ns.clone(), tasks, mode).map_err(AgentError::Net)?;
        let first = match first_state(&mut n, ns, spec.timeout).await? {
            Ok(first) => first,
            Err(code) => return Ok(code),
        };
        if first.degraded {
            tracing::warn!(position = %first.position, "DEGRADED: no node answered; rendering the saved state");
        }
        let net_keys: BTreeSet<String> = first.entries.keys().cloned().collect();
        remote.extend(net_keys.iter().cloned());
        layers.set(cfg.sources.len(), first.entries);
        followed = Some((n, first.position, first.degraded, net_keys));
    }
    if let Some(ks) = &cfg.keyshade {
        let mut k = keyshade::start_spec(ks, tasks).map_err(AgentError::Keyshade)?;
        tracing::info!(timeout = %humantime::format_duration(spec.timeout), "waiting for the first state from keyshade");
        match tokio::time::timeout(spec.timeout, k.updates.recv()).await {
            Ok(Some(KeyshadeEvent::State(e))) => {
                remote.extend(e.keys().cloned());
                layers.set(keyshade::layer(&cfg), e)
            }
            Ok(Some(KeyshadeEvent::Fatal(m))) => return Err(AgentError::Keyshade(m)),
            Ok(None) => return Err(AgentError::Keyshade("the follower stopped".into())),
            Err(_) => return Err(OnceError::NoKeyshade(spec.timeout).into()),
        };
    }
    let merged = layers.merged();

    if spec.dry_run {
        let from_net = followed.as_ref().map(|(_, p, d, k)| dry::NetState {
            position: *p,
            degraded: *d,
            keys: k,
        });
        print!(
            "{}",
            dry::report(&cfg, &merged, from_net, &remote, spec.show_file_values)
        );
        return Ok(0);
    }

    // Every output rendered and checked first; then all land, or none (`atomic_outputs`).
    let mut failures = Vec::new();
    let mut outputs: Vec<Output> = cfg.outputs.iter().cloned().map(Output::new).collect();
    let mut staged = Vec::new();
    for (i, o) in outputs.iter_mut().enumerate() {
        match o.prepare(&merged).await {
            Ok(Some(p)) => staged.push((i, p)),
            Ok(None) => {
                tracing::info!(output = %o.spec.path.display(), written = false, "output rendered")
            }
            Err(e) => {
                tracing::error!(error = %e, "output not written");
                failures.push(e);
            }
        }
    }
    if failures.is_empty() || !cfg.atomic_outputs {
        for (i, p) in staged {
            let o = &mut outputs[i];
            match o.commit(p) {
                Ok(()) => {
                    tracing::info!(output = %o.spec.path.display(), written = true, "output rendered")
                }
                Err(e) => {
                    tracing::error!(error = %e, "output not written");
                    failures.push(e);
                }
            }
        }
    } else if !staged.is_empty() {
        tracing::error!(
            outputs = staged.len(),
            "an output failed: no output written (atomic_outputs)"
        );
    }
    if cfg.mode == Mode::Run {
        tracing::info!("no child started (--once)");
    }
    if let Some((n, position, degraded, _)) = followed.as_mut() {
        if !*degraded {
            let result = match failures.is_empty() {
                true => Ok(()),
                false => Err(list(&failures)),
            };
            acknowledge(n, *position, result).await;
        }
    }
    if !failures.is_empty() {
        return Err(OnceError::Outputs(failures).into());
    }
    tracing::info!(
        entries = merged.len(),
        outputs = cfg.outputs.len(),
        "rendered once; exiting (outputs are kept)"
    );
    Ok(0)
}

/// The first state of the network source, within `timeout`; `Err(code)` when TERM or INT
/// came first.
async fn first_state(
    n: &mut NetSource,
    spec: &NetSpec,
    timeout: Duration,
) -> Result<Result<NetUpdate, i32>, AgentError> {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => return Err(AgentError::Signals(e)),
    };
    tracing::info!(timeout = %humantime::format_duration(timeout), "waiting for the first state from a node");
    tokio::select! {
        u = n.updates.recv() => match u {
            Some(u) => Ok(Ok(u)),
            None => Err(AgentError::Net("the network source stopped".into())),
        },
        _ = tokio::time::sleep(timeout) => {
            let last = n.problem.borrow().clone();
            Err(OnceError::NoNode { timeout, why: no_node_reason(spec, last, n.has_saved) }.into())
        }
        _ = term.recv() => Ok(Err(128 + nix::libc::SIGTERM)),
        _ = int.recv() => Ok(Err(128 + nix::libc::SIGINT)),
    }
}

/// Why no state came: the nodes, the last failure, and why the saved state was not used.
fn no_node_reason(spec: &NetSpec, last: Option<String>, has_saved: bool) -> String {
    let mut why = match last {
        Some(last) => format!("last failure: {last}"),
        None => format!(
            "no answer from {} (connecting took the whole time)",
            spec.servers.join(", ")
        ),
    };
    if spec.start_without_server {
        why.push_str(if has_saved {
            "; the saved state was not reached in time (it is used once every node has failed once)"
        } else {
            "; --start-without-server: no saved state of this environment to start from"
        });
    }
    why
}

/// Acknowledge `position` and wait (a little) for the acknowledgement to go out.
async fn acknowledge(n: &mut NetSource, position: Position, result: Result<(), String>) {
    n.ack(position, result);
    let sent = tokio::time::timeout(ACK_DEADLINE, n.acked.wait_for(|a| *a == Some(position))).await;
    if !matches!(sent, Ok(Ok(_))) {
        tracing::warn!(%position, "the acknowledgement did not reach a node in time; rollout status will not show it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(once: bool, dry: bool, timeout: Option<&str>, show: bool) -> OnceArgs {
        OnceArgs {
            once,
            once_timeout: timeout.map(str::to_owned),
            dry_run: dry,
            show_file_values: show,
        }
    }

    #[test]
    fn flags_validate_into_a_spec() {
        assert_eq!(spec(&args(false, false, None, false)), Ok(None));
        let once = spec(&args(true, false, Some("5s"), false))
            .unwrap()
            .unwrap();
        assert_eq!(once.timeout, Duration::from_secs(5));
        assert!(!once.dry_run);
        let dry = spec(&args(false, true, None, true)).unwrap().unwrap();
        assert!(dry.dry_run && dry.show_file_values, "dry run implies once");
        assert_eq!(dry.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn misplaced_or_bad_flags_are_named() {
        let keys = |a| {
            spec(&a)
                .unwrap_err()
                .into_iter()
                .map(|p| p.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(args(true, false, None, true)), ["--show-file-values"]);
        assert_eq!(
            keys(args(false, false, Some("5s"), false)),
            ["--once-timeout"]
        );
        assert_eq!(
            keys(args(true, false, Some("0"), false)),
            ["--once-timeout"]
        );
        assert_eq!(
            keys(args(true, false, Some("soon"), false)),
            ["--once-timeout"]
        );
    }

    #[test]
    fn exit_codes_follow_sysexits() {
        let e = OnceError::NoNode {
            timeout: Duration::from_secs(30),
            why: "x".into(),
        };
        assert_eq!(e.exit_code(), 69);
        assert!(
            e.to_string().starts_with("no node answered within 30s"),
            "{e}"
        );
        assert_eq!(OnceError::Outputs(vec![]).exit_code(), 73);
    }

    #[test]
    fn no_node_reason_says_why_the_saved_state_was_not_used() {
        let spec = NetSpec {
            servers: vec!["http://a:1".into(), "http://b:2".into()],
            env: "prod".into(),
            token: None,
            token_file: None,
            token_source: String::new(),
            ca_file: None,
            state_dir: None,
            start_without_server: true,
        };
        let why = no_node_reason(&spec, Some("ws://a:1/v1/ws: refused".into()), false);
        assert!(why.contains("ws://a:1/v1/ws: refused"), "{why}");
        assert!(why.contains("no saved state"), "{why}");
        let why = no_node_reason(&spec, None, true);
        assert!(why.contains("http://a:1, http://b:2"), "{why}");
        assert!(why.contains("every node has failed once"), "{why}");
    }
}
