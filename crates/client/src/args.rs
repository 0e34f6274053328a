//! The admin verbs' flags (clap): how to reach a node, and `put`, `get`, `rm`, `status`.

use std::path::PathBuf;

use clap::Args;

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
    /// Print the raw JSON (with --watch: one line each time the counts change).
    #[arg(long)]
    pub json: bool,
    /// Follow the rollout of --env until every agent is current (exit 0) or --timeout
    /// passes (exit 75), printing a line each time the counts change.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: give up after this long (default 5m; 0 waits without limit).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// With --watch: the rollout is complete only with at least N agents connected
    /// (default 1; 0 accepts none).
    #[arg(long, value_name = "N")]
    pub min_agents: Option<u64>,
}
