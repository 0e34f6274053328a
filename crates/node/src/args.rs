//! `tether serve`'s flags (clap); [`crate::config`] merges them with the node's TOML file.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tether_core::settings::LogArgs;

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
    pub redis: Option<crate::redis_url::RedisUrl>,
    /// How often a cluster node compares its positions with Redis (default 10s).
    #[arg(long, value_name = "DURATION", env = "TETHER_REPAIR_INTERVAL")]
    pub repair_interval: Option<String>,
    /// How long a rollout slot outlives the last renewal by the node its agent is connected
    /// to: an agent that vanished holding one gives it back after this (default 30s).
    #[arg(long, value_name = "DURATION", env = "TETHER_SLOT_LEASE")]
    pub slot_lease: Option<String>,
    /// Longest a request (headers and body) may take to arrive before its connection is
    /// closed (default 30s).
    #[arg(long, value_name = "DURATION", env = "TETHER_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Most connections at once on which no request has passed the token check yet; past
    /// it each new connection closes an old one (default 1024).
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
