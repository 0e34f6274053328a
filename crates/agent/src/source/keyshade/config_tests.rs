//! Tests of the keyshade settings: keyshade's files in a temporary HOME and working
//! directory, precedence, and every problem reported at once without a secret in it.

use std::fs;

use super::*;
use crate::config::{Mode, RawConfig, validate_in};

const TOKEN: &str = "ks.pat.s3cr3tt0ken";
const KEY: &str = "c0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ff";
const OTHER_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";

struct Dirs {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    cwd: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let cwd = tmp.path().join("project");
        fs::create_dir_all(home.join(".keyshade")).unwrap();
        fs::create_dir_all(&cwd).unwrap();
        Dirs {
            _tmp: tmp,
            home,
            cwd,
        }
    }

    fn ctx(&self) -> Context {
        Context {
            home: Some(self.home.clone()),
            cwd: Some(self.cwd.clone()),
            ..Default::default()
        }
    }

    fn keyshade_json(&self, text: &str) {
        fs::write(self.cwd.join("keyshade.json"), text).unwrap();
    }

    fn home_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.home.join(".keyshade").join(name);
        fs::write(&path, text).unwrap();
        path
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.cwd.join(name);
        fs::write(&path, text).unwrap();
        path
    }
}

fn table(text: &str) -> RawKeyshade {
    toml::from_str(text).expect("valid [keyshade] table")
}

fn full_table() -> RawKeyshade {
    table(&format!(
        r#"
        workspace = "ws"
        project = "proj"
        environment = "dev"
        token = "{TOKEN}"
        private_key = "{KEY}"
        "#
    ))
}

fn ok(raw: Option<&RawKeyshade>, ctx: &Context) -> KeyshadeSpec {
    let mut problems = Vec::new();
    let spec = parse(raw, ctx, &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    spec.expect("keyshade in use")
}

fn problems_in(raw: Option<&RawKeyshade>, ctx: &Context) -> Vec<Problem> {
    let mut problems = Vec::new();
    assert!(parse(raw, ctx, &mut problems).is_none());
    assert!(!problems.is_empty());
    for p in &problems {
        let text = format!("{}: {}", p.key, p.message);
        for secret in [TOKEN, KEY, &KEY[..20], "s3cr3t"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    problems
}

fn has(problems: &[Problem], key: &str, needle: &str) -> bool {
    problems
        .iter()
        .any(|p| p.key == key && p.message.contains(needle))
}

#[test]
fn not_in_use_reads_no_keyshade_file() {
    let d = Dirs::new();
    d.keyshade_json("{ not json");
    d.home_file("profiles.json", "[ broken");
    let mut problems = Vec::new();
    assert!(parse(None, &d.ctx(), &mut problems).is_none());
    assert!(problems.is_empty(), "{problems:?}");
    let raw: RawConfig = toml::from_str("source = [\"file:/a.env\"]").unwrap();
    let cfg = validate_in(&raw, Mode::Run, &d.ctx()).unwrap();
    assert!(cfg.keyshade.is_none());
}

#[test]
fn the_table_alone_is_enough_and_defaults_apply() {
    let d = Dirs::new();
    let spec = ok(Some(&full_table()), &d.ctx());
    assert_eq!(spec.base_url, DEFAULT_BASE_URL);
    assert_eq!(
        (&*spec.workspace, &*spec.project, &*spec.environment),
        ("ws", "proj", "dev")
    );
    assert_eq!(spec.token.expose(), TOKEN.as_bytes());
    assert_eq!(spec.token_source, "[keyshade] token");
    assert_eq!(spec.private_key, Some(PrivateKey::from_hex(KEY).unwrap()));
    assert!(!spec.quit_on_decryption_failure);
    assert_eq!(spec.snapshot_interval, Duration::from_secs(60));
    assert_eq!(spec.profile, None);

    let debug = format!("{spec:?} {:?}", full_table());
    assert!(debug.contains("<redacted>"), "{debug}");
    for secret in [TOKEN, KEY, "s3cr3t", "c0ffee"] {
        assert!(!debug.contains(secret), "{debug}");
    }
    let shown = toml::to_string(&spec.to_toml()).unwrap();
    assert!(shown.contains("token = \"<redacted>\""), "{shown}");
    assert!(shown.contains("private_key = \"<redacted>\""), "{shown}");
    let public = PrivateKey::from_hex(KEY).unwrap().public_key_hex();
    assert!(shown.contains(&public), "{shown}");
    assert!(
        !shown.contains(TOKEN) && !shown.contains("c0ffee"),
        "{shown}"
    );
}

#[test]
fn keyshade_files_fill_in_what_tether_leaves_unset() {
    let d = Dirs::new();
    d.keyshade_json(
        r#"{"workspace":"ws","project":"proj","environment":"dev","quitOnDecryptionFailure":true}"#,
    );
    // Older CLIs: a "default" pointer and "apiKey".
    d.home_file(
        "profiles.json",
        &format!(
            r#"{{"default":"work","work":{{"apiKey":"{TOKEN}","baseUrl":"http://127.0.0.1:4200/"}},
                "play":{{"apiKey":"ks.pat.other","baseUrl":"http://other"}}}}"#
        ),
    );
    d.home_file("private-keys.json", &format!(r#"{{"proj":"{KEY}"}}"#));
    let spec = ok(Some(&RawKeyshade::default()), &d.ctx());
    assert_eq!(spec.base_url, "http://127.0.0.1:4200");
    assert_eq!(spec.project, "proj");
    assert!(spec.quit_on_decryption_failure);
    assert_eq!(spec.token.expose(), TOKEN.as_bytes());
    assert!(
        spec.token_source.contains("profile \"work\""),
        "{}",
        spec.token_source
    );
    assert_eq!(spec.profile.as_deref(), Some("work"));
    assert_eq!(spec.private_key, Some(PrivateKey::from_hex(KEY).unwrap()));
    assert!(spec.private_key_source.contains("private-keys.json"));

    // A profile chosen by name.
    let raw = RawKeyshade {
        profile: Some("play".into()),
        ..Default::default()
    };
    let spec = ok(Some(&raw), &d.ctx());
    assert_eq!(spec.base_url, "http://other");
    assert_eq!(spec.token.expose(), b"ks.pat.other");
}

#[test]
fn newer_profile_layout_and_legacy_private_key_names() {
    let d = Dirs::new();
    d.keyshade_json(r#"{"workspace":"ws","project":"proj","environment":"dev"}"#);
    // Newer CLIs: profiles keyed by name with "token", the default in default-profile.json.
    d.home_file(
        "profiles.json",
        &format!(
            r#"{{"u-1":{{"token":"{TOKEN}","baseUrl":"https://ks.example.org","metricsEnabled":false}}}}"#
        ),
    );
    d.home_file("default-profile.json", r#"{"userId":"u-1"}"#);
    // Older CLIs keyed private keys by workspace_project_environment.
    d.home_file(
        "private-keys.json",
        &format!(r#"{{"ws_proj_dev":"{KEY}"}}"#),
    );
    let spec = ok(Some(&RawKeyshade::default()), &d.ctx());
    assert_eq!(spec.base_url, "https://ks.example.org");
    assert_eq!(spec.token.expose(), TOKEN.as_bytes());
    assert_eq!(spec.profile.as_deref(), Some("u-1"));
    assert!(spec.private_key.is_some());
    assert!(spec.private_key_source.contains("ws_proj_dev"));
}

#[test]
fn flags_beat_the_table_which_beats_keyshade_files() {
    let d = Dirs::new();
    d.keyshade_json(
        r#"{"workspace":"file-ws","project":"file-proj","environment":"file-env","quitOnDecryptionFailure":true}"#,
    );
    d.home_file(
        "profiles.json",
        r#"{"default":"p","p":{"token":"ks.pat.profile","baseUrl":"http://profile"}}"#,
    );
    d.home_file(
        "private-keys.json",
        &format!(r#"{{"flag-proj":"{OTHER_KEY}"}}"#),
    );
    let token_file = d.file("token", "ks.pat.fromflag\n");
    let key_file = d.file("key", &format!("0x{KEY}\n"));
    let mut slot = Some(table(&format!(
        r#"
        base_url = "http://table"
        workspace = "table-ws"
        project = "table-proj"
        token = "ks.pat.table"
        private_key = "{OTHER_KEY}"
        quit_on_decryption_failure = false
        snapshot_interval = "5m"
        "#
    )));
    RawKeyshade::overlay(
        &mut slot,
        &KeyshadeArgs {
            url: Some("https://flag/".into()),
            project: Some("flag-proj".into()),
            token_file: Some(token_file.clone()),
            private_key_file: Some(key_file),
            ..Default::default()
        },
    );
    let spec = ok(slot.as_ref(), &d.ctx());
    assert_eq!(spec.base_url, "https://flag");
    assert_eq!(spec.workspace, "table-ws");
    assert_eq!(spec.project, "flag-proj");
    assert_eq!(spec.environment, "file-env");
    assert!(!spec.quit_on_decryption_failure);
    assert_eq!(spec.snapshot_interval, Duration::from_secs(300));
    assert_eq!(spec.token.expose(), b"ks.pat.fromflag");
    assert_eq!(spec.token_file.as_deref(), Some(token_file.as_path()));
    assert_eq!(spec.private_key, Some(PrivateKey::from_hex(KEY).unwrap()));
    assert_eq!(spec.profile, None, "the profile was not needed");

    // No flags: any --keyshade-* flag creates the table, none leaves it alone.
    let mut none = None;
    RawKeyshade::overlay(&mut none, &KeyshadeArgs::default());
    assert!(none.is_none());
}

#[test]
fn token_variables_sit_between_the_table_and_the_profile() {
    let d = Dirs::new();
    d.home_file(
        "profiles.json",
        r#"{"default":"p","p":{"token":"ks.pat.profile"}}"#,
    );
    let mut ctx = d.ctx();
    ctx.token_var = Some(Value::from("ks.pat.var"));
    ctx.private_key_var = Some(Value::from(KEY));
    let mut raw = table("workspace = \"w\"\nproject = \"p\"\nenvironment = \"e\"");
    let spec = ok(Some(&raw), &ctx);
    assert_eq!(spec.token.expose(), b"ks.pat.var");
    assert_eq!(spec.token_source, TOKEN_VAR);
    assert_eq!(spec.private_key_source, PRIVATE_KEY_VAR);
    raw.token = Some("ks.pat.table".into());
    assert_eq!(ok(Some(&raw), &ctx).token.expose(), b"ks.pat.table");
    // The variables alone turn keyshade on.
    let problems = problems_in(None, &ctx);
    assert!(has(&problems, "keyshade.workspace", "--keyshade-workspace"));
}

#[test]
fn every_missing_setting_is_named_with_where_to_set_it() {
    let d = Dirs::new();
    let problems = problems_in(Some(&RawKeyshade::default()), &d.ctx());
    for (key, flag) in [
        ("keyshade.workspace", "--keyshade-workspace"),
        ("keyshade.project", "--keyshade-project"),
        ("keyshade.environment", "--keyshade-environment"),
        ("keyshade.token", "--keyshade-token-file"),
    ] {
        assert!(has(&problems, key, flag), "{key}: {problems:?}");
    }
    assert!(has(&problems, "keyshade.workspace", "keyshade.json"));
    assert!(has(&problems, "keyshade.token", "profiles.json"));
    assert!(has(&problems, "keyshade.token", TOKEN_VAR));
    // A missing private key is not a problem.
    assert!(!problems.iter().any(|p| p.key.contains("private_key")));
}

#[test]
fn a_missing_private_key_is_no_error_and_says_where_it_was_looked_for() {
    let d = Dirs::new();
    let mut raw = full_table();
    raw.private_key = None;
    let spec = ok(Some(&raw), &d.ctx());
    assert!(spec.private_key.is_none());
    assert!(
        spec.private_key_source.starts_with("none"),
        "{}",
        spec.private_key_source
    );
    assert!(spec.private_key_source.contains("\"proj\""));
    assert!(spec.private_key_source.contains("private-keys.json"));
    let shown = toml::to_string(&spec.to_toml()).unwrap();
    assert!(!shown.contains("private_key ="), "{shown}");
}

#[test]
fn bad_values_are_all_reported_without_secrets() {
    let d = Dirs::new();
    let raw = table(&format!(
        r#"
        base_url = "ftp://host"
        workspace = "my workspace"
        project = "a/b"
        environment = ""
        token = "{TOKEN}"
        token_file = "/nonexistent/token"
        private_key = "{KEY}"
        private_key_file = "/nonexistent/key"
        snapshot_interval = "soon"
        ca_file = "/nonexistent/ca.pem"
        "#
    ));
    let problems = problems_in(Some(&raw), &d.ctx());
    for (key, needle) in [
        ("keyshade.base_url", "scheme must be http or https"),
        ("keyshade.workspace", "not a keyshade slug"),
        ("keyshade.project", "not a keyshade slug"),
        ("keyshade.environment", "not a keyshade slug"),
        ("keyshade.token", "not both"),
        ("keyshade.private_key", "not both"),
        ("keyshade.snapshot_interval", "not a duration"),
        ("keyshade.ca_file", "/nonexistent/ca.pem"),
    ] {
        assert!(has(&problems, key, needle), "{key}: {problems:?}");
    }

    let mut raw = full_table();
    raw.snapshot_interval = Some("10ms".into());
    raw.token = Some("ks.pat.two\nlines".into());
    raw.private_key = Some(format!("{}zz", &KEY[..62]));
    let problems = problems_in(Some(&raw), &d.ctx());
    assert!(has(&problems, "keyshade.snapshot_interval", "too short"));
    assert!(has(&problems, "keyshade.token", "HTTP header"));
    assert!(has(
        &problems,
        "keyshade.private_key",
        "[keyshade] private_key: private key is not hex"
    ));
}

#[test]
fn bad_private_keys_name_their_file_or_entry() {
    let d = Dirs::new();
    let mut raw = full_table();
    raw.private_key = None;
    raw.private_key_file = Some(d.file("short.key", &KEY[..40]));
    let problems = problems_in(Some(&raw), &d.ctx());
    assert!(has(
        &problems,
        "keyshade.private_key_file",
        "short.key: private key is not 64 hex characters (found 40"
    ));

    raw.private_key_file = Some(d.file("empty.key", "\n"));
    assert!(has(
        &problems_of(&raw, &d),
        "keyshade.private_key_file",
        "is empty"
    ));

    raw.private_key_file = None;
    let path = d.home_file("private-keys.json", r#"{"proj":"c0ffee-not-a-key"}"#);
    let key = path.display().to_string();
    let problems = problems_of(&raw, &d);
    assert!(has(&problems, &key, "entry \"proj\""), "{problems:?}");

    d.home_file("private-keys.json", r#"{"proj": 7}"#);
    assert!(has(&problems_of(&raw, &d), &key, "is not a string"));

    let mut ctx = d.ctx();
    ctx.private_key_var = Some(Value::from("zz"));
    d.home_file("private-keys.json", "{}");
    let mut problems = Vec::new();
    parse(Some(&raw), &ctx, &mut problems);
    assert!(has(&problems, "keyshade.private_key", PRIVATE_KEY_VAR));
}

fn problems_of(raw: &RawKeyshade, d: &Dirs) -> Vec<Problem> {
    problems_in(Some(raw), &d.ctx())
}

#[test]
fn broken_keyshade_files_are_named() {
    let d = Dirs::new();
    d.keyshade_json("{\"workspace\": ");
    let profiles = d.home_file("profiles.json", &format!("[\"{TOKEN}\"]"));
    let mut raw = full_table();
    raw.token = None;
    let problems = problems_in(Some(&raw), &d.ctx());
    let json_key = d.cwd.join("keyshade.json").display().to_string();
    assert!(
        has(&problems, &json_key, "is not JSON (error at line 1"),
        "{problems:?}"
    );
    assert!(has(
        &problems,
        &profiles.display().to_string(),
        "not a JSON object"
    ));

    d.keyshade_json(r#"{"workspace": 5, "quitOnDecryptionFailure": "yes"}"#);
    let problems = problems_of(&full_table(), &d);
    assert!(has(&problems, &json_key, "`workspace`"));
    assert!(has(&problems, &json_key, "`quitOnDecryptionFailure`"));

    // Unreadable: a directory where the file should be.
    fs::remove_file(d.cwd.join("keyshade.json")).unwrap();
    fs::create_dir(d.cwd.join("keyshade.json")).unwrap();
    assert!(has(
        &problems_of(&full_table(), &d),
        &json_key,
        "cannot read"
    ));
}

#[test]
fn an_unknown_profile_lists_the_known_ones() {
    let d = Dirs::new();
    d.home_file(
        "profiles.json",
        r#"{"default":"a","a":{"token":"ks.pat.a"},"b":{"token":"ks.pat.b"}}"#,
    );
    let mut raw = full_table();
    raw.profile = Some("c".into());
    let problems = problems_of(&raw, &d);
    assert!(
        has(&problems, "keyshade.profile", "\"c\" is not in"),
        "{problems:?}"
    );
    assert!(has(&problems, "keyshade.profile", "a, b"));

    fs::remove_file(d.home.join(".keyshade/profiles.json")).unwrap();
    assert!(has(
        &problems_of(&raw, &d),
        "keyshade.profile",
        "does not exist"
    ));
}

#[test]
fn base_urls() {
    assert_eq!(
        check_base_url("https://api.keyshade.xyz/").unwrap(),
        "https://api.keyshade.xyz"
    );
    assert_eq!(
        check_base_url(" http://127.0.0.1:4200/x// ").unwrap(),
        "http://127.0.0.1:4200/x"
    );
    for bad in [
        "api.keyshade.xyz",
        "wss://host",
        "https://",
        "https://u:p@host",
        "https://host?x=1",
        "https://ho st",
    ] {
        assert!(check_base_url(bad).is_err(), "{bad}");
    }
    assert!(
        !check_base_url("https://u:p@host")
            .unwrap_err()
            .contains("u:p")
    );
}

#[test]
fn unknown_keys_in_the_table_are_refused() {
    assert!(toml::from_str::<RawConfig>("[keyshade]\nprojet = \"x\"").is_err());
    let raw: RawConfig = toml::from_str("[keyshade]\nproject = \"x\"").unwrap();
    assert_eq!(raw.keyshade.unwrap().project.as_deref(), Some("x"));
}
