//! Integration tests: the real `tether` binary against real processes and files.
//! Every wait waits on a condition with a deadline.

mod bench;
mod cluster;
mod examples;
mod fake_node;
mod files;
mod follower;
mod hostile;
mod package;
mod run;
mod serve;
mod support;
mod tls;
mod tty;
mod watch;
