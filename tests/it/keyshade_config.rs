//! The keyshade source's settings through the real binary: `tether check` on good configs
//! (the effective settings, token and private key redacted) and bad ones (every problem
//! named, exit 64, no secret on stderr), keyshade's own files found through HOME and the
//! working directory, and the `--keyshade-*` flags checked by `run`.

use std::fs;

use crate::support::{Work, run_to_end_env};

const TOKEN: &str = "ks.pat.0123456789abcdefs3cr3t";
const KEY: &str = "c0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ff";
/// A private key of the shared eccrypto vectors, and its public key as eccrypto made it.
const VECTOR_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const VECTOR_PUBLIC: &str = "044f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b7040758\
                             71aa385b6b1b8ead809ca67454d9683fcf2ba03456d6fe2c4abe2b07f0fbdbb2f1c1";

fn home(w: &Work) -> String {
    let home = w.path("home");
    fs::create_dir_all(home.join(".keyshade")).unwrap();
    home.display().to_string()
}

fn assert_no_secret(text: &str) {
    for secret in [TOKEN, "s3cr3t", KEY, "c0ffee"] {
        assert!(!text.contains(secret), "a secret leaked:\n{text}");
    }
}

#[test]
fn check_prints_the_keyshade_settings_with_secrets_redacted() {
    let w = Work::new();
    let home = home(&w);
    w.write("token", &format!("{TOKEN}\n"));
    w.write("key", &format!("{VECTOR_KEY}\n"));
    w.write(
        "tether.toml",
        "[keyshade]\nbase_url = \"http://127.0.0.1:4200/\"\nworkspace = \"ws\"\n\
         project = \"proj\"\nenvironment = \"dev\"\ntoken_file = \"token\"\n\
         private_key_file = \"key\"\nquit_on_decryption_failure = true\n\
         snapshot_interval = \"30s\"\n",
    );
    let (code, out, err) = run_to_end_env(
        w.dir.path(),
        &["check", "--config", "tether.toml"],
        &[("HOME", &home)],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "[keyshade]",
        "base_url = \"http://127.0.0.1:4200\"",
        "workspace = \"ws\"",
        "project = \"proj\"",
        "environment = \"dev\"",
        "token = \"<redacted>\"",
        "token_source = \"token_file token\"",
        "private_key = \"<redacted>\"",
        "private_key_source = \"private_key_file key\"",
        "quit_on_decryption_failure = true",
        "snapshot_interval = \"30s\"",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    assert_eq!(public_key_line(&out), VECTOR_PUBLIC, "{out}");
    assert_no_secret(&out);
    assert_no_secret(&err);
    assert!(!out.contains(&VECTOR_KEY[..16]), "{out}");
}

fn public_key_line(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("public_key = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .unwrap_or_default()
}

#[test]
fn check_fills_in_from_keyshade_json_profiles_and_private_keys() {
    let w = Work::new();
    let home = home(&w);
    w.write(
        "keyshade.json",
        r#"{"workspace":"ws","project":"proj","environment":"dev","quitOnDecryptionFailure":true}"#,
    );
    fs::write(
        w.path("home/.keyshade/profiles.json"),
        format!(r#"{{"default":"work","work":{{"apiKey":"{TOKEN}","baseUrl":"https://ks.example.org/"}}}}"#),
    )
    .unwrap();
    fs::write(
        w.path("home/.keyshade/private-keys.json"),
        format!(r#"{{"proj":"{KEY}"}}"#),
    )
    .unwrap();
    // An empty table turns keyshade on; everything else comes from keyshade's files.
    w.write("tether.toml", "[keyshade]\n");
    let (code, out, err) = run_to_end_env(
        w.dir.path(),
        &["check", "--config", "tether.toml"],
        &[("HOME", &home)],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "base_url = \"https://ks.example.org\"",
        "project = \"proj\"",
        "profile = \"work\"",
        "token = \"<redacted>\"",
        "private_key = \"<redacted>\"",
        "quit_on_decryption_failure = true",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    assert!(out.contains("private-keys.json"), "{out}");
    assert_no_secret(&out);

    // The same key given inline has the same public key: the file's entry was used.
    let from_files = public_key_line(&out);
    w.write(
        "inline.toml",
        &format!("[keyshade]\ntoken = \"{TOKEN}\"\nprivate_key = \"0x{KEY}\"\n"),
    );
    let (code, out, err) = run_to_end_env(
        w.dir.path(),
        &["check", "--config", "inline.toml"],
        &[("HOME", &home)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!from_files.is_empty());
    assert_eq!(public_key_line(&out), from_files);
    assert_no_secret(&out);
}

#[test]
fn check_names_every_problem_exits_64_and_shows_no_secret() {
    let w = Work::new();
    let home = home(&w);
    w.write("keyshade.json", "{\"workspace\": \"ws\",");
    fs::write(
        w.path("home/.keyshade/profiles.json"),
        format!("{{\"{TOKEN}\""),
    )
    .unwrap();
    w.write(
        "bad.toml",
        &format!(
            "[keyshade]\nbase_url = \"ftp://keyshade\"\ntoken = \"{TOKEN}\"\n\
             token_file = \"token\"\nprivate_key = \"{}zz\"\n\
             snapshot_interval = \"soon\"\nca_file = \"missing-ca.pem\"\n",
            &KEY[..62]
        ),
    );
    let (code, out, err) = run_to_end_env(
        w.dir.path(),
        &["check", "--config", "bad.toml"],
        &[("HOME", &home)],
    );
    assert_eq!(code, 64, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    for (key, says) in [
        ("keyshade.workspace", "--keyshade-workspace"),
        ("keyshade.project", "keyshade.json"),
        ("keyshade.environment", "--keyshade-environment"),
        ("keyshade.base_url", "http or https"),
        ("keyshade.token", "not both"),
        (
            "keyshade.private_key",
            "[keyshade] private_key: private key is not hex",
        ),
        ("keyshade.snapshot_interval", "soon"),
        ("keyshade.ca_file", "missing-ca.pem"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key}:")) && l.contains(says)),
            "{key} ({says}) missing:\n{err}"
        );
    }
    assert!(err.contains("keyshade.json is not JSON"), "{err}");
    assert_no_secret(&err);

    // Nothing set anywhere: each required setting is named with where to set it.
    w.write("empty.toml", "[keyshade]\n");
    fs::remove_file(w.path("keyshade.json")).unwrap();
    let (code, _, err) = run_to_end_env(
        w.dir.path(),
        &["check", "--config", "empty.toml"],
        &[("HOME", &home)],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("keyshade.token: no token"), "{err}");
    assert!(err.contains("profiles.json is not JSON"), "{err}");
    assert!(
        !err.contains("private_key"),
        "a missing key is no error:\n{err}"
    );
    assert_no_secret(&err);
}

#[test]
fn run_checks_the_keyshade_flags_and_variables_before_starting() {
    let w = Work::new();
    let home = home(&w);
    w.write("short.key", &KEY[..40]);
    let (code, out, err) = run_to_end_env(
        w.dir.path(),
        &[
            "run",
            "--keyshade-url",
            "wss://keyshade",
            "--keyshade-project",
            "my project",
            "--keyshade-private-key-file",
            "short.key",
            "--",
            "true",
        ],
        &[
            ("HOME", &home),
            ("TETHER_KEYSHADE_WORKSPACE", "ws"),
            ("TETHER_KEYSHADE_TOKEN", TOKEN),
        ],
    );
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("keyshade.base_url:"), "{err}");
    assert!(
        err.contains("keyshade.project: \"my project\" is not a keyshade slug"),
        "{err}"
    );
    assert!(
        err.contains("keyshade.private_key_file: private_key_file short.key: private key is not 64 hex characters"),
        "{err}"
    );
    assert!(
        err.contains("keyshade.environment: no environment"),
        "{err}"
    );
    assert!(
        !err.contains("keyshade.workspace"),
        "the variable set it:\n{err}"
    );
    assert!(
        !err.contains("keyshade.token"),
        "the variable set it:\n{err}"
    );
    assert!(!err.contains("  source:"), "keyshade is a source:\n{err}");
    assert_no_secret(&err);
}
