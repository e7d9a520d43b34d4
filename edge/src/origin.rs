//! Which web pages may open `/ws`. A browser sends `Origin` with every
//! WebSocket handshake and lets any page open a socket to any host, with
//! the user's network position; so a handshake from another page's origin
//! is refused (403) unless the operator listed it. Same origin means the
//! `Origin`'s host and port are the request's `Host` (nginx passes the
//! client's `Host` through, so this holds behind it). A handshake without
//! `Origin` is not from a browser page (a native client, a test): allowed,
//! since such clients can send any header they like anyway.

/// The origins listed by the operator (`PARLEY_ALLOWED_ORIGINS`) besides
/// the page's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    /// Normalized `scheme://host[:port]`, lower case, no trailing `/`.
    listed: Vec<String>,
    /// `*` was listed: every origin.
    any: bool,
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" | "ws" => Some("80"),
        "https" | "wss" => Some("443"),
        _ => None,
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the host and port the
/// request was sent to (`Host`), a default port written or not.
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let authority = authority.split('/').next().unwrap_or_default();
    let host = host.trim().to_ascii_lowercase();
    if authority.is_empty() || host.is_empty() {
        return false;
    }
    if authority == host {
        return true;
    }
    let Some(port) = default_port(scheme) else {
        return false;
    };
    let with_port = |h: &str| format!("{h}:{port}");
    with_port(authority) == host || authority == with_port(&host)
}

impl AllowedOrigins {
    /// From the operator's list; `*` allows every origin, empty entries
    /// are skipped.
    pub fn new<S: AsRef<str>>(list: &[S]) -> Self {
        let listed: Vec<String> = list
            .iter()
            .map(|o| normalize(o.as_ref()))
            .filter(|o| !o.is_empty())
            .collect();
        Self {
            any: listed.iter().any(|o| o == "*"),
            listed,
        }
    }

    /// Whether a handshake with this `Origin` and `Host` may open a socket.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = normalize(origin);
        self.any
            || self.listed.contains(&origin)
            || host.is_some_and(|host| same_origin(&origin, host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_listed_or_none_is_allowed_and_nothing_else() {
        let none = AllowedOrigins::default();
        assert!(none.allows(None, Some("chat.example:8080")));
        assert!(none.allows(Some("http://chat.example:8080"), Some("chat.example:8080")));
        assert!(none.allows(Some("HTTPS://Chat.Example"), Some("chat.example")));
        assert!(none.allows(Some("https://chat.example"), Some("chat.example:443")));
        assert!(none.allows(Some("http://chat.example:80"), Some("chat.example")));
        for (origin, host) in [
            ("http://evil.example", "chat.example"),
            ("http://chat.example:8081", "chat.example:8080"),
            ("http://chat.example.evil.example", "chat.example"),
            ("null", "chat.example"),
            ("chat.example", "chat.example"),
            ("https://chat.example", "chat.example:80"),
        ] {
            assert!(!none.allows(Some(origin), Some(host)), "{origin} {host}");
        }
        assert!(!none.allows(Some("http://chat.example"), None));

        let listed = AllowedOrigins::new(&["https://app.example/", " ", "http://localhost:5173"]);
        assert!(listed.allows(Some("https://app.example"), Some("api.example")));
        assert!(listed.allows(Some("http://localhost:5173"), Some("api.example")));
        assert!(!listed.allows(Some("https://other.example"), Some("api.example")));
        assert!(AllowedOrigins::new(&["*"]).allows(Some("https://any.example"), None));
    }
}
