//! TLS: a node serving https/wss with a certificate from a test CA; agents and admin verbs
//! trust it through --ca-file, and refuse it without.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::support::{BIN, Tether, Work, run_to_end};

/// Write ca.pem, node.pem and node.key into `dir`.
pub(crate) fn make_certs(dir: &Path) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("node.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("node.key"), leaf_key.serialize_pem()).unwrap();
}

struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_node(w: &Work) -> Node {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data")
        .arg(w.path("data"))
        .arg("--tls-cert")
        .arg(w.path("node.pem"))
        .arg("--tls-key")
        .arg(w.path("node.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // The node logs its address once listening (the read ends if it exits).
    let port = loop {
        let line = lines.next().expect("node exited before listening").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(addr) = v.get("addr").and_then(|a| a.as_str()) {
            assert_eq!(v.get("tls").and_then(|t| t.as_bool()), Some(true), "{line}");
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Node { child, port }
}

#[test]
fn agent_and_verbs_over_tls_with_a_private_ca() {
    let w = Work::new();
    make_certs(w.dir.path());
    let node = start_tls_node(&w);
    let https = format!("https://127.0.0.1:{}", node.port);
    let ca = w.path("ca.pem").display().to_string();

    let (code, out, err) = run_to_end(
        w.dir.path(),
        &[
            "put",
            "--server",
            &https,
            "--ca-file",
            &ca,
            "--env",
            "prod",
            "A=1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");

    // Without the CA the node's certificate is not trusted: a clear error, not a hang.
    let (code, _, err) = run_to_end(w.dir.path(), &["get", "--server", &https, "--env", "prod"]);
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );

    let wss = format!("wss://127.0.0.1:{}", node.port);
    let out = w.path("out.env").display().to_string();
    let state = w.path("state").display().to_string();
    let mut args = vec![
        "run",
        "--server",
        &wss,
        "--ca-file",
        &ca,
        "--env",
        "prod",
        "--state-dir",
        &state,
        "--output",
        &out,
        "--no-env",
        "--on-change",
        "signal:USR1",
        "--debounce",
        "0",
        "--",
    ];
    let child = w.child_args(&[]);
    args.extend(child.iter().map(String::as_str));
    let agent = Tether::start(w.dir.path(), &args, &[]);
    agent.wait_for("first render over wss", || {
        w.read("out.env").contains("A=1")
    });

    let (code, _, err) = run_to_end(
        w.dir.path(),
        &[
            "put",
            "--server",
            &https,
            "--ca-file",
            &ca,
            "--env",
            "prod",
            "A=2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    agent.wait_for("change over wss", || {
        w.read("out.env").contains("A=2") && w.signals().len() == 1
    });
}
