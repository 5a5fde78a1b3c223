//! NBD URIs as the NBD URI specification writes them: `nbd://host[:port]/export` and
//! `nbd+unix:///export?socket=PATH`. TLS (`nbds://`, `nbds+unix://`) is refused for now.

use std::path::PathBuf;

use super::NbdError;

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP: host and port.
    Tcp(String, u16),
    /// A Unix domain socket.
    Unix(PathBuf),
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The export name (may be empty: the server's default export).
    pub export: String,
}

/// Whether `s` is meant as an NBD URI (its scheme is `nbd`, `nbds`, or one of their `+unix`,
/// `+vsock` forms), so a path like that is never taken for a file.
pub fn is_nbd_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    matches!(
        scheme,
        "nbd" | "nbds" | "nbd+unix" | "nbds+unix" | "nbd+vsock" | "nbds+vsock"
    )
}

fn bad(_uri: &str, why: impl std::fmt::Display) -> NbdError {
    NbdError::Uri(why.to_string())
}

fn percent_decode(uri: &str, s: &str) -> Result<String, NbdError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(uri, "bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(uri, "not UTF-8 after %-decoding"))
}

/// Parse an NBD URI.
pub fn parse(uri: &str) -> Result<NbdUri, NbdError> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad(uri, "not an NBD URI"))?;
    let unix = match scheme {
        "nbd" => false,
        "nbd+unix" => true,
        "nbds" | "nbds+unix" | "nbds+vsock" => {
            return Err(bad(
                uri,
                "NBD over TLS is not supported yet; export without TLS on a Unix socket or a trusted network, or tunnel it (ssh -L)",
            ))
        }
        "nbd+vsock" => return Err(bad(uri, "NBD over vsock is not supported")),
        _ => return Err(bad(uri, "not an NBD URI")),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    if rest.contains('#') || query.is_some_and(|q| q.contains('#')) {
        return Err(bad(uri, "a fragment (#) is not allowed"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let export = percent_decode(uri, path.strip_prefix('/').unwrap_or(path))?;
    let mut socket = None;
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "socket" => socket = Some(PathBuf::from(percent_decode(uri, v)?)),
            k if k.starts_with("tls") => {
                return Err(bad(uri, format!("`{k}`: TLS is not supported yet")))
            }
            _ => {} // unknown parameters are ignored, as the URI specification allows
        }
    }
    let endpoint = if unix {
        if !authority.is_empty() {
            return Err(bad(
                uri,
                "nbd+unix:// takes no host (write nbd+unix:///EXPORT?socket=PATH)",
            ));
        }
        Endpoint::Unix(socket.ok_or_else(|| bad(uri, "nbd+unix:// needs ?socket=PATH"))?)
    } else {
        if socket.is_some() {
            return Err(bad(uri, "?socket= is for nbd+unix:// URIs"));
        }
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, tail) = v6
                .split_once(']')
                .ok_or_else(|| bad(uri, "unclosed [ in host"))?;
            (h, tail.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad(uri, "no host"));
        }
        let port = match port {
            None | Some("") => 10809,
            Some(p) => p
                .parse()
                .map_err(|_| bad(uri, format!("`{p}` is not a port")))?,
        };
        Endpoint::Tcp(host.to_string(), port)
    };
    Ok(NbdUri { endpoint, export })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix() {
        let u = parse("nbd://example.com:1234/vda").unwrap();
        assert_eq!(u.endpoint, Endpoint::Tcp("example.com".into(), 1234));
        assert_eq!(u.export, "vda");
        let u = parse("nbd://[::1]/").unwrap();
        assert_eq!(u.endpoint, Endpoint::Tcp("::1".into(), 10809));
        assert_eq!(u.export, "");
        let u = parse("nbd+unix:///my%20disk?socket=/run/a%3Ab.sock").unwrap();
        assert_eq!(u.endpoint, Endpoint::Unix("/run/a:b.sock".into()));
        assert_eq!(u.export, "my disk");
        let u = parse("nbd+unix://?socket=/s").unwrap();
        assert_eq!(u.export, "");
    }

    #[test]
    fn refusals_say_why() {
        for (uri, why) in [
            ("nbds://h/e", "TLS"),
            ("nbds+unix:///e?socket=/s", "TLS"),
            ("nbd+unix:///e", "socket="),
            ("nbd+unix://host/e?socket=/s", "no host"),
            ("nbd://h:99999/e", "port"),
            ("nbd:///e", "no host"),
            ("nbd://h/%zz", "%-escape"),
            ("nbd://h/e?tls-certificates=/x", "TLS"),
        ] {
            let e = parse(uri).unwrap_err().to_string();
            assert!(e.contains(why), "{uri}: {e}");
        }
        assert!(is_nbd_uri("nbds://x/"));
        assert!(!is_nbd_uri("/dev/sda"));
        assert!(!is_nbd_uri("nbd.img"));
    }
}
