//! Reloads and the network source: a new follower only when what it follows changed, and
//! a token file rotated as Kubernetes rotates a Secret, followed at the next connection.

use super::{applied, count, logs, publish_in, running, start_watch};
use crate::support::{Tether, Work, run_to_end_env, start_node, start_node_at};

fn put(w: &Work, url: &str, env: &str, pair: &str, token: Option<&str>) {
    let envs: Vec<(&str, &str)> = token.map(|t| ("TETHER_TOKEN", t)).into_iter().collect();
    let (code, out, err) = run_to_end_env(
        w.dir.path(),
        &["put", "--server", url, "--env", env, pair],
        &envs,
    );
    assert_eq!(code, 0, "put {pair} to {env}:\n{out}{err}");
}

fn net_cfg(w: &Work, url: &str, env: &str, extra: &str) -> String {
    format!(
        "server = [\"{url}\"]\nenvironment = \"{env}\"\nstate_dir = \"{state}\"\non_change = \"none\"\n{extra}\n\
         [[output]]\npath = \"{out}\"\n",
        state = w.path("state").display(),
        out = w.path("out.env").display(),
    )
}

#[test]
fn a_reload_restarts_the_network_source_only_when_what_it_follows_changes() {
    let w = Work::new();
    let data = w.path("data").display().to_string();
    let (_node, port) = start_node(w.dir.path(), &["--data", &data]);
    let url = format!("http://127.0.0.1:{port}");
    put(&w, &url, "prod", "A=1", None);
    put(&w, &url, "staging", "A=2", None);
    w.write("tether.toml", &net_cfg(&w, &url, "prod", ""));
    let t = start_watch(&w);
    t.wait_for("prod rendered", || w.read("out.env").contains("A=1"));

    // Unrelated to the source: the connection stays up.
    w.write(
        "tether.toml",
        &net_cfg(&w, &url, "prod", "debounce = \"50ms\""),
    );
    t.wait_for("reloaded", || applied(&t) == 1);
    assert!(!logs(&t).contains("network source restarted"));
    assert_eq!(count(&t, "connected to node"), 1);

    w.write(
        "tether.toml",
        &net_cfg(&w, &url, "staging", "debounce = \"50ms\""),
    );
    t.wait_for("staging rendered", || w.read("out.env").contains("A=2"));
    put(&w, &url, "staging", "A=3", None);
    t.wait_for("staging followed", || w.read("out.env").contains("A=3"));
    assert!(logs(&t).contains("network source restarted"));
    assert_eq!(count(&t, "connected to node"), 2);
}

const ADMIN: &str = "admin-token-reload-0123456789";
const T1: &str = "agent-token-one-0123456789";
const T2: &str = "agent-token-two-0123456789";
const T3: &str = "agent-token-three-0123456789";

/// A node config with the admin token and these agent tokens (read on prod).
fn node_cfg(w: &Work, name: &str, agents: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let mut toml = format!(
        "[[token]]\nname = \"admin\"\nhash = \"sha256:{}\"\nrole = \"admin\"\n\n",
        hash(ADMIN)
    );
    for (i, t) in agents.iter().enumerate() {
        toml.push_str(&format!(
            "[[token]]\nname = \"agent{i}\"\nhash = \"sha256:{}\"\nrole = \"read\"\nenvs = [\"prod\"]\n\n",
            hash(t)
        ));
    }
    w.write(name, &toml);
    w.path(name).display().to_string()
}

/// Publish `file` with `content` (or no file) in `dir` as Kubernetes mounts a Secret or a
/// ConfigMap: a new generation directory, then `..data` swapped to it; `dir/file` links
/// through `..data`.
fn publish(w: &Work, generation: u32, token: Option<&str>) {
    publish_in(
        w,
        "secrets",
        generation,
        "token",
        token.map(|t| format!("{t}\n")).as_deref(),
    );
}

fn restart_node(node: &mut Tether, w: &Work, port: u16, cfg: &str) -> Tether {
    node.signal(nix::sys::signal::Signal::SIGTERM);
    node.wait();
    let data = w.path("data").display().to_string();
    start_node_at(
        w.dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--data", &data, "--config", cfg],
    )
    .0
}

#[test]
fn a_rotated_token_file_is_used_for_the_next_connection() {
    let w = Work::new();
    let data = w.path("data").display().to_string();
    let both = node_cfg(&w, "node-12.toml", &[T1, T2]);
    let (mut node, port) = start_node(w.dir.path(), &["--data", &data, "--config", &both]);
    let url = format!("http://127.0.0.1:{port}");
    put(&w, &url, "prod", "A=1", Some(ADMIN));
    publish(&w, 1, Some(T1));
    let token_file = w.path("secrets/token").display().to_string();
    let state = w.path("state").display().to_string();
    let out = w.path("out.env").display().to_string();
    let mut t = Tether::start(
        w.dir.path(),
        [
            "watch",
            "--server",
            &url,
            "--env",
            "prod",
            "--token-file",
            &token_file,
            "--state-dir",
            &state,
            "--output",
            &out,
            "--on-change",
            "none",
        ],
        &[],
    );
    t.wait_for("A=1 rendered", || w.read("out.env").contains("A=1"));

    // Rotated while connected: noted, and the connection stays up.
    publish(&w, 2, Some(T2));
    t.wait_for("the rotation noticed", || {
        logs(&t).contains("the new token is used for the next connection")
    });
    assert_eq!(count(&t, "connected to node"), 1);

    // The node drops the old token: the next connection uses the new one.
    node = restart_node(&mut node, &w, port, &node_cfg(&w, "node-2.toml", &[T2]));
    put(&w, &url, "prod", "A=2", Some(ADMIN));
    t.wait_for("A=2 through a connection with T2", || {
        w.read("out.env").contains("A=2")
    });

    // The node takes only T3 now: refused until the file holds it, then connected.
    node = restart_node(&mut node, &w, port, &node_cfg(&w, "node-3.toml", &[T3]));
    t.wait_for("T2 refused", || {
        logs(&t).contains("refused this agent's token")
    });
    publish(&w, 3, Some(T3));
    put(&w, &url, "prod", "A=3", Some(ADMIN));
    t.wait_for("A=3 through a connection with T3", || {
        w.read("out.env").contains("A=3")
    });

    // No token file at reconnect: a clear error, retried; then a token again.
    publish(&w, 4, None);
    node = restart_node(&mut node, &w, port, &node_cfg(&w, "node-3.toml", &[T3]));
    t.wait_for("the missing token reported", || {
        logs(&t).contains("cannot read token_file")
    });
    assert!(running(&mut t), "never gives up");
    publish(&w, 5, Some(T3));
    put(&w, &url, "prod", "A=4", Some(ADMIN));
    t.wait_for("A=4 after the token came back", || {
        w.read("out.env").contains("A=4")
    });
    let logs = logs(&t);
    for secret in [ADMIN, T1, T2, T3] {
        assert!(!logs.contains(secret), "a token in the logs");
    }
    drop(node);
}
