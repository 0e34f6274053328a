//! The admin verbs' flags (clap): how to reach a node, and `put`, `get`, `rm`, `status`,
//! `policy` and `rollout`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

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
    /// The environment (the same as --env; give it one way).
    #[arg(value_name = "ENV")]
    pub env_arg: Option<String>,
    #[arg(long, value_name = "NAME", env = "TETHER_ENV")]
    pub env: Option<String>,
    /// Print the node's JSON (with --watch: one line each time the counts change).
    #[arg(long)]
    pub json: bool,
    /// Follow the rollout of the environment, printing a line each time it changes, until
    /// it is done (exit 0), halted or done with failed agents (exit 65), or --timeout
    /// passes (exit 75). A node without rollouts: until every agent is current (exit 0).
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

/// `tether policy`: an environment's rollout policy.
#[derive(Args, Debug, Clone)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub action: PolicyAction,
}

#[derive(Subcommand, Debug, Clone)]
pub enum PolicyAction {
    /// Set (replace) the environment's rollout policy.
    Set(PolicySetArgs),
    /// Print the environment's rollout policy ("no policy" when it has none).
    Get(PolicyGetArgs),
    /// Remove the policy: agents act on changes at once again, each rolling back by itself.
    Clear(PolicyClearArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PolicySetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, value_name = "NAME", env = "TETHER_ENV")]
    pub env: String,
    /// Agents acting on a change at once: a count (5) or a share of the agents (10%).
    #[arg(long, value_name = "N|P%")]
    pub max_unavailable: String,
    /// Cumulative wave sizes, counts or shares: 1,10%,50%,100% (a last wave of everyone is
    /// implied).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub waves: Vec<String>,
    /// Wait after a wave is healthy before the next starts (e.g. 30s; default 0).
    #[arg(long, value_name = "DURATION")]
    pub bake: Option<String>,
    /// Halt the rollout once this many agents failed the change (default 1).
    #[arg(long, value_name = "N")]
    pub max_failures: Option<u32>,
    /// Signals take slots too (by default only restarts do).
    #[arg(long)]
    pub signals: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PolicyGetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, value_name = "NAME", env = "TETHER_ENV")]
    pub env: String,
    /// Print the node's JSON (`{"policy": null}` when there is none).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PolicyClearArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, value_name = "NAME", env = "TETHER_ENV")]
    pub env: String,
}

/// `tether rollout`: act on an environment's rollout.
#[derive(Args, Debug, Clone)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub action: RolloutAction,
}

#[derive(Subcommand, Debug, Clone)]
pub enum RolloutAction {
    /// Lift a halt: forget the failures and let waiting agents act again.
    Resume(ResumeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The environment (the same as --env; give it one way).
    #[arg(value_name = "ENV")]
    pub env_arg: Option<String>,
    #[arg(long, value_name = "NAME", env = "TETHER_ENV")]
    pub env: Option<String>,
}

/// The environment given as ENV or as --env (or TETHER_ENV): the same either way, or a
/// usage error naming both.
pub fn one_env(positional: Option<&str>, flag: Option<&str>) -> Result<Option<String>, String> {
    match (positional, flag) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "two environments given: {a:?} (ENV) and {b:?} (--env or TETHER_ENV); give one"
        )),
        (Some(a), _) => Ok(Some(a.to_string())),
        (None, b) => Ok(b.map(str::to_owned)),
    }
}

#[cfg(test)]
mod tests {
    use super::one_env;

    #[test]
    fn the_environment_is_given_once_either_way() {
        assert_eq!(one_env(Some("prod"), None), Ok(Some("prod".into())));
        assert_eq!(one_env(None, Some("prod")), Ok(Some("prod".into())));
        assert_eq!(one_env(Some("prod"), Some("prod")), Ok(Some("prod".into())));
        assert_eq!(one_env(None, None), Ok(None));
        let e = one_env(Some("prod"), Some("staging")).unwrap_err();
        assert!(e.contains("\"prod\"") && e.contains("\"staging\""), "{e}");
    }
}
