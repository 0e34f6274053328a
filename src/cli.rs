//! Command-line definitions (clap). Flags are raw strings here; `config` validates them
//! together with the config file so every problem is reported at once.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tether",
    version,
    about = "Keep a running program in step with live configuration",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Supervise CMD: render values to files and/or its environment, signal or restart it on change.
    Run(RunArgs),
    /// Sidecar: render values to files and signal another process (pidfile or name) or run a hook.
    Watch(WatchArgs),
    /// Validate a config file; print every problem with its key, or the effective config.
    Check(CheckArgs),
    /// Measure change-to-signal latency, peak memory and idle CPU; prints figures.
    Bench(BenchArgs),
    /// A node of the change-notification cluster: HTTP API and WebSocket for agents.
    Serve(ServeArgs),
    /// Set entries in an environment, as one atomic change set.
    Put(PutArgs),
    /// Print an environment (or one entry's value).
    Get(GetArgs),
    /// Delete entries from an environment, as one atomic change set.
    Rm(RmArgs),
    /// Rollout status: how many agents are on which version.
    Status(StatusArgs),
    /// Internal: the child process that `tether bench` and the tests supervise.
    #[command(hide = true, name = "bench-child")]
    BenchChild(BenchChildArgs),
    /// Internal: the bare node of `tether bench agents`' floor figure.
    #[command(hide = true, name = "bench-bare-node")]
    BenchBareNode(crate::loadgen::BareNodeArgs),
}

#[derive(Args, Debug, Default, Clone)]
pub struct LogArgs {
    /// Log level or filter (error, warn, info, debug, trace); falls back to TETHER_LOG.
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT", env = "TETHER_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
}

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
    /// Timeout of an exec hook (default 30s).
    #[arg(long, value_name = "DURATION", env = "TETHER_EXEC_TIMEOUT")]
    pub exec_timeout: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
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
    /// Validate for this mode: run or watch.
    #[arg(long, default_value = "run")]
    pub mode: String,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Other benchmarks (default: the local agent).
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    /// Changes to time.
    #[arg(long, default_value_t = 1000)]
    pub changes: usize,
    /// Entries in the source file.
    #[arg(long, default_value_t = 1000)]
    pub entries: usize,
    /// Seconds of idle time to measure CPU over.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Where the bench creates its scratch dir `tether-bench-PID` (default /dev/shm, a tmpfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BenchMode {
    /// Load a node with light protocol clients: memory per connection, fan-out time,
    /// put → signal latency.
    Agents(crate::loadgen::AgentsBenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BenchChildArgs {
    /// Append one line per received signal (`SIGNAME`) to this file; write the env at start.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Write the environment (KEY=VALUE lines) to this file at start.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Ignore SIGTERM (for grace-period tests).
    #[arg(long)]
    pub ignore_term: bool,
    /// Exit with this code after this many milliseconds.
    #[arg(long, num_args = 2, value_names = ["MS", "CODE"])]
    pub exit_after: Vec<u64>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub action: Option<ServeAction>,
    /// TOML config file of the node (tokens, TLS...); flags override it.
    #[arg(long, short = 'c', value_name = "FILE", env = "TETHER_SERVE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7070).
    #[arg(long, value_name = "ADDR", env = "TETHER_LISTEN")]
    pub listen: Option<String>,
    /// Directory of the embedded store (default ./tether-data).
    #[arg(long, value_name = "DIR", env = "TETHER_DATA")]
    pub data: Option<PathBuf>,
    /// This node's name in status and logs (default HOSTNAME-PID).
    #[arg(long, value_name = "NAME", env = "TETHER_NODE_ID")]
    pub node_id: Option<String>,
    /// Change sets kept per environment for catch-up (default 1000).
    #[arg(long, value_name = "N", env = "TETHER_HISTORY")]
    pub history: Option<u64>,
    /// Heartbeat interval to agents (default 15s).
    #[arg(long, value_name = "DURATION", env = "TETHER_HEARTBEAT")]
    pub heartbeat: Option<String>,
    /// Largest frame accepted from an agent, in bytes (default 1048576).
    #[arg(long, value_name = "BYTES", env = "TETHER_MAX_FRAME")]
    pub max_frame: Option<usize>,
    /// Cluster mode: share this Redis (`redis://[:password@]host:port/db`, `rediss://` for TLS)
    /// as the store and the bus with the other nodes.
    #[arg(long, value_name = "URL", env = "TETHER_REDIS", hide_env_values = true)]
    pub redis: Option<crate::server::config::RedisUrl>,
    /// How often a cluster node compares its positions with Redis (default 10s).
    #[arg(long, value_name = "DURATION", env = "TETHER_REPAIR_INTERVAL")]
    pub repair_interval: Option<String>,
    /// Longest a request (headers and body) may take to arrive before its connection is
    /// closed (default 30s).
    #[arg(long, value_name = "DURATION", env = "TETHER_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Most connections at once on which no request has passed the token check yet; past
    /// it new connections are closed on accept (default 1024).
    #[arg(long, value_name = "N", env = "TETHER_MAX_UNAUTHENTICATED")]
    pub max_unauthenticated: Option<usize>,
    /// Ask for a token (any role) on /metrics, which then shows only the environments the
    /// token covers.
    #[arg(long, env = "TETHER_METRICS_REQUIRE_TOKEN")]
    pub metrics_require_token: bool,
    /// When the embedded store is found empty or damaged (the node refuses to start on it,
    /// exit 65): move its files aside and start with what can still be read from them.
    /// Remove the flag once the node has started. Cluster mode: Redis may lose its data
    /// (no persistence); environments it lost start again with the next write.
    #[arg(long)]
    pub reset_store: bool,
    /// PEM certificate chain for https/wss.
    #[arg(long, value_name = "PATH", env = "TETHER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for https/wss.
    #[arg(long, value_name = "PATH", env = "TETHER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ServeAction {
    /// Print the `sha256:…` hash of a token (read from stdin) for the server config.
    HashToken,
}

/// How admin verbs reach a node.
#[derive(Args, Debug, Default, Clone)]
pub struct ClientArgs {
    /// Node base URL (http(s):// or ws(s)://); repeatable, the first that answers is used.
    #[arg(
        long = "server",
        value_name = "URL",
        env = "TETHER_SERVER",
        value_delimiter = ',',
        required = true
    )]
    pub servers: Vec<String>,
    /// File holding the bearer token (else TETHER_TOKEN).
    #[arg(long, value_name = "PATH", env = "TETHER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signs the nodes' certificates.
    #[arg(long, value_name = "PATH", env = "TETHER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The environment.
    #[arg(long, value_name = "NAME", env = "TETHER_ENV")]
    pub env: String,
    /// Mark the values secret.
    #[arg(long)]
    pub secret: bool,
    /// Commit only if the environment is at this version.
    #[arg(long, value_name = "VERSION")]
    pub expect_version: Option<u64>,
    /// NAME=VALUE pairs (NAME=@FILE reads the value from FILE, NAME=- from stdin).
    #[arg(required = true, value_name = "NAME=VALUE")]
    pub pairs: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, value_name = "NAME", env = "TETHER_ENV")]
    pub env: String,
    /// Print only this entry's value.
    pub name: Option<String>,
    /// Print as JSON (position and entries).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RmArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, value_name = "NAME", env = "TETHER_ENV")]
    pub env: String,
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, value_name = "NAME", env = "TETHER_ENV")]
    pub env: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}
