//! The example configs shipped in `config/` stay valid.

use crate::support::run_to_end;

#[test]
fn shipped_example_configs_pass_check() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (file, mode) in [("config/run.toml", "run"), ("config/watch.toml", "watch")] {
        let path = format!("{root}/{file}");
        let (code, out, err) = run_to_end(
            std::path::Path::new(root),
            &["check", "--config", &path, "--mode", mode],
        );
        assert_eq!(code, 0, "{file}: {err}");
        assert!(out.contains("[[output]]"), "{file}: {out}");
    }
}
