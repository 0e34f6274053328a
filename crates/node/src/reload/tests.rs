//! The reload's rules without a process: what applies, what waits for a restart, and that
//! a configuration with any problem changes nothing.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::auth::hash_token;
use crate::front::Limits;
use crate::store::{Store, sqlite::SqliteStore};

struct Setup {
    dir: tempfile::TempDir,
    reloader: Reloader,
    levels: Arc<Mutex<Vec<Option<String>>>>,
}

fn token(name: &str, secret: &str) -> String {
    format!(
        "[[token]]\nname = \"{name}\"\nhash = \"{}\"\nrole = \"write\"\n",
        hash_token(secret)
    )
}

/// A reloader for a node started with `config` (and `--listen 127.0.0.1:0` unless the file
/// says otherwise).
fn setup(config: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serve.toml");
    std::fs::write(&path, config).unwrap();
    let args = ServeArgs {
        config: Some(path),
        data: Some(dir.path().join("data")),
        ..ServeArgs::default()
    };
    let cfg = config::from_args(&args).unwrap();
    let store = Store::Sqlite(Arc::new(SqliteStore::open(&cfg.data, cfg.history).unwrap()));
    let node = Arc::new(Node::new(&cfg, store, Auth::new(&cfg.tokens).unwrap()));
    let levels = Arc::new(Mutex::new(Vec::new()));
    let seen = levels.clone();
    let log = LogControl::new(move |level| {
        if level == Some("loud") {
            return Err("\"loud\" is not a log level".into());
        }
        seen.lock().unwrap().push(level.map(str::to_owned));
        Ok(())
    });
    let reloader = Reloader {
        args,
        gate: Arc::new(Gate::new(None, cfg.limits)),
        running: cfg,
        log,
        node,
    };
    Setup {
        dir,
        reloader,
        levels,
    }
}

impl Setup {
    fn write(&self, config: &str) {
        std::fs::write(self.dir.path().join("serve.toml"), config).unwrap();
    }

    fn accepts(&self, secret: &str) -> bool {
        let auth = self.reloader.node.live.auth();
        auth.check(Some(&format!("Bearer {secret}"))).is_ok()
    }
}

#[test]
fn tokens_settings_and_level_apply_and_restart_keys_wait() {
    let mut s = setup(&format!("heartbeat = \"15s\"\n{}", token("a", "t-a")));
    assert!(s.accepts("t-a") && !s.accepts("t-b"));
    s.write(&format!(
        "heartbeat = \"2s\"\nmax_frame = 8192\nhistory = 5\nrequest_timeout = \"5s\"\n\
         repair_interval = \"3s\"\nlog_level = \"debug\"\nnode_id = \"renamed\"\n\
         data = \"elsewhere\"\nlog_format = \"json\"\n{}",
        token("b", "t-b")
    ));
    s.reloader.apply().expect("applied");
    assert!(s.accepts("t-b"), "the new token works");
    assert!(!s.accepts("t-a"), "the removed one is refused");
    let node = &s.reloader.node;
    assert_eq!(node.live.heartbeat(), Duration::from_secs(2));
    assert_eq!(node.live.max_frame(), 8192);
    assert_eq!(node.live.repair_interval(), Duration::from_secs(3));
    assert_eq!(*s.levels.lock().unwrap(), vec![Some("debug".to_string())]);
    assert_eq!(
        s.reloader.running.limits,
        Limits {
            request_timeout: Duration::from_secs(5),
            ..Limits::default()
        }
    );
    // Kept as they run until a restart: compared with the running values next time.
    let running = &s.reloader.running;
    assert_ne!(running.node_id, "renamed");
    assert_eq!(running.data, s.dir.path().join("data"));
    assert_eq!(running.log_format, tether_core::settings::LogFormat::Text);
    assert_eq!(running.history, 5);
}

#[test]
fn any_problem_changes_nothing() {
    let mut s = setup(&format!("heartbeat = \"15s\"\n{}", token("a", "t-a")));
    // Two problems: both reported, with their keys; neither applied.
    s.write(&format!(
        "heartbeat = \"1ms\"\nmax_frame = 10\n{}[[token]]\nname = \"b\"\nhash = \"md5:x\"\nrole = \"read\"\n",
        token("a", "t-a")
    ));
    let problems = s.reloader.apply().expect_err("refused");
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert!(
        keys.contains(&"heartbeat")
            && keys.contains(&"max_frame")
            && keys.contains(&"token[1].hash"),
        "{keys:?}"
    );
    assert_eq!(s.reloader.node.live.heartbeat(), Duration::from_secs(15));
    assert!(s.accepts("t-a"));

    // A level that does not parse: refused before anything else is applied.
    s.write(&format!("log_level = \"loud\"\n{}", token("b", "t-b")));
    let problems = s.reloader.apply().expect_err("refused");
    assert_eq!(problems[0].key, "log_level");
    assert!(s.accepts("t-a") && !s.accepts("t-b"), "tokens as they were");

    // Not TOML at all.
    s.write("this is = = not toml");
    assert!(s.reloader.apply().is_err());
    assert!(s.accepts("t-a"));
}

#[test]
fn no_dev_mode_on_an_address_beyond_loopback() {
    let mut s = setup(&format!("listen = \"0.0.0.0:0\"\n{}", token("a", "t-a")));
    // The file asks for loopback, which would allow dev mode, but listen waits for a restart.
    s.write("listen = \"127.0.0.1:0\"\n");
    let problems = s.reloader.apply().expect_err("refused");
    assert_eq!(problems[0].key, "token");
    assert!(!s.reloader.node.live.auth().dev_mode());
}

#[test]
fn problems_never_carry_a_secret() {
    let mut s = setup(&token("a", "t-a"));
    s.write(
        "redis = \"redis://:hunter2@[bad\"\nheartbeat = \"soon\"\n\
         [[token]]\nname = \"x\"\nhash = \"sha256:hunter2\"\nrole = \"read\"\n",
    );
    let problems = s.reloader.apply().expect_err("refused");
    for p in &problems {
        assert!(!p.message.contains("hunter2"), "{p:?}");
    }
}

#[test]
fn fingerprints_follow_contents() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a");
    std::fs::write(&f, "1").unwrap();
    let one = fingerprint(std::slice::from_ref(&f));
    assert_eq!(one, fingerprint(std::slice::from_ref(&f)));
    std::fs::write(&f, "2").unwrap();
    assert_ne!(one, fingerprint(std::slice::from_ref(&f)));
    std::fs::remove_file(&f).unwrap();
    assert_ne!(one, fingerprint(std::slice::from_ref(&f)));
}
