//! Tomcat-style route affinity (mod_proxy_balancer `stickysession`): the jvmRoute after the
//! first '.' of the session id, from a `;jsessionid=` path parameter or the session cookie.

/// The session id: the `;<param>=` path parameter (checked first), else the cookie value.
pub fn session_id<'a>(path: &'a str, cookie: Option<&'a [u8]>, param: &str) -> Option<&'a [u8]> {
    path_param(path, param).or(cookie).filter(|v| !v.is_empty())
}

/// The value of `;name=value` in a path (up to the next ';', '?' or '/'); byte-wise, so any
/// path is safe.
fn path_param<'a>(path: &'a str, name: &str) -> Option<&'a [u8]> {
    let bytes = path.as_bytes();
    let name = name.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, &b)| b == b';') {
        let rest = &bytes[i + 1..];
        let matches = rest
            .get(..name.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(name))
            && rest.get(name.len()) == Some(&b'=');
        if matches {
            let value = &rest[name.len() + 1..];
            let end = value
                .iter()
                .position(|b| matches!(b, b';' | b'?' | b'/'))
                .unwrap_or(value.len());
            return Some(&value[..end]);
        }
    }
    None
}

/// The route of a session id: everything after the first '.'.
pub fn route_of(session: &[u8]) -> Option<&[u8]> {
    let dot = session.iter().position(|&b| b == b'.')?;
    let r = &session[dot + 1..];
    (!r.is_empty()).then_some(r)
}

/// The session id without its route (the part that identifies the session).
pub fn session_key(session: &[u8]) -> &[u8] {
    match session.iter().position(|&b| b == b'.') {
        Some(dot) => &session[..dot],
        None => session,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameter_wins_over_cookie() {
        let p = "/app/cart;jsessionid=ABC.node2?x=1";
        assert_eq!(
            session_id(p, Some(b"DEF.node1"), "jsessionid"),
            Some(&b"ABC.node2"[..])
        );
        assert_eq!(
            session_id("/app/cart", Some(b"DEF.node1"), "jsessionid"),
            Some(&b"DEF.node1"[..])
        );
        assert_eq!(
            session_id("/a;JSESSIONID=X.n3/b", None, "jsessionid"),
            Some(&b"X.n3"[..])
        );
        assert_eq!(session_id("/a;other=1", None, "jsessionid"), None);
        assert_eq!(session_id("/a;jsessionid=", Some(b""), "jsessionid"), None);
    }

    #[test]
    fn route_is_after_the_first_dot() {
        assert_eq!(route_of(b"8F3A.node1"), Some(&b"node1"[..]));
        assert_eq!(route_of(b"8F3A.node1.extra"), Some(&b"node1.extra"[..]));
        assert_eq!(route_of(b"8F3A"), None);
        assert_eq!(route_of(b"8F3A."), None);
        assert_eq!(session_key(b"8F3A.node1"), b"8F3A");
    }
}
