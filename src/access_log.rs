//! The access log: one line per request (combined or JSON) written to stdout by a
//! background task, so requests never wait on the terminal or a pipe.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};
use tokio::sync::mpsc;

use crate::config::AccessLog;

/// Lines buffered before new ones are dropped (and counted).
const QUEUE: usize = 8192;

/// Everything one access log line says.
pub struct Record {
    pub format: AccessLog,
    pub client: IpAddr,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub status: u16,
    pub pool: Option<std::sync::Arc<str>>,
    pub backend: Option<std::sync::Arc<str>>,
    pub affinity: Option<crate::affinity::Outcome>,
}

impl Record {
    /// What the log line says of the request itself; the rest is filled in as it is served.
    pub fn of_request<B>(format: AccessLog, peer: IpAddr, req: &http::Request<B>) -> Box<Record> {
        Box::new(Record {
            format,
            client: peer.to_canonical(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            referer: req.headers().get(http::header::REFERER).cloned(),
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
            status: 0,
            pool: None,
            backend: None,
            affinity: None,
        })
    }
}

/// Hands finished lines to the writer task.
pub struct AccessLogger {
    tx: Option<mpsc::Sender<String>>,
    pub dropped: AtomicU64,
}

impl AccessLogger {
    /// Starts the writer task (inside a tokio runtime).
    pub fn stdout() -> AccessLogger {
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                let _ = out.write_all(line.as_bytes());
                // Write whatever else is queued before flushing once.
                while let Ok(more) = rx.try_recv() {
                    let _ = out.write_all(more.as_bytes());
                }
                let _ = out.flush();
            }
        });
        AccessLogger {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        }
    }

    /// A logger that writes nothing (for embedding without a runtime).
    pub fn disabled() -> AccessLogger {
        AccessLogger {
            tx: None,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn log(&self, r: &Record, bytes: u64, duration: Duration) {
        let Some(tx) = &self.tx else { return };
        let line = match r.format {
            AccessLog::Off => return,
            AccessLog::Combined => combined(r, bytes, duration, SystemTime::now()),
            AccessLog::Json => json(r, bytes, duration, SystemTime::now()),
        };
        if tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn header_text(v: &Option<HeaderValue>) -> String {
    v.as_ref()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).replace(['"', '\\'], "_"))
        .unwrap_or_else(|| "-".to_string())
}

/// NCSA combined, plus duration, pool, backend and affinity outcome:
/// `1.2.3.4 - - [22/Nov/2026:15:04:05 +0000] "GET / HTTP/1.1" 200 12 "-" "curl/8" 0.002 pool=shop backend=app1 affinity=hit`
pub fn combined(r: &Record, bytes: u64, duration: Duration, now: SystemTime) -> String {
    let target = r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!(
        "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" {:.3} pool={} backend={} affinity={}\n",
        r.client,
        clf_time(now),
        r.method,
        target.replace('"', "%22"),
        r.version,
        r.status,
        bytes,
        header_text(&r.referer),
        header_text(&r.user_agent),
        duration.as_secs_f64(),
        r.pool.as_deref().unwrap_or("-"),
        r.backend.as_deref().unwrap_or("-"),
        r.affinity.map_or("-", crate::affinity::Outcome::as_str),
    )
}

pub fn json(r: &Record, bytes: u64, duration: Duration, now: SystemTime) -> String {
    let v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(now).to_string(),
        "client": r.client.to_string(),
        "method": r.method.as_str(),
        "path": r.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "protocol": format!("{:?}", r.version),
        "status": r.status,
        "bytes": bytes,
        "duration_ms": (duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        "referer": r.referer.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        "user_agent": r.user_agent.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        "pool": r.pool.as_deref(),
        "backend": r.backend.as_deref(),
        "affinity": r.affinity.map(crate::affinity::Outcome::as_str),
    });
    format!("{v}\n")
}

/// `22/Nov/2026:15:04:05 +0000` in UTC.
fn clf_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(format: AccessLog) -> Record {
        Record {
            format,
            client: "203.0.113.9".parse().unwrap(),
            method: Method::GET,
            uri: "/cart?x=\"1\""
                .parse()
                .unwrap_or_else(|_| Uri::from_static("/cart")),
            version: Version::HTTP_11,
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8.0")),
            status: 200,
            pool: Some("shop".into()),
            backend: Some("app1".into()),
            affinity: Some(crate::affinity::Outcome::Hit),
        }
    }

    #[test]
    fn combined_line_has_every_field() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_359_845); // 2026-11-22T15:04:05Z
        let line = combined(
            &record(AccessLog::Combined),
            12,
            Duration::from_millis(2),
            t,
        );
        assert_eq!(
            line,
            "203.0.113.9 - - [22/Nov/2026:15:04:05 +0000] \"GET /cart HTTP/1.1\" 200 12 \"-\" \"curl/8.0\" 0.002 pool=shop backend=app1 affinity=hit\n"
        );
    }

    #[test]
    fn json_line_parses() {
        let line = json(
            &record(AccessLog::Json),
            12,
            Duration::from_millis(2),
            UNIX_EPOCH,
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["affinity"], "hit");
        assert_eq!(v["backend"], "app1");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
