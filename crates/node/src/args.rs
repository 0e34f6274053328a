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
    pub redis: Option<crate::config::RedisUrl>,
    /// How often a cluster node compares its positions with Redis (default 10s).
    #[arg(long, value_name = "DURATION", env = "TETHER_REPAIR_INTERVAL")]
    pub repair_interval: Option<String>,
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
