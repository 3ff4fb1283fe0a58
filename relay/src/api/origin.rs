//! Which browsers' pages may talk to the relay: the `Origin` of a
//! WebSocket upgrade (a page on another site must not open a socket with
//! the user's network position), and the `Host` of every request (DNS
//! rebinding: a hostile name that resolves to the relay's address).
//! Pure functions of the headers and the config, tested by table.

/// An origin, normalised: lower-case scheme and host, explicit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into a lower-case host without
/// brackets and the port if present.
pub fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (host, port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse().ok()?)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// Parses `scheme://host[:port]` (no path).
pub fn parse_origin(text: &str) -> Option<Origin> {
    let (scheme, rest) = text.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = split_host_port(rest)?;
    let port = port.or_else(|| default_port(&scheme))?;
    Some(Origin { scheme, host, port })
}

/// `localhost`, `*.localhost`, 127.0.0.0/8, `::1`.
pub fn is_loopback_name(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The allow-lists, as the config and the listener give them.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    origins: Vec<Origin>,
    /// `None`: any host.
    hosts: Option<Vec<String>>,
    loopback_listener: bool,
}

impl OriginPolicy {
    pub fn new(
        allowed_origins: &[String],
        allowed_hosts: Option<&[String]>,
        loopback_listener: bool,
    ) -> Self {
        let hosts = match allowed_hosts {
            Some(hosts) => Some(hosts.iter().map(|h| h.to_ascii_lowercase()).collect()),
            // Loopback: only loopback names, which is what a local browser
            // uses, and what a rebinding attacker cannot forge.
            None if loopback_listener => Some(Vec::new()),
            None => None,
        };
        OriginPolicy {
            origins: allowed_origins
                .iter()
                .filter_map(|o| parse_origin(o))
                .collect(),
            hosts,
            loopback_listener,
        }
    }

    /// Whether no `Host` check applies (unset on a public listener).
    pub fn any_host(&self) -> bool {
        self.hosts.is_none()
    }

    /// Whether a request naming `host` (the `Host` header) is served.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(hosts) = &self.hosts else {
            return true;
        };
        // HTTP/1.1 requires Host; a request without one is not a browser's.
        let Some((name, _)) = host.and_then(split_host_port) else {
            return host.is_none();
        };
        (self.loopback_listener && is_loopback_name(&name))
            || hosts.iter().any(|h| *h == name || h == "*")
    }

    /// Whether a WebSocket upgrade with `origin` (the `Origin` header) to
    /// `host` (the `Host` header) is accepted.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            // No Origin: not a browser page (scripts, tools).
            return true;
        };
        let Some(origin) = parse_origin(origin) else {
            // `null` (sandboxed pages, file://) and garbage.
            return false;
        };
        if self.origins.contains(&origin) {
            return true;
        }
        if self.loopback_listener && is_loopback_name(&origin.host) {
            return true;
        }
        // The relay's own origin: the page came from this Host. The
        // scheme may differ from the listener's behind a TLS proxy, so the
        // port of the Host defaults to the origin scheme's.
        match host.and_then(split_host_port) {
            Some((name, port)) => {
                name == origin.host
                    && port.or_else(|| default_port(&origin.scheme)) == Some(origin.port)
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_normalise() {
        let o = |s| parse_origin(s);
        assert_eq!(
            o("HTTPS://Ops.Example.com"),
            Some(Origin {
                scheme: "https".into(),
                host: "ops.example.com".into(),
                port: 443
            })
        );
        assert_eq!(o("http://[::1]:3000").map(|o| o.port), Some(3000));
        assert_eq!(o("http://[::1]:3000").map(|o| o.host), Some("::1".into()));
        assert_eq!(o("null"), None);
        assert_eq!(o("evil.example"), None);
        assert_eq!(o("ftp://x.example"), None, "no default port");
        assert_eq!(o("http://x.example:99999"), None);
    }

    #[test]
    fn origin_table() {
        let public = OriginPolicy::new(&["https://ops.example.com".into()], None, false);
        let local = OriginPolicy::new(&[], None, true);
        // (policy, origin, host, allowed)
        let table: &[(&OriginPolicy, Option<&str>, Option<&str>, bool)] = &[
            (&public, None, Some("relay:3000"), true),
            (
                &public,
                Some("http://evil.example"),
                Some("relay:3000"),
                false,
            ),
            (
                &public,
                Some("https://ops.example.com"),
                Some("relay:3000"),
                true,
            ),
            (
                &public,
                Some("https://ops.example.com:8443"),
                Some("relay"),
                false,
            ),
            (&public, Some("http://relay:3000"), Some("relay:3000"), true),
            (
                &public,
                Some("http://relay:3001"),
                Some("relay:3000"),
                false,
            ),
            (
                &public,
                Some("https://relay.example"),
                Some("relay.example"),
                true,
            ),
            (&public, Some("null"), Some("relay:3000"), false),
            (
                &public,
                Some("http://localhost:5173"),
                Some("relay:3000"),
                false,
            ),
            (
                &local,
                Some("http://localhost:5173"),
                Some("127.0.0.1:3000"),
                true,
            ),
            (
                &local,
                Some("http://127.0.0.1:8080"),
                Some("127.0.0.1:3000"),
                true,
            ),
            (
                &local,
                Some("http://evil.example"),
                Some("127.0.0.1:3000"),
                false,
            ),
        ];
        for (i, (policy, origin, host, allowed)) in table.iter().enumerate() {
            assert_eq!(
                policy.origin_allowed(*origin, *host),
                *allowed,
                "row {i}: {origin:?} → {host:?}"
            );
        }
    }

    #[test]
    fn host_table() {
        let local = OriginPolicy::new(&[], None, true);
        let public = OriginPolicy::new(&[], None, false);
        let listed = OriginPolicy::new(&[], Some(&["relay.example".into()]), false);
        let table: &[(&OriginPolicy, Option<&str>, bool)] = &[
            (&local, Some("127.0.0.1:3000"), true),
            (&local, Some("localhost:3000"), true),
            (&local, Some("[::1]:3000"), true),
            (&local, Some("app.localhost"), true),
            (&local, Some("rebind.evil.example:3000"), false),
            (&local, None, true),
            (&public, Some("anything.example"), true),
            (&listed, Some("Relay.Example:443"), true),
            (&listed, Some("other.example"), false),
            (&listed, Some("bad host"), false),
        ];
        for (i, (policy, host, allowed)) in table.iter().enumerate() {
            assert_eq!(policy.host_allowed(*host), *allowed, "row {i}: {host:?}");
        }
        assert!(public.any_host() && !local.any_host());
    }
}
