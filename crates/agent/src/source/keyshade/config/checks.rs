//! Checks of the keyshade settings' values: slugs and the API's base URL.

/// A keyshade slug goes into URL paths: letters, digits, `-`, `_`, `.`, `~` only.
pub(super) fn check_slug(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a keyshade slug (letters, digits, '-', '_', '.', '~')"
        ))
    }
}

/// `http(s)://host[:port][/path]`, returned without a trailing slash.
pub fn check_base_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not a URL like https://api.keyshade.xyz"
        ));
    };
    match scheme {
        "http" | "https" => {}
        "ws" | "wss" => {
            return Err(format!(
                "{url:?}: give the API's http(s):// base URL; the socket's address is derived \
                 from it"
            ));
        }
        _ => return Err(format!("{url:?}: the scheme must be http or https")),
    }
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if host.contains('@') {
        return Err(
            "credentials do not go in the URL; use token_file or --keyshade-token-file".into(),
        );
    }
    if rest.contains(['?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{url:?}: a base URL has no query, fragment or spaces"
        ));
    }
    Ok(format!("{scheme}://{}", rest.trim_end_matches('/')))
}
