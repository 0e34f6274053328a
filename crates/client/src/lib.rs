//! The admin verbs: `tether put`, `get`, `rm`, `status`, `policy`, `rollout`, talking to a
//! node's HTTP API. The first node of `--server` that answers is used. `args` holds their
//! flags; `status` the rollout status, once or followed live (`--watch`); `rollout` the
//! node's rollout object as status prints and judges it; `policy` the rollout policy verbs
//! and `rollout resume`.

#![forbid(unsafe_code)]

pub mod args;
mod policy;
mod rollout;
mod status;

pub use policy::{policy, rollout};
pub use rollout::EXIT_HALTED;
pub use status::{EXIT_TIMEOUT, status};

use std::io::Read;
use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::args::{ClientArgs, GetArgs, PutArgs, RmArgs};
use tether_core::secret::Value;

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
            .map(|s| tether_core::endpoint::http_url(s))
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
            match self.call_one(base, method, path, body.as_ref()) {
                Err(ClientError::Unreachable(why)) => last = why,
                other => return other,
            }
        }
        Err(ClientError::Unreachable(last))
    }

    /// One request to one node. Unreachable (or 503) is `Unreachable`, so callers may try
    /// another node.
    fn call_one(
        &self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Json, ClientError> {
        let url = format!("{base}{path}");
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(
                "authorization",
                format!("Bearer {}", t.expose_str().unwrap_or_default()),
            );
        }
        let result = match body {
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
        let mut resp = result.map_err(|e| ClientError::Unreachable(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        if (200..300).contains(&status) {
            return Ok(json);
        }
        if status == 503 {
            return Err(ClientError::Unreachable(format!(
                "{url}: 503 {}",
                message(&json, &text)
            )));
        }
        Err(ClientError::Api {
            url,
            status,
            message: message(&json, &text),
        })
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
    let changes: Vec<Json> = values(&args.pairs, &mut std::io::stdin())?
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value, "secret": args.secret}))
        .collect();
    let mut body = json!({ "changes": changes });
    if let Some(v) = args.expect_version {
        body["expect_version"] = json!(v);
    }
    commit(&client, &args.env, body)
}

/// `NAME=VALUE`, `NAME=-` (the value is stdin) and `NAME=@FILE` arguments as names and values.
fn values(pairs: &[String], stdin: &mut dyn Read) -> Result<Vec<(String, String)>, ClientError> {
    let mut from_stdin: Option<usize> = None;
    let mut out = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        // Never echo the argument: it may be a value typed without its name.
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| ClientError::Usage(format!("argument {} is not NAME=VALUE", i + 1)))?;
        let value = if raw == "-" {
            if let Some(first) = from_stdin {
                return Err(ClientError::Usage(format!(
                    "arguments {} and {} both read stdin (`-`); only one value can come from it",
                    first + 1,
                    i + 1
                )));
            }
            from_stdin = Some(i);
            let mut s = String::new();
            stdin
                .read_to_string(&mut s)
                .map_err(|e| ClientError::Usage(format!("cannot read stdin: {e}")))?;
            s
        } else if let Some(path) = raw.strip_prefix('@') {
            std::fs::read_to_string(path)
                .map_err(|e| ClientError::Usage(format!("cannot read {path}: {e}")))?
        } else {
            raw.to_string()
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

pub fn rm(args: &RmArgs) -> Result<i32, ClientError> {
    let client = Client::new(&args.client)?;
    let changes: Vec<Json> = args
        .names
        .iter()
        .map(|n| json!({"name": n, "delete": true}))
        .collect();
    commit(&client, &args.env, json!({ "changes": changes }))
}

/// Post one change set and print the version it became.
fn commit(client: &Client, env: &str, body: Json) -> Result<i32, ClientError> {
    let r = client.call(
        "POST",
        &format!("/v1/envs/{}/changes", seg(env)),
        Some(body),
    )?;
    println!(
        "{env} at version {}",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_come_from_arguments_stdin_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v");
        std::fs::write(&file, "from file").unwrap();
        let at = format!("C=@{}", file.display());
        let got = values(
            &args(&["A=plain", "B=-", &at, "D=x=y"]),
            &mut std::io::Cursor::new("from stdin"),
        )
        .unwrap();
        let want = [
            ("A", "plain"),
            ("B", "from stdin"),
            ("C", "from file"),
            ("D", "x=y"),
        ];
        assert_eq!(got.len(), want.len());
        for ((n, v), (wn, wv)) in got.iter().zip(want) {
            assert_eq!((n.as_str(), v.as_str()), (wn, wv));
        }
    }

    #[test]
    fn stdin_can_give_only_one_value() {
        let e = values(&args(&["A=-", "B=-"]), &mut std::io::Cursor::new("v"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("arguments 1 and 2 both read stdin"), "{e}");
    }

    #[test]
    fn a_pair_without_equals_is_named_by_position_never_echoed() {
        let e = values(&args(&["A=1", "s3cr3t"]), &mut std::io::empty())
            .unwrap_err()
            .to_string();
        assert!(e.contains("argument 2 is not NAME=VALUE"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
