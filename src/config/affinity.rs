//! `[pools.NAME.cookie]`, `.route`, `.learn` and `.remember`: each affinity mode's own settings.

use toml_edit::TableLike;

use super::reader::{as_bool, as_choice, as_duration, as_int, as_str, join, Reader};
use super::{CookieConfig, LearnConfig, RememberConfig, RouteConfig, SameSite, Secure};

fn token_name(what: &str) -> impl Fn(&toml_edit::Value) -> Result<String, String> + '_ {
    move |v| {
        as_str(v).and_then(|s| {
            let ok = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if ok {
                Ok(s)
            } else {
                Err(format!("{s:?} is not a valid {what}"))
            }
        })
    }
}

pub(super) fn read_route(r: &mut Reader, t: &dyn TableLike, path: &str) -> RouteConfig {
    r.check_keys(t, path, &["cookie", "url_param"]);
    let mut c = RouteConfig::default();
    if let Some(v) = r.opt(t, path, "cookie", token_name("cookie name")) {
        c.cookie = v;
    }
    if let Some(v) = r.opt(t, path, "url_param", token_name("path parameter name")) {
        c.url_param = v;
    }
    c
}

pub(super) fn read_learn(r: &mut Reader, t: &dyn TableLike, path: &str) -> LearnConfig {
    r.check_keys(t, path, &["cookie", "ttl", "capacity", "store"]);
    let mut c = LearnConfig::default();
    if let Some(v) = r.opt(t, path, "cookie", token_name("cookie name")) {
        c.cookie = v;
    }
    if let Some(d) = r.opt(t, path, "ttl", as_duration) {
        c.ttl = d;
    }
    if let Some(n) = r.opt(t, path, "capacity", |v| as_int(v, 1, 100_000_000)) {
        c.capacity = n as u64;
    }
    c.store = r.opt(t, path, "store", as_store_url);
    c
}

pub(super) fn read_remember(r: &mut Reader, t: &dyn TableLike, path: &str) -> RememberConfig {
    r.check_keys(t, path, &["ttl", "capacity", "store"]);
    let mut c = RememberConfig::default();
    if let Some(d) = r.opt(t, path, "ttl", as_duration) {
        c.ttl = d;
    }
    if let Some(n) = r.opt(t, path, "capacity", |v| as_int(v, 1, 100_000_000)) {
        c.capacity = n as u64;
    }
    c.store = r.opt(t, path, "store", as_store_url);
    c
}

/// A `store` URL: checked as the store will read it.
fn as_store_url(v: &toml_edit::Value) -> Result<String, String> {
    let s = as_str(v)?;
    crate::sessions::StoreUrl::parse(&s).map_err(|e| e.to_string())?;
    Ok(s)
}

pub(super) fn read_cookie(r: &mut Reader, t: &dyn TableLike, path: &str) -> CookieConfig {
    r.check_keys(
        t,
        path,
        &[
            "name",
            "max_age",
            "max_idle",
            "secret",
            "path",
            "domain",
            "secure",
            "http_only",
            "same_site",
            "partitioned",
        ],
    );
    let mut c = CookieConfig::default();
    if let Some(name) = r.opt(
        t,
        path,
        "name",
        token_name("cookie name (letters, digits, - _ . and no spaces)"),
    ) {
        c.name = name;
    }
    c.max_age = r.opt(t, path, "max_age", as_duration);
    c.max_idle = r.opt(t, path, "max_idle", as_duration);
    if let Some(d) = c.max_idle {
        if d.as_secs() < 4 {
            r.error_at(
                Reader::span_of(t, "max_idle"),
                &join(path, "max_idle"),
                "must be at least 4s",
            );
        }
    }
    c.secret = r.opt(t, path, "secret", |v| {
        as_str(v).and_then(|s| {
            if s.len() >= 16 {
                Ok(s)
            } else {
                Err("must be at least 16 characters".to_string())
            }
        })
    });
    let attr = |v: &toml_edit::Value| {
        as_str(v).and_then(|s| {
            if s.bytes()
                .any(|b| b == b';' || b == b',' || b.is_ascii_control() || b == b' ')
            {
                Err(format!(
                    "{s:?} may not contain ';', ',', spaces or control characters"
                ))
            } else {
                Ok(s)
            }
        })
    };
    if let Some(p) = r.opt(t, path, "path", attr) {
        c.path = p;
    }
    c.domain = r.opt(t, path, "domain", attr);
    if let Some(s) = r.opt(t, path, "secure", |v| match v.as_bool() {
        Some(true) => Ok(Secure::Always),
        Some(false) => Ok(Secure::Never),
        None => as_choice(v, &[("auto", Secure::Auto)])
            .map_err(|_| "expected \"auto\", true or false".to_string()),
    }) {
        c.secure = s;
    }
    if let Some(b) = r.opt(t, path, "http_only", as_bool) {
        c.http_only = b;
    }
    if let Some(s) = r.opt(t, path, "same_site", |v| {
        as_choice(
            v,
            &[
                ("lax", SameSite::Lax),
                ("strict", SameSite::Strict),
                ("none", SameSite::None),
            ],
        )
    }) {
        c.same_site = s;
    }
    if let Some(b) = r.opt(t, path, "partitioned", as_bool) {
        c.partitioned = b;
        // Browsers drop a Partitioned cookie that is not Secure; CHIPS is for third-party
        // (cross-site) contexts, so SameSite must be None.
        if b && (c.secure != Secure::Always || c.same_site != SameSite::None) {
            r.error_at(
                Reader::span_of(t, "partitioned"),
                &join(path, "partitioned"),
                "partitioned = true needs secure = true and same_site = \"none\"",
            );
        }
    }
    c
}
