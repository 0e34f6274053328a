//! Integration tests: the real `tether` binary against real processes and files.
//! Every wait waits on a condition with a deadline.

mod agent_ops;
mod bench;
mod cluster;
mod examples;
mod fake_node;
mod files;
mod fleet;
mod follower;
mod gate;
mod health;
mod hostile;
mod keyshade;
mod keyshade_config;
mod keyshade_fake;
mod kubernetes;
mod oneshot;
mod package;
mod reload;
mod rollout_cli;
mod rollout_e2e;
mod run;
mod serve;
mod serve_ops;
mod support;
mod templates;
mod tls;
mod tty;
mod watch;
