//! Learned sessions (nginx `sticky learn`): which application session cookies a response
//! sets or deletes. The table they are learned into is a [`crate::sessions::SessionTable`].

use super::cookie::trim;

/// The values of cookie `name` set by `Set-Cookie` header values, with whether each deletes
/// the cookie (`Max-Age=0` or an empty value).
pub fn set_cookie_values<'a>(
    headers: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Vec<(&'a [u8], bool)> {
    let name = name.as_bytes();
    headers
        .filter_map(|h| {
            let mut parts = h.split(|&b| b == b';');
            let first = trim(parts.next()?);
            let value = first.strip_prefix(name)?.strip_prefix(b"=")?;
            let value = trim(value);
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            let deleted = value.is_empty()
                || parts.any(|a| {
                    let a = trim(a);
                    a.len() >= 9
                        && a[..8].eq_ignore_ascii_case(b"max-age=")
                        && matches!(&a[8..], b"0" | b"-1")
                });
            Some((value, deleted))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_cookie_values_and_deletions() {
        let hs: Vec<&[u8]> = vec![
            b"session=abc123; Path=/; HttpOnly",
            b"other=1",
            b"session=; Max-Age=0",
            b"session=\"quoted\"",
            b"session=gone; Max-Age=0; Path=/",
        ];
        let got = set_cookie_values(hs.into_iter(), "session");
        assert_eq!(
            got,
            vec![
                (&b"abc123"[..], false),
                (&b""[..], true),
                (&b"quoted"[..], false),
                (&b"gone"[..], true)
            ]
        );
    }
}
