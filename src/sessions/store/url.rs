//! Store URLs: the four schemes parsed, passwords redacted for display and decoded for use.

/// Errors in a store URL.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StoreUrlError {
    #[error(
        "{0:?} is not a store URL (redis://, rediss://, redis-sentinel:// or redis-cluster://)"
    )]
    Scheme(String),
    #[error("{url:?}: {why}")]
    Invalid { url: String, why: String },
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    /// `redis://` or `rediss://`: one server (the URL as given).
    Single(String),
    /// `redis-sentinel://[:PASSWORD@]H1:P1,H2:P2/MASTER[/DB]`.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        /// The primary's password, still percent-encoded as written.
        password: Option<String>,
    },
    /// `redis-cluster://[:PASSWORD@]H1:P1,H2:P2,…`.
    Cluster {
        nodes: Vec<(String, u16)>,
        password: Option<String>,
    },
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, StoreUrlError> {
        let invalid = |why: &str| StoreUrlError::Invalid {
            url: redact(url),
            why: why.to_string(),
        };
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return match redis::IntoConnectionInfo::into_connection_info(url) {
                Ok(_) => Ok(StoreUrl::Single(url.to_string())),
                Err(e) => Err(invalid(&e.to_string())),
            };
        }
        let (sentinel, rest) = if let Some(r) = url.strip_prefix("redis-sentinel://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis-cluster://") {
            (false, r)
        } else {
            return Err(StoreUrlError::Scheme(redact(url)));
        };
        let (password, rest) = match rest.rsplit_once('@') {
            Some((userinfo, r)) => {
                let pw = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
                (Some(pw.to_string()).filter(|p| !p.is_empty()), r)
            }
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut nodes = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| invalid(&format!("{h:?} needs HOST:PORT")))?;
            let port: u16 = port
                .parse()
                .map_err(|_| invalid(&format!("{port:?} is not a port")))?;
            if host.is_empty() {
                return Err(invalid(&format!("{h:?} has no host")));
            }
            nodes.push((host.trim_matches(['[', ']']).to_string(), port));
        }
        if nodes.is_empty() {
            return Err(invalid("no HOST:PORT given"));
        }
        if !sentinel {
            if !path.is_empty() {
                return Err(invalid("a cluster has no database part"));
            }
            return Ok(StoreUrl::Cluster { nodes, password });
        }
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or("").to_string();
        if master.is_empty() {
            return Err(invalid(
                "needs the master name: redis-sentinel://H1:P1,H2:P2/MASTER/DB",
            ));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => d
                .parse()
                .map_err(|_| invalid(&format!("{d:?} is not a database number")))?,
        };
        if parts.next().is_some() {
            return Err(invalid("too many path parts"));
        }
        Ok(StoreUrl::Sentinel {
            sentinels: nodes,
            master,
            db,
            password,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StoreUrl::Single(u) if u.starts_with("rediss://") => "rediss",
            StoreUrl::Single(_) => "redis",
            StoreUrl::Sentinel { .. } => "redis-sentinel",
            StoreUrl::Cluster { .. } => "redis-cluster",
        }
    }
}

/// `url` with any password replaced by `***` (for logs and `/status`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (hosts, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match hosts.rsplit_once('@') {
        Some((userinfo, h)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{h}{path}")
        }
        None => url.to_string(),
    }
}

/// `host` for a URL (IPv6 literals in brackets).
pub(super) fn host_part(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

pub(super) fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_store_url() {
        assert_eq!(
            StoreUrl::parse("redis://127.0.0.1:6379/0"),
            Ok(StoreUrl::Single("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            StoreUrl::parse("rediss://:pw@h:6380/1").unwrap().kind(),
            "rediss"
        );
        assert_eq!(
            StoreUrl::parse("redis-sentinel://:s%40cret@10.0.0.1:26379,10.0.0.2:26379/mymaster/2"),
            Ok(StoreUrl::Sentinel {
                sentinels: vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26379)],
                master: "mymaster".into(),
                db: 2,
                password: Some("s%40cret".into()),
            })
        );
        assert_eq!(
            StoreUrl::parse("redis-cluster://a:7000,b:7001"),
            Ok(StoreUrl::Cluster {
                nodes: vec![("a".into(), 7000), ("b".into(), 7001)],
                password: None,
            })
        );
        for bad in [
            "http://x",
            "redis-cluster://a:7000/0",
            "redis-cluster://",
            "redis-sentinel://a:1/",
            "redis-sentinel://a:x/m",
            "redis-sentinel://a:1/m/zero",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn passwords_are_redacted_and_decoded() {
        assert_eq!(
            redact("redis-cluster://:hunter2@a:1,b:2"),
            "redis-cluster://:***@a:1,b:2"
        );
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(percent_decode("s%40cret%"), "s@cret%");
        assert!(!format!(
            "{}",
            StoreUrl::parse("redis-cluster://:hunter2@a:x").unwrap_err()
        )
        .contains("hunter2"));
    }
}
