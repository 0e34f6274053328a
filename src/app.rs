//! The verbs as `main` calls them: build the config (exit 64 on any problem), start
//! logging, run on a single-threaded runtime, and return the exit code.

use tether_agent::config::{self, Mode};
use tether_core::settings::{ConfigError, Problem};

use crate::cli::{Cli, Command};

/// Exit code for bad usage or configuration (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
#[cfg(feature = "node")]
/// Exit code of a node whose store was there and is now empty or damaged (EX_DATAERR):
/// restarting will not help; an operator restores a backup or passes `--reset-store`.
pub const EXIT_STORE_DAMAGED: i32 = 65;

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    // Before any thread or child: systemd's variables are read once, and kept from children.
    tether_core::notify::init();
    tether_agent::health::set_build(if cfg!(feature = "node") {
        "full"
    } else {
        "agent"
    });
    let result = match cli.command {
        Command::Run(args) => config::for_run(&args),
        Command::Watch(args) => config::for_watch(&args),
        Command::Check(args) => return check(&args),
        Command::Completions(args) => return crate::docs::completions(args.shell),
        Command::Man => return crate::docs::man(),
        #[cfg(feature = "node")]
        Command::Serve(args) => return serve(&args),
        #[cfg(feature = "node")]
        Command::Put(args) => return client(tether_client::put(&args)),
        #[cfg(feature = "node")]
        Command::Get(args) => return client(tether_client::get(&args)),
        #[cfg(feature = "node")]
        Command::Rm(args) => return client(tether_client::rm(&args)),
        #[cfg(feature = "node")]
        Command::Status(args) => return client(tether_client::status(&args)),
        #[cfg(feature = "node")]
        Command::Policy(args) => return client(tether_client::policy(&args)),
        #[cfg(feature = "node")]
        Command::Rollout(args) => return client(tether_client::rollout(&args)),
    };
    let cfg = match result {
        Ok(cfg) => cfg,
        Err(e) => return usage(e),
    };
    let log = crate::logging::init(cfg.log_level.as_deref(), cfg.log_format);
    raise_fd_limit();
    fix_mmap_threshold();
    match block_on(tether_agent::run(cfg, log)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            let code = e.exit_code();
            report_as(e.into(), code)
        }
        Err(e) => report(e),
    }
}

/// A node needs one descriptor per agent: use all the hard limit allows (children get the
/// soft limit back).
fn raise_fd_limit() {
    match tether_core::fdlimit::raise() {
        Ok(Some(r)) => tracing::debug!(from = r.from, to = r.to, "raised the open-file limit"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// An agent runs for months while the same few large buffers (a snapshot frame, a rendered
/// file, the saved state) come and go. Each time glibc frees such a buffer it raises its
/// mmap threshold, after which they are carved from the heap, which then keeps its largest
/// mix of them for good: 1.5 to 6.4 MiB of heap for the same 100 changes of 1,000 entries,
/// depending on timing. With the threshold fixed, buffers of 128 KiB and more are mapped
/// and given back when freed, and the heap stays at 1.4 MiB.
fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no other thread runs yet.
    #[allow(unsafe_code)]
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(feature = "node")]
fn finish(r: anyhow::Result<anyhow::Result<i32>>) -> i32 {
    match r.and_then(|inner| inner) {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

#[cfg(feature = "node")]
fn client(r: Result<i32, tether_client::ClientError>) -> i32 {
    match r {
        Ok(code) => code,
        Err(tether_client::ClientError::Usage(m)) => {
            eprintln!("tether: {m}");
            EXIT_USAGE
        }
        Err(e) => report(e.into()),
    }
}

#[cfg(feature = "node")]
fn serve(args: &tether_node::args::ServeArgs) -> i32 {
    if let Some(tether_node::args::ServeAction::HashToken) = args.action {
        let mut token = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut token) {
            return report(e.into());
        }
        if token.trim().is_empty() {
            eprintln!(
                "tether: give the token on stdin, e.g. `printf %s \"$TOKEN\" | tether serve hash-token`"
            );
            return EXIT_USAGE;
        }
        println!("{}", tether_node::auth::hash_token(&token));
        return 0;
    }
    let cfg = match tether_node::config::from_args(args) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let log = crate::logging::init(cfg.log_level.as_deref(), cfg.log_format);
    raise_fd_limit();
    // Nodes use every core: fan-out to thousands of sockets is parallel work.
    let result = block_on_multi(async {
        let reload = tether_node::reload::Reload {
            args: args.clone(),
            requests: reload_signal(),
        };
        tether_node::run(cfg, log, shutdown_signal(), Some(reload)).await
    });
    if let Ok(Err(e @ tether_node::ServeError::StoreDamaged(_))) = &result {
        eprintln!("tether: {e}");
        return EXIT_STORE_DAMAGED;
    }
    finish(result.map(|r| r.map(|()| 0).map_err(Into::into)))
}

/// A reload request per SIGHUP (`systemctl reload`), which no longer ends the node.
/// Requests that come while one waits are merged into it.
#[cfg(feature = "node")]
fn reload_signal() -> tokio::sync::mpsc::Receiver<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(())
                    {
                        return;
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the node does not reload on it")
        }
    }
    rx
}

/// Resolves on the first TERM or INT.
#[cfg(feature = "node")]
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn check(args: &tether_agent::args::CheckArgs) -> i32 {
    let mode = match args.mode.as_str() {
        "run" => Mode::Run,
        "watch" => Mode::Watch,
        "serve" => return check_serve(&args.config),
        other => {
            return usage(ConfigError(vec![Problem {
                key: "--mode".into(),
                message: format!("{other:?} is not run, watch or serve"),
            }]));
        }
    };
    let raw = match config::read_file(&args.config) {
        Ok(raw) => raw,
        Err(e) => return usage(e),
    };
    match config::validate(&raw, mode) {
        Ok(cfg) => {
            for w in tether_agent::unknown_template_names(&cfg) {
                eprintln!("warning: {w}");
            }
            print!("{}", cfg.to_toml());
            0
        }
        Err(e) => usage(e),
    }
}

/// `check --mode serve`: a node's config, validated as `tether serve --config FILE` would
/// (its flags and `TETHER_*` variables left out), printed with no secret.
#[cfg(feature = "node")]
fn check_serve(path: &std::path::Path) -> i32 {
    match tether_node::check::check(path) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => usage(e),
    }
}

#[cfg(not(feature = "node"))]
fn check_serve(_: &std::path::Path) -> i32 {
    usage(ConfigError::one(
        "--mode",
        "this is the agent build, which has no node: check a node's config with the full \
         build (`tether check --mode serve` where `tether serve` runs)",
    ))
}

fn usage(e: ConfigError) -> i32 {
    eprint!("tether: {e}");
    EXIT_USAGE
}

fn report(e: anyhow::Error) -> i32 {
    report_as(e, 1)
}

/// Print the error chain and return `code`.
fn report_as(e: anyhow::Error, code: i32) -> i32 {
    // The whole chain once: most error types already print their cause in their message.
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    eprintln!("tether: {text}");
    code
}

#[cfg(feature = "node")]
fn block_on_multi<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}

fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(f))
}
