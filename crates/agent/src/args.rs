//! The agent's flags (clap): `run`, `watch` and `check`. Flags are raw strings here;
//! [`crate::config`] validates them together with the config file so every problem is
//! reported at once.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;
use clap::builder::BoolishValueParser;
use tether_core::settings::LogArgs;

#[derive(Args, Debug, Default, Clone)]
pub struct AgentArgs {
    /// TOML config file; flags and TETHER_* variables override its values.
    #[arg(long, short = 'c', value_name = "FILE", env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// A source of values: file:PATH (dotenv or JSON by extension), dotenv:PATH, json:PATH,
    /// dir:PATH (one file per key). Repeatable; later sources override earlier ones key by key.
    #[arg(
        long = "source",
        short = 's',
        value_name = "KIND:PATH",
        env = "TETHER_SOURCE",
        value_delimiter = ','
    )]
    pub sources: Vec<String>,
    /// Write the values to PATH (a bare file name goes under the tmpfs runtime dir).
    #[arg(long, short = 'o', value_name = "PATH", env = "TETHER_OUTPUT")]
    pub output: Option<String>,
    /// Format of --output: dotenv, json, shell or dir.
    #[arg(long, value_name = "FORMAT", env = "TETHER_FORMAT")]
    pub format: Option<String>,
    /// File mode of --output, octal (default 0600).
    #[arg(long, value_name = "MODE", env = "TETHER_MODE")]
    pub mode: Option<String>,
    /// Owner of --output: USER[:GROUP] or UID[:GID].
    #[arg(long, value_name = "USER[:GROUP]", env = "TETHER_OWNER")]
    pub owner: Option<String>,
    /// Render template SRC to DEST, doing ACTION on change (restart, signal[:SIG], exec:CMD,
    /// none; default --on-change). Repeatable; adds to the config's outputs.
    #[arg(long = "template", value_name = "SRC:DEST[:ACTION]")]
    pub templates: Vec<String>,
    /// What a change does: restart, signal[:SIG], exec:CMD or none.
    #[arg(long, value_name = "ACTION", env = "TETHER_ON_CHANGE")]
    pub on_change: Option<String>,
    /// Alone: inject values into the child's environment (the default in run). With a
    /// NAME: the environment to follow on the --server nodes.
    #[arg(long = "env", value_name = "NAME", num_args = 0..=1, env = "TETHER_ENV")]
    pub env: Option<Option<String>>,
    /// Do not inject values into the child's environment.
    #[arg(long = "no-env")]
    pub no_env: bool,
    /// A tether node (http(s):// or ws(s):// base URL); repeatable, any node will do.
    #[arg(
        long = "server",
        value_name = "URL",
        env = "TETHER_SERVER",
        value_delimiter = ','
    )]
    pub servers: Vec<String>,
    /// File holding the bearer token for the nodes (else TETHER_TOKEN).
    #[arg(long, value_name = "PATH", env = "TETHER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signs the nodes' certificates.
    #[arg(long, value_name = "PATH", env = "TETHER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Where the last applied state is kept (0600), to resume and to start without a node.
    #[arg(long, value_name = "DIR", env = "TETHER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Start from the saved state while no node is reachable (reported as degraded).
    #[arg(long, env = "TETHER_START_WITHOUT_SERVER")]
    pub start_without_server: bool,
    /// Signal that asks the child to stop (default TERM).
    #[arg(long, value_name = "SIG", env = "TETHER_STOP_SIGNAL")]
    pub stop_signal: Option<String>,
    /// Grace period after the stop signal before SIGKILL (default 10s).
    #[arg(long, value_name = "DURATION", env = "TETHER_STOP_TIMEOUT")]
    pub stop_timeout: Option<String>,
    /// Quiet window: act once no change arrived for this long (default 100ms).
    #[arg(long, value_name = "DURATION", env = "TETHER_DEBOUNCE")]
    pub debounce: Option<String>,
    /// Act at most this long after the first change of a burst (default 2s).
    #[arg(long, value_name = "DURATION", env = "TETHER_MAX_WAIT")]
    pub max_wait: Option<String>,
    /// Random extra delay up to this long before acting, to spread a fleet (default 0).
    #[arg(long, value_name = "DURATION", env = "TETHER_SPLAY")]
    pub splay: Option<String>,
    /// Restart the child when it exits on its own: never, on-failure or always.
    #[arg(long, value_name = "POLICY", env = "TETHER_RESTART_ON_EXIT")]
    pub restart_on_exit: Option<String>,
    /// Leave output files in place on exit.
    #[arg(long, env = "TETHER_KEEP_OUTPUTS")]
    pub keep_outputs: bool,
    /// Signals forwarded to the child's process group (comma list).
    #[arg(
        long,
        value_name = "SIGS",
        env = "TETHER_FORWARD_SIGNALS",
        value_delimiter = ','
    )]
    pub forward_signals: Vec<String>,
    /// A reload signal for a child younger than this is held until it is this old: it may
    /// not have installed its handler yet (default 1s; 0 to signal at once).
    #[arg(long, value_name = "DURATION", env = "TETHER_RELOAD_GRACE")]
    pub reload_grace: Option<String>,
    /// What SIGHUP to tether does: forward (to the child; the default in run) or reload
    /// (tether re-reads its own configuration; always so in watch).
    #[arg(long, value_name = "WHAT", env = "TETHER_SIGHUP")]
    pub sighup: Option<String>,
    /// Timeout of an exec hook (default 30s).
    #[arg(long, value_name = "DURATION", env = "TETHER_EXEC_TIMEOUT")]
    pub exec_timeout: Option<String>,
    /// Serve /healthz, /readyz and /metrics on ADDR (127.0.0.1:9464) or unix:PATH (off by
    /// default).
    #[arg(long, value_name = "ADDR", env = "TETHER_LISTEN_METRICS")]
    pub listen_metrics: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub once: OnceArgs,
    #[command(flatten)]
    pub keyshade: KeyshadeArgs,
    #[command(flatten)]
    pub health: HealthArgs,
}

/// Health after a change (`docs/rollouts.md`): at most one check; the bake and its timings.
#[derive(Args, Debug, Default, Clone)]
#[command(next_help_heading = "health after a change")]
pub struct HealthArgs {
    /// A command that exits 0 while the app is healthy (run without a shell, without
    /// tether's credentials; killed after its attempt's timeout).
    #[arg(long, value_name = "CMD", env = "TETHER_HEALTH_CMD")]
    pub health_cmd: Option<String>,
    /// An http:// or https:// URL whose GET answers 2xx while the app is healthy.
    #[arg(long, value_name = "URL", env = "TETHER_HEALTH_HTTP")]
    pub health_http: Option<String>,
    /// HOST:PORT that accepts a TCP connection while the app is healthy.
    #[arg(long, value_name = "ADDR", env = "TETHER_HEALTH_TCP")]
    pub health_tcp: Option<String>,
    /// How long the app must stay healthy after a change (default 10s in run, 0 in watch).
    #[arg(long, value_name = "DURATION", env = "TETHER_BAKE")]
    pub bake: Option<String>,
    /// How often the check runs during a bake (default 1s).
    #[arg(long, value_name = "DURATION", env = "TETHER_HEALTH_INTERVAL")]
    pub health_interval: Option<String>,
    /// How long the check may take to pass first after a change (default 60s); one attempt
    /// takes at most 5s or this, the shorter.
    #[arg(long, value_name = "DURATION", env = "TETHER_HEALTH_TIMEOUT")]
    pub health_timeout: Option<String>,
    /// Report a failed change but keep its values (no rollback).
    #[arg(long, env = "TETHER_NO_ROLLBACK", value_parser = BoolishValueParser::new())]
    pub no_rollback: bool,
}

/// The keyshade source (`[keyshade]` in the config file). Any of these turns it on; what
/// they leave unset comes from the config file, then from keyshade's own files
/// (`./keyshade.json`, `~/.keyshade/profiles.json`, `~/.keyshade/private-keys.json`).
#[derive(Args, Debug, Default, Clone)]
#[command(next_help_heading = "keyshade source")]
pub struct KeyshadeArgs {
    /// Base URL of the keyshade API (http(s)://; default that of the profile, else
    /// https://api.keyshade.xyz).
    #[arg(
        long = "keyshade-url",
        id = "keyshade-url",
        value_name = "URL",
        env = "TETHER_KEYSHADE_URL"
    )]
    pub url: Option<String>,
    /// Workspace slug.
    #[arg(
        long = "keyshade-workspace",
        id = "keyshade-workspace",
        value_name = "SLUG",
        env = "TETHER_KEYSHADE_WORKSPACE"
    )]
    pub workspace: Option<String>,
    /// Project slug.
    #[arg(
        long = "keyshade-project",
        id = "keyshade-project",
        value_name = "SLUG",
        env = "TETHER_KEYSHADE_PROJECT"
    )]
    pub project: Option<String>,
    /// Environment slug.
    #[arg(
        long = "keyshade-environment",
        id = "keyshade-environment",
        value_name = "SLUG",
        env = "TETHER_KEYSHADE_ENVIRONMENT"
    )]
    pub environment: Option<String>,
    /// File holding the API token (`ks.pat.…`) (else TETHER_KEYSHADE_TOKEN, else the profile).
    #[arg(
        long = "keyshade-token-file",
        id = "keyshade-token-file",
        value_name = "PATH",
        env = "TETHER_KEYSHADE_TOKEN_FILE"
    )]
    pub token_file: Option<PathBuf>,
    /// File holding the project's private key, 64 hex characters (else
    /// TETHER_KEYSHADE_PRIVATE_KEY, else ~/.keyshade/private-keys.json).
    #[arg(
        long = "keyshade-private-key-file",
        id = "keyshade-private-key-file",
        value_name = "PATH",
        env = "TETHER_KEYSHADE_PRIVATE_KEY_FILE"
    )]
    pub private_key_file: Option<PathBuf>,
    /// Profile of ~/.keyshade/profiles.json to take the token and URL from (default: the
    /// file's default profile).
    #[arg(
        long = "keyshade-profile",
        id = "keyshade-profile",
        value_name = "NAME",
        env = "TETHER_KEYSHADE_PROFILE"
    )]
    pub profile: Option<String>,
    /// PEM file of the CA that signs the keyshade API's certificate (default: the system's).
    #[arg(
        long = "keyshade-ca-file",
        id = "keyshade-ca-file",
        value_name = "PATH",
        env = "TETHER_KEYSHADE_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
}

impl KeyshadeArgs {
    /// Whether any keyshade flag (or its variable) was given.
    pub fn any(&self) -> bool {
        self.url.is_some()
            || self.workspace.is_some()
            || self.project.is_some()
            || self.environment.is_some()
            || self.token_file.is_some()
            || self.private_key_file.is_some()
            || self.profile.is_some()
            || self.ca_file.is_some()
    }
}

/// One-shot and dry run (`crate::once`). Their variables take 1/0, true/false, yes/no, on/off.
#[derive(Args, Debug, Default, Clone)]
pub struct OnceArgs {
    /// Render every output once and exit 0 (init containers, CI); `run` starts no child.
    /// Outputs are kept. Exit 66: a source unreadable, 69: no node in time, 73: an output
    /// not written.
    #[arg(long, env = "TETHER_ONCE", value_parser = BoolishValueParser::new())]
    pub once: bool,
    /// With --once or --dry-run: how long to wait for the first state from a node
    /// (default 30s).
    #[arg(long, value_name = "DURATION", env = "TETHER_ONCE_TIMEOUT")]
    pub once_timeout: Option<String>,
    /// Print what would be written to each output (secret values masked) and which action
    /// would fire; write, signal, start, save and acknowledge nothing. Implies --once.
    #[arg(long, env = "TETHER_DRY_RUN", value_parser = BoolishValueParser::new())]
    pub dry_run: bool,
    /// With --dry-run: show the values of file: and dir: sources (masked by default, since
    /// a local file cannot say which are secret); node values marked secret stay masked.
    #[arg(long, env = "TETHER_SHOW_FILE_VALUES", value_parser = BoolishValueParser::new())]
    pub show_file_values: bool,
}

#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// The command to supervise (executed directly, no shell).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Signal the process whose pid is in this file.
    #[arg(long, value_name = "PATH", env = "TETHER_SIGNAL_PIDFILE")]
    pub signal_pidfile: Option<PathBuf>,
    /// Signal every process with this name (found through /proc).
    #[arg(long, value_name = "NAME", env = "TETHER_SIGNAL_PROCESS")]
    pub signal_process: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The config file to validate.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Validate for this mode: run, watch, or serve (a node's config; full build only).
    #[arg(long, default_value = "run")]
    pub mode: String,
}
