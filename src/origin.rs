//! The Origin rule of the WebSocket handshake, against cross-site WebSocket hijacking: a
//! browser sends the `herald_token` cookie with any page's upgrade request, so a request
//! that carries `Origin` is accepted only from the same origin as its `Host`, or from an
//! origin the operator allowed with `--allowed-origins`. Requests without `Origin`
//! (services, native apps) are not browsers acting for another site and pass.

use thiserror::Error;

/// One entry of `--allowed-origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: every origin.
    Any,
    /// `https://app.example` (scheme, host and port, normalised).
    Exact(String),
    /// `https://*.shop.example`: any subdomain of `shop.example`, at any depth.
    Subdomains { scheme: String, suffix: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<Pattern>);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is not an origin: use scheme://host[:port], https://*.domain, or *")]
pub struct BadOrigin(String);

impl AllowedOrigins {
    pub fn parse(list: &[String]) -> Result<AllowedOrigins, BadOrigin> {
        let mut patterns = Vec::new();
        for raw in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if raw == "*" {
                patterns.push(Pattern::Any);
                continue;
            }
            let bad = || BadOrigin(raw.to_string());
            let (scheme, host) = split_origin(raw).ok_or_else(bad)?;
            if let Some(suffix) = host.strip_prefix("*.") {
                if suffix.is_empty() || suffix.contains('*') {
                    return Err(bad());
                }
                patterns.push(Pattern::Subdomains {
                    scheme,
                    suffix: format!(".{suffix}"),
                });
            } else if host.contains('*') {
                return Err(bad());
            } else {
                patterns.push(Pattern::Exact(format!("{scheme}://{host}")));
            }
        }
        Ok(AllowedOrigins(patterns))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a handshake with this `Origin` and `Host` may proceed.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.0.contains(&Pattern::Any) {
            return true;
        }
        let Some((scheme, authority)) = split_origin(origin) else {
            // `null` (sandboxed frames, file pages) and anything unparsable.
            return false;
        };
        if host.is_some_and(|h| same_authority(&scheme, &authority, h)) {
            return true;
        }
        let full = format!("{scheme}://{authority}");
        self.0.iter().any(|p| match p {
            Pattern::Any => true,
            Pattern::Exact(o) => *o == full,
            Pattern::Subdomains { scheme: s, suffix } => {
                *s == scheme && host_part(&authority).ends_with(suffix.as_str())
            }
        })
    }
}

/// `scheme://host[:port]` into a lower-case scheme and a host[:port] without the scheme's
/// default port. None for anything else (paths, user info, `null`).
fn split_origin(origin: &str) -> Option<(String, String)> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty() || rest.is_empty() || rest.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let authority = rest.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => "",
    };
    let authority = match authority.strip_suffix(default) {
        Some(a) if !default.is_empty() => a.to_string(),
        _ => authority,
    };
    Some((scheme, authority))
}

fn host_part(authority: &str) -> &str {
    if authority.starts_with('[') {
        // An IPv6 literal: the port follows the bracket.
        return authority.split_once(']').map_or(authority, |(h, _)| h);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Same origin: the Origin's host[:port] is the request's Host, default ports aside.
fn same_authority(scheme: &str, authority: &str, host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    if host == authority {
        return true;
    }
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return false,
    };
    host.strip_suffix(default) == Some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(list: &[&str]) -> AllowedOrigins {
        AllowedOrigins::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn same_origin_is_always_allowed() {
        let none = AllowedOrigins::default();
        assert!(none.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(none.allows("https://shop.example", Some("shop.example:443")));
        assert!(none.allows("HTTP://Shop.Example:80", Some("shop.example")));
        assert!(!none.allows("https://evil.example", Some("shop.example")));
        assert!(!none.allows("http://127.0.0.1:9999", Some("127.0.0.1:8080")));
        assert!(!none.allows("null", Some("shop.example")));
    }

    #[test]
    fn listed_origins_and_wildcard_labels_match() {
        let a = allowed(&["https://app.example", "https://*.shop.example"]);
        assert!(a.allows("https://app.example", Some("hub")));
        assert!(a.allows("https://app.example:443", Some("hub")));
        assert!(
            !a.allows("http://app.example", Some("hub")),
            "scheme counts"
        );
        assert!(a.allows("https://a.shop.example", Some("hub")));
        assert!(a.allows("https://a.b.shop.example:8443", Some("hub")));
        assert!(!a.allows("https://shop.example", Some("hub")));
        assert!(!a.allows("https://evilshop.example", Some("hub")));
        assert!(!a.allows("https://shop.example.evil.example", Some("hub")));
        assert!(allowed(&["*"]).allows("null", None));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "app.example",
            "https://",
            "https://a/b",
            "https://*",
            "https://a.*.b",
        ] {
            assert!(AllowedOrigins::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
