//! The `Origin` allow-list that stops cross-site WebSocket hijacking: a browser page on a
//! foreign site cannot open a socket that rides on the user's credentials.

/// Which `Origin`s may open a WebSocket.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Exact origins (`scheme://host[:port]`, lower-cased, no trailing slash).
    allowed: Vec<String>,
    /// Whether a handshake without `Origin` (a non-browser client) is refused.
    refuse_missing: bool,
    /// Dev mode: any `http://127.0.0.1:*`, `http://localhost:*`, `http://[::1]:*`.
    allow_loopback: bool,
}

impl OriginPolicy {
    /// A policy from the configured list.
    pub fn new(allowed: &[String], refuse_missing: bool, allow_loopback: bool) -> Self {
        Self {
            allowed: allowed
                .iter()
                .map(|o| normalise(o))
                .filter(|o| !o.is_empty())
                .collect(),
            refuse_missing,
            allow_loopback,
        }
    }

    /// Whether a handshake with this `Origin` header (or none) may go on.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return !self.refuse_missing;
        };
        let origin = normalise(origin);
        self.allowed.contains(&origin) || (self.allow_loopback && is_loopback_origin(&origin))
    }
}

fn normalise(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `http://127.0.0.1[:port]`, `http://localhost[:port]` or `http://[::1][:port]`.
pub fn is_loopback_origin(origin: &str) -> bool {
    let origin = normalise(origin);
    let Some(rest) = origin.strip_prefix("http://") else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix("[::1]") {
        return v6.is_empty() || port_only(v6);
    } else {
        rest
    };
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    (name == "127.0.0.1" || name == "localhost")
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn port_only(rest: &str) -> bool {
    rest.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_pass_and_missing_is_allowed_by_default() {
        let p = OriginPolicy::new(&["https://chat.example/".into()], false, false);
        assert!(p.allows(Some("https://chat.example")));
        assert!(p.allows(Some("HTTPS://Chat.Example")));
        assert!(!p.allows(Some("https://evil.example")));
        assert!(!p.allows(Some("https://chat.example.evil")));
        assert!(!p.allows(Some("http://127.0.0.1:3000")));
        assert!(!p.allows(Some("null")));
        assert!(p.allows(None));
        let strict = OriginPolicy::new(&[], true, false);
        assert!(!strict.allows(None));
    }

    #[test]
    fn dev_mode_allows_loopback_origins_on_any_port() {
        let p = OriginPolicy::new(&[], false, true);
        assert!(p.allows(Some("http://127.0.0.1:41234")));
        assert!(p.allows(Some("http://localhost:8080")));
        assert!(p.allows(Some("http://localhost")));
        assert!(p.allows(Some("http://[::1]:9000")));
        assert!(!p.allows(Some("http://localhost.evil.example")));
        assert!(!p.allows(Some("http://127.0.0.1.evil:80")));
        assert!(!p.allows(Some("https://evil.example")));
        assert!(!p.allows(Some("http://127.0.0.1:80@evil")));
    }
}
