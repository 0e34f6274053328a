//! packaging/kubernetes: every manifest expanded and validated offline against the
//! Kubernetes schemas and the rules of `packaging/kubernetes/check.py` (native sidecar,
//! hardening, probes, selectors, flags checked against this binary); the checker shown to
//! catch each kind of breakage; and the nodes' shipped config and the sidecar's args run for
//! real against a redis-server.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BIN, Tether, Work, free_port, http_request, start_node, wait_for};

const INSTALL: &str = "python3 -m pip install kubernetes-validate==1.37.0 PyYAML==6.0.3";
/// A bound for "did it finish at all": check.py takes about a second.
const CHECK_DEADLINE: Duration = Duration::from_secs(180);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run check.py with `args` (after --tether BIN); exit code and its whole output. Fails the
/// test, saying how to install it, when a package it needs is missing.
fn check_py(args: &[&str]) -> (i32, String) {
    let script = repo().join("packaging/kubernetes/check.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["--tether", BIN])
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 {}: {e} (install python3)", script.display()));
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > CHECK_DEADLINE {
            let _ = child.kill();
            panic!("check.py {args:?} did not finish within {CHECK_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("check.py output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(
        code, 2,
        "check.py cannot run: {text}\ninstall what it needs: {INSTALL}"
    );
    (code, text)
}

#[test]
fn every_manifest_passes_the_offline_check() {
    let (code, out) = check_py(&[]);
    assert_eq!(code, 0, "check.py found problems:\n{out}");
    // It looked at something: four kustomizations and what the full one must connect.
    assert!(out.contains("4 kustomizations"), "{out}");
    assert!(out.contains("schemas of Kubernetes 1.29 and"), "{out}");
    for seen in [
        "1 native sidecars",
        "1 node workloads",
        "1 --server resolved to the nodes",
        "1 agent tokens the nodes accept",
        ": 0 problems",
    ] {
        assert!(out.contains(seen), "{seen}: {out}");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_tree(&entry.path(), &dest);
            }
        } else {
            fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

/// A copy of what check.py reads (packaging/kubernetes, packaging/container, .dockerignore)
/// with one edit: `from` (which must be there) replaced by `to` in `file`.
fn broken_copy(dir: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    let root = dir.to_path_buf();
    for sub in ["packaging/kubernetes", "packaging/container"] {
        copy_tree(&repo().join(sub), &root.join(sub));
    }
    fs::copy(repo().join(".dockerignore"), root.join(".dockerignore")).expect("copy");
    let path = root.join(file);
    let text = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        text.contains(from),
        "{file} no longer has {from:?}: update the test"
    );
    fs::write(&path, text.replacen(from, to, 1)).expect("write");
    root
}

/// (file, text, replacement, what check.py must say).
const BREAKAGES: &[(&str, &str, &str, &str)] = &[
    (
        "packaging/kubernetes/sidecar/app.yaml",
        "          restartPolicy: Always",
        "          restartPolicy: OnFailure",
        "must be a native sidecar (restartPolicy: Always)",
    ),
    (
        "packaging/kubernetes/sidecar/app.yaml",
        "startupProbe:\n            httpGet: {path: /readyz",
        "startupProbe:\n            httpGet: {path: /healthz",
        "startupProbe must be GET /readyz on port 9464",
    ),
    (
        "packaging/kubernetes/sidecar/app.yaml",
        "--listen-metrics=0.0.0.0:9464",
        "--listen-metrics=127.0.0.1:9464",
        "kubelet probes the pod's address",
    ),
    (
        "packaging/kubernetes/sidecar/app.yaml",
        "capabilities: {drop: [\"ALL\"]}",
        "capabilities: {drop: [\"ALL\"], add: [\"KILL\"]}",
        "capabilities.add ['KILL']",
    ),
    (
        "packaging/kubernetes/sidecar/app.yaml",
        "            capabilities: {drop: [\"ALL\"]}\n          volumeMounts:\n            - {name: rendered, mountPath: /run/app, readOnly: true}",
        "            capabilities: {drop: [\"ALL\"]}\n            runAsUser: 1000\n          volumeMounts:\n            - {name: rendered, mountPath: /run/app, readOnly: true}",
        "signalling needs one uid",
    ),
    (
        "packaging/kubernetes/sidecar/app.yaml",
        "image: ghcr.io/example/legacy-app:1.0",
        "image: ghcr.io/example/legacy-app:1.0\n          command: [\"sh\", \"-c\", \"until test -f /run/app/app.env; do sleep 1; done; exec legacy-app\"]",
        "orders itself after tether by hand",
    ),
    (
        "packaging/kubernetes/sidecar/app.yaml",
        "--signal-process=legacy-app",
        "--signal-proces=legacy-app",
        "--signal-proces: `tether watch` has no such flag",
    ),
    (
        "packaging/kubernetes/sidecar/app.yaml",
        "shareProcessNamespace: true",
        "shareProcessNamespace: false",
        "need shareProcessNamespace: true",
    ),
    (
        "packaging/kubernetes/sidecar/app.yaml",
        "emptyDir: {medium: Memory, sizeLimit: 16Mi}",
        "emptyDir: {sizeLimit: 16Mi}",
        "must be on an emptyDir with medium Memory",
    ),
    (
        "packaging/kubernetes/sidecar/agent-token",
        "demo",
        "other",
        "its token is not one the nodes accept for env prod",
    ),
    (
        "packaging/kubernetes/node/node.yaml",
        "maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: tether\n      app.kubernetes.io/instance: tether-node",
        "maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: tether\n      app.kubernetes.io/instance: tether-nodes",
        "PodDisruptionBudget tether/tether-node: selector",
    ),
    (
        "packaging/kubernetes/node/node.yaml",
        "targetPort: http",
        "targetPort: 8080",
        "targetPort 8080 is no port",
    ),
    (
        "packaging/kubernetes/node/node.yaml",
        "readinessProbe:\n            # 503 while the store does not answer or was found damaged (docs/api.md).\n            httpGet: {path: /readyz",
        "readinessProbe:\n            httpGet: {path: /metrics",
        "readinessProbe must be GET /readyz on port 7070",
    ),
    (
        "packaging/kubernetes/node/node.yaml",
        "replicas: 2",
        "replicas: 1",
        "the nodes need 2 replicas or more",
    ),
    (
        "packaging/kubernetes/node/node.yaml",
        "replicas: 2",
        "replicas: two",
        "schema: spec.replicas",
    ),
    (
        "packaging/kubernetes/node/node.yaml",
        "replicas: 2",
        "replicas: 2\n  replicas: 3",
        "duplicate key 'replicas'",
    ),
    (
        "packaging/kubernetes/node/node.yaml",
        "revisionHistoryLimit: 3",
        "revisionHistoryLimit: 3\n  paused: false\n  minReadySecond: 1",
        "Additional properties are not allowed ('minReadySecond' was unexpected)",
    ),
    (
        "packaging/kubernetes/node/serve.toml",
        "redis = \"redis://tether-redis:6379/0\"",
        "",
        "not in cluster mode",
    ),
    (
        "packaging/kubernetes/entrypoint/app.yaml",
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: false",
        "container app: readOnlyRootFilesystem is not true",
    ),
    (
        "packaging/kubernetes/entrypoint/app.yaml",
        "runAsNonRoot: true",
        "runAsNonRoot: false",
        "container app: runAsNonRoot is not true",
    ),
    (
        "packaging/kubernetes/entrypoint/app.yaml",
        "--stop-timeout=20s",
        "--stop-timeout=40s",
        "must stay below terminationGracePeriodSeconds",
    ),
    (
        "packaging/kubernetes/entrypoint/kustomization.yaml",
        "resources:",
        "patches: []\nresources:",
        "patches: not supported by this checker",
    ),
    (
        "packaging/kubernetes/kustomization.yaml",
        "  - entrypoint\n",
        "",
        "packaging/kubernetes/entrypoint/app.yaml: the full kustomization (packaging/kubernetes) leaves it out",
    ),
    (
        "packaging/container/Containerfile",
        "FROM gcr.io/distroless/static-debian12:nonroot AS agent",
        "FROM docker.io/library/debian:bookworm-slim AS agent",
        "Containerfile stage agent: base docker.io/library/debian:bookworm-slim is not distroless",
    ),
    (
        "packaging/container/Containerfile",
        "COPY --from=build-agent /tether /usr/local/bin/tether\nUSER 65532:65532",
        "COPY --from=build-agent /tether /usr/local/bin/tether\nUSER 0",
        "Containerfile stage agent: USER 0",
    ),
    (
        "packaging/container/Containerfile",
        "build.sh --check agent",
        "build.sh --check full",
        "Containerfile stage agent: tether is not copied from a rust:1-bookworm stage that runs packaging/release/build.sh agent",
    ),
    (
        ".dockerignore",
        "target/\n**/target/\n",
        "",
        ".dockerignore keeps target/debug/tether",
    ),
    (
        ".dockerignore",
        ".git/\n",
        ".git/\ncrates/\n",
        ".dockerignore leaves out crates/core/Cargo.toml",
    ),
];

#[test]
fn the_check_catches_each_broken_manifest() {
    let work = Work::new();
    let roots: Vec<String> = BREAKAGES
        .iter()
        .enumerate()
        .map(|(i, (file, from, to, _))| {
            let root = broken_copy(&work.path(&format!("case{i}")), file, from, to);
            root.to_str().expect("utf-8 path").to_string()
        })
        .collect();
    // One run checks every copy, each under its own `== ROOT` line.
    let mut args = Vec::new();
    for root in &roots {
        args.extend(["--repo", root.as_str()]);
    }
    let (code, out) = check_py(&args);
    assert_eq!(code, 1, "{out}");
    let mut missed = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        let (file, from, to, want) = BREAKAGES[i];
        let section = out
            .split(&format!("== {root}\n"))
            .nth(1)
            .and_then(|rest| rest.split("\n== ").next())
            .unwrap_or_default();
        let clean = section.contains(": 0 problems");
        if clean || !section.contains(want) {
            missed.push(format!(
                "{file}: {from:?} -> {to:?}: wanted {want:?}, got:\n{section}"
            ));
        }
    }
    assert!(missed.is_empty(), "{}", missed.join("\n\n"));
}

/// A redis-server without persistence on a free loopback port; killed on drop.
struct Redis(Child, u16);

impl Redis {
    fn start(dir: &Path) -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let redis = Redis(child, port);
        wait_for("redis answering", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        redis
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The status of `GET PATH` on a loopback port, as a probe sees it (None: no answer).
fn status_of(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.split_whitespace().nth(1)?.parse().ok()
}

/// The args of one container of a kustomization, as check.py expands them.
fn manifest_args(dir: &str, workload: &str, container: &str) -> Vec<String> {
    let (code, out) = check_py(&["--container-args", dir, workload, container]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `path` with the pod's directories replaced by the test's.
fn remap(arg: &str, dirs: &[(&str, &Path)]) -> String {
    for (pod_dir, here) in dirs {
        if let Some(at) = arg.find(pod_dir) {
            let rest = &arg[at + pod_dir.len()..];
            if rest.is_empty() || rest.starts_with('/') {
                return format!("{}{}{rest}", &arg[..at], here.display());
            }
        }
    }
    arg.to_string()
}

#[test]
fn the_nodes_config_and_the_sidecars_args_work_for_real() {
    let w = Work::new();
    let redis = Redis::start(w.dir.path());

    // The node as node/node.yaml runs it: its flags, the shipped serve.toml, with the test's
    // Redis and a loopback port in place of the Service's.
    let node_dir = repo().join("packaging/kubernetes/node");
    let mut node_args: Vec<String> = manifest_args("node", "tether-node", "node")
        .into_iter()
        .skip(1) // serve (start_node adds it)
        .filter(|a| !a.starts_with("--listen="))
        .map(|a| remap(&a, &[("/etc/tether", &node_dir)]))
        .collect();
    assert!(
        node_args.iter().any(|a| a.ends_with("/node/serve.toml")),
        "{node_args:?}"
    );
    node_args.push(format!("--redis=redis://127.0.0.1:{}/0", redis.1));
    let refs: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let (node, port) = start_node(w.dir.path(), &refs);
    let base = format!("http://127.0.0.1:{port}");
    node.wait_for("the node ready (/readyz 200)", || {
        http_request("GET", &format!("{base}/readyz"), None, None).status == 200
    });

    // The demo agent token of sidecar/ is the one serve.toml's hash admits, for prod only.
    let token = fs::read_to_string(repo().join("packaging/kubernetes/sidecar/agent-token"))
        .expect("agent-token");
    let prod = format!("{base}/v1/envs/prod");
    assert_eq!(
        http_request("GET", &prod, Some(token.trim()), None).status,
        200
    );
    assert_eq!(
        http_request("GET", &prod, Some("not-the-token"), None).status,
        401
    );
    let other = format!("{base}/v1/envs/staging");
    assert_eq!(
        http_request("GET", &other, Some(token.trim()), None).status,
        403
    );

    // The sidecar as sidecar/app.yaml runs it, its volumes as directories here.
    for d in ["values", "token", "state", "run"] {
        fs::create_dir_all(w.path(d)).expect("mkdir");
    }
    fs::write(w.path("values/LOG_LEVEL"), "info").expect("value");
    fs::write(w.path("token/token"), &token).expect("token");
    let (values, tokdir, state, run) = (
        w.path("values"),
        w.path("token"),
        w.path("state"),
        w.path("run"),
    );
    let dirs: [(&str, &Path); 4] = [
        ("/etc/tether/values", &values),
        ("/etc/tether/token", &tokdir),
        ("/var/lib/tether", &state),
        ("/run/app", &run),
    ];
    let metrics_port = free_port();
    let mut has_metrics = false;
    let mut agent_args = Vec::new();
    for arg in manifest_args("sidecar", "legacy-app", "tether") {
        if arg.starts_with("--server=") {
            agent_args.push(format!("--server={base}"));
        } else if arg.starts_with("--listen-metrics=") {
            agent_args.push(format!("--listen-metrics=127.0.0.1:{metrics_port}"));
            has_metrics = true;
        } else {
            agent_args.push(remap(&arg, &dirs));
        }
    }
    let agent = Tether::start(w.dir.path(), &agent_args, &[]);
    let output = run.join("app.env");
    // A first render happens only once a node took the token (or from saved state).
    agent.wait_for("the sidecar's first render", || {
        fs::read_to_string(&output).is_ok_and(|s| s.contains("LOG_LEVEL=info"))
    });
    node.wait_for("the node counts the agent", || {
        http_request("GET", &format!("{base}/metrics"), None, None)
            .text
            .lines()
            .any(|l| l == "tether_agents_connected 1")
    });
    assert!(
        has_metrics,
        "the sidecar has a --listen-metrics flag for its probes"
    );
    agent.wait_for("the startup probe's /readyz 200", || {
        status_of(metrics_port, "/readyz") == Some(200)
    });
    drop(agent);
    drop(node);
    drop(redis);
}
