//! The admin verbs: `tether put`, `get`, `rm`, `status`, talking to a node's HTTP API.
//! The first node of `--server` that answers is used.

use std::io::Read;
use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::cli::{ClientArgs, GetArgs, PutArgs, RmArgs, StatusArgs};
use crate::secret::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("{status} from {url}: {message}")]
    Api {
        url: String,
        status: u16,
        message: String,
    },
    #[error("no node answered: {0}")]
    Unreachable(String),
}

struct Client {
    bases: Vec<String>,
    token: Option<Value>,
    agent: ureq::Agent,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Client, ClientError> {
        let bases = args
            .servers
            .iter()
            .map(|s| crate::source::net::http_url(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientError::Usage)?;
        let token = match &args.token_file {
            Some(p) => Some(Value::from(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        ClientError::Usage(format!("cannot read token file {}: {e}", p.display()))
                    })?
                    .trim(),
            )),
            None => std::env::var("TETHER_TOKEN")
                .ok()
                .map(|t| Value::from(t.trim())),
        };
        let mut cfg = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false);
        if let Some(ca) = &args.ca_file {
            use ureq::tls::{Certificate, RootCerts, TlsConfig};
            let pem = std::fs::read(ca)
                .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", ca.display())))?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(ClientError::Usage(format!(
                    "no certificate in {}",
                    ca.display()
                )));
            }
            cfg = cfg.tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Client {
            bases,
            token,
            agent: cfg.build().new_agent(),
        })
    }

    /// Send a request to the first node that answers; return the JSON body of a 2xx.
    fn call(&self, method: &str, path: &str, body: Option<Json>) -> Result<Json, ClientError> {
        let mut last = String::new();
        for base in &self.bases {
            let url = format!("{base}{path}");
            let mut req = ureq::http::Request::builder().method(method).uri(&url);
            if let Some(t) = &self.token {
                req = req.header(
                    "authorization",
                    format!("Bearer {}", t.expose_str().unwrap_or_default()),
                );
            }
            let result = match &body {
                Some(b) => {
                    let req = req
                        .header("content-type", "application/json")
                        .body(b.to_string())
                        .map_err(|e| ClientError::Usage(e.to_string()))?;
                    self.agent.run(req)
                }
                None => {
                    let req = req
                        .body(())
                        .map_err(|e| ClientError::Usage(e.to_string()))?;
                    self.agent.run(req)
                }
            };
            let mut resp = match result {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let json: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
            if (200..300).contains(&status) {
                return Ok(json);
            }
            if status == 503 {
                last = format!("{url}: 503 {}", message(&json, &text));
                continue;
            }
            return Err(ClientError::Api {
                url,
                status,
                message: message(&json, &text),
            });
        }
        Err(ClientError::Unreachable(last))
    }
}

fn message(json: &Json, text: &str) -> String {
    json.pointer("/error/message")
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect())
}

fn seg(s: &str) -> String {
    // Percent-encode a path segment.
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn put(args: &PutArgs) -> Result<i32, ClientError> {
    let client = Client::new(&args.client)?;
    let mut changes = Vec::new();
    for (i, pair) in args.pairs.iter().enumerate() {
        // Never echo the argument: it may be a value typed without its name.
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| ClientError::Usage(format!("argument {} is not NAME=VALUE", i + 1)))?;
        let value = if raw == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| ClientError::Usage(format!("cannot read stdin: {e}")))?;
            s
        } else if let Some(path) = raw.strip_prefix('@') {
            std::fs::read_to_string(path)
                .map_err(|e| ClientError::Usage(format!("cannot read {path}: {e}")))?
        } else {
            raw.to_string()
        };
        changes.push(json!({"name": name, "value": value, "secret": args.secret}));
    }
    let mut body = json!({ "changes": changes });
    if let Some(v) = args.expect_version {
        body["expect_version"] = json!(v);
    }
    let r = client.call(
        "POST",
        &format!("/v1/envs/{}/changes", seg(&args.env)),
        Some(body),
    )?;
    println!(
        "{} at version {}",
        args.env,
        r.pointer("/position/version").unwrap_or(&Json::Null)
    );
    Ok(0)
}

pub fn rm(args: &RmArgs) -> Result<i32, ClientError> {
    let client = Client::new(&args.client)?;
    let changes: Vec<Json> = args
        .names
        .iter()
        .map(|n| json!({"name": n, "delete": true}))
        .collect();
    let r = client.call(
        "POST",
        &format!("/v1/envs/{}/changes", seg(&args.env)),
        Some(json!({ "changes": changes })),
    )?;
    println!(
        "{} at version {}",
        args.env,
        r.pointer("/position/version").unwrap_or(&Json::Null)
    );
    Ok(0)
}

pub fn get(args: &GetArgs) -> Result<i32, ClientError> {
    let client = Client::new(&args.client)?;
    let r = client.call("GET", &format!("/v1/envs/{}", seg(&args.env)), None)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(0);
    }
    let entries = r
        .get("entries")
        .and_then(|e| e.as_array())
        .cloned()
        .unwrap_or_default();
    if let Some(name) = &args.name {
        let found = entries
            .iter()
            .find(|e| e.get("name").and_then(|n| n.as_str()) == Some(name));
        return match found.and_then(|e| e.get("value")).and_then(|v| v.as_str()) {
            Some(v) => {
                println!("{v}");
                Ok(0)
            }
            None => Err(ClientError::Api {
                url: args.client.servers.join(","),
                status: 404,
                message: format!(
                    "no entry {name:?} in {} (or it is a secret this token may not read)",
                    args.env
                ),
            }),
        };
    }
    for e in entries {
        let name = e.get("name").and_then(|n| n.as_str()).unwrap_or("");
        match e.get("value").and_then(|v| v.as_str()) {
            Some(v) => println!("{name}={v}"),
            None => println!("{name}=<withheld>"),
        }
    }
    Ok(0)
}

pub fn status(args: &StatusArgs) -> Result<i32, ClientError> {
    let client = Client::new(&args.client)?;
    let envs: Vec<String> = match &args.env {
        Some(e) => vec![e.clone()],
        None => client
            .call("GET", "/v1/envs", None)?
            .get("envs")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get("env")?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    };
    for env in envs {
        let r = client.call("GET", &format!("/v1/envs/{}/status", seg(&env)), None)?;
        if args.json {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            continue;
        }
        println!(
            "{env}: version {}, {} agent(s) on this node, {} current",
            r.pointer("/position/version").unwrap_or(&Json::Null),
            r.get("agents").unwrap_or(&Json::Null),
            r.get("current").unwrap_or(&Json::Null),
        );
        if let Some(map) = r.get("by_version").and_then(|m| m.as_object()) {
            for (v, n) in map {
                println!("  version {v}: {n}");
            }
        }
    }
    Ok(0)
}
