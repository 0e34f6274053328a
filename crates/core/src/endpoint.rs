//! Node addresses: `http(s)://` and `ws(s)://` base URLs, and the TLS settings for them.

use std::path::Path;
use std::sync::Arc;

/// `http(s)://` or `ws(s)://` base URL → the WebSocket endpoint.
pub fn ws_url(base: &str) -> Result<String, String> {
    let (scheme, rest) = split_url(base)?;
    let scheme = match scheme {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => unreachable!("split_url checks the scheme"),
    };
    Ok(format!("{scheme}://{}/v1/ws", rest.trim_end_matches('/')))
}

/// `http(s)://` or `ws(s)://` base URL → the HTTP base.
pub fn http_url(base: &str) -> Result<String, String> {
    let (scheme, rest) = split_url(base)?;
    let scheme = match scheme {
        "http" | "ws" => "http",
        _ => "https",
    };
    Ok(format!("{scheme}://{}", rest.trim_end_matches('/')))
}

fn split_url(base: &str) -> Result<(&str, &str), String> {
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| format!("{base:?} is not a URL like http://host:7070"))?;
    if !matches!(scheme, "http" | "https" | "ws" | "wss") {
        return Err(format!(
            "{base:?}: the scheme must be http, https, ws or wss"
        ));
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{base:?} has no host"));
    }
    if host.contains('@') {
        return Err("credentials do not go in the URL; use --token-file or TETHER_TOKEN".into());
    }
    if rest.contains(['?', '#']) {
        return Err(format!("{base:?}: a base URL has no query or fragment"));
    }
    Ok((scheme, rest))
}

/// The TLS settings for nodes: system roots plus the optional CA file.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            {
                let cert =
                    cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:7070").unwrap(),
            "ws://127.0.0.1:7070/v1/ws"
        );
        assert_eq!(
            ws_url("https://cfg.example/base/").unwrap(),
            "wss://cfg.example/base/v1/ws"
        );
        assert_eq!(ws_url("wss://h:1").unwrap(), "wss://h:1/v1/ws");
        assert_eq!(http_url("ws://h:1").unwrap(), "http://h:1");
        assert_eq!(http_url("wss://h/x").unwrap(), "https://h/x");
        assert!(ws_url("ftp://h").is_err());
        assert!(ws_url("h:7070").is_err());
        assert!(ws_url("http://user:pw@h").is_err());
        assert!(ws_url("http://").is_err());
    }
}
