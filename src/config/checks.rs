//! `[pools.NAME.health]` and `[pools.NAME.passive]`: active and passive check settings.

use toml_edit::TableLike;

use super::reader::{as_duration, as_int, as_str, join, Reader};
use super::{HealthConfig, PassiveConfig};

pub(super) fn read_health(r: &mut Reader, t: &dyn TableLike, path: &str) -> HealthConfig {
    r.check_keys(
        t,
        path,
        &["path", "interval", "timeout", "rise", "fall", "expect"],
    );
    let health_path = r.opt(t, path, "path", |v| {
        as_str(v).and_then(|s| {
            if s.starts_with('/') && s.parse::<http::Uri>().is_ok() {
                Ok(s)
            } else {
                Err(format!("{s:?} is not a path starting with '/'"))
            }
        })
    });
    let mut h = HealthConfig {
        path: health_path,
        ..HealthConfig::default()
    };
    for (key, slot) in [("interval", &mut h.interval), ("timeout", &mut h.timeout)] {
        if let Some(d) = r.opt(t, path, key, as_duration) {
            if d < std::time::Duration::from_millis(10) {
                r.error_at(
                    Reader::span_of(t, key),
                    &join(path, key),
                    "must be at least 10ms",
                );
            }
            *slot = d;
        }
    }
    if let Some(n) = r.opt(t, path, "rise", |v| as_int(v, 1, 100)) {
        h.rise = n as u32;
    }
    if let Some(n) = r.opt(t, path, "fall", |v| as_int(v, 1, 100)) {
        h.fall = n as u32;
    }
    if let Some(e) = r.opt(t, path, "expect", |v| {
        as_str(v).and_then(|s| parse_status_range(&s))
    }) {
        h.expect = e;
    }
    h
}

/// `"200-399"` or `"200"`.
fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let err = || format!("{s:?} is not a status code or range like \"200-399\"");
    let code = |x: &str| {
        x.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (code(a).ok_or_else(err)?, code(b).ok_or_else(err)?),
        None => {
            let c = code(s).ok_or_else(err)?;
            (c, c)
        }
    };
    if lo > hi {
        return Err(err());
    }
    Ok((lo, hi))
}

pub(super) fn read_passive(r: &mut Reader, t: &dyn TableLike, path: &str) -> PassiveConfig {
    r.check_keys(t, path, &["max_fails", "fail_timeout"]);
    let mut p = PassiveConfig::default();
    if let Some(n) = r.opt(t, path, "max_fails", |v| as_int(v, 0, 1000)) {
        p.max_fails = n as u32;
    }
    if let Some(d) = r.opt(t, path, "fail_timeout", as_duration) {
        p.fail_timeout = d;
    }
    p
}
