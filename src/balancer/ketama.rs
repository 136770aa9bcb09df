//! Ketama consistent hashing, bit-compatible with nginx `hash $key consistent`
//! (ngx_http_upstream_hash_module): CRC32 points, 160 per weight unit.

use super::Member;

#[derive(Debug, Clone)]
pub struct Ketama {
    /// (point hash, member index), sorted by hash, duplicates removed (first kept).
    points: Vec<(u32, u32)>,
    members: usize,
}

impl Ketama {
    /// As nginx builds its continuum: for each server `host:port`, point j is
    /// `crc32(host ‖ 0x00 ‖ port ‖ prev_hash as 4 little-endian bytes)`, starting from
    /// prev_hash = 0, for `160 × weight` points.
    pub fn build(members: &[Member<'_>]) -> Ketama {
        let total: usize = members.iter().map(|m| m.weight.max(1) as usize * 160).sum();
        let mut points = Vec::with_capacity(total);
        for (i, m) in members.iter().enumerate() {
            let (host, port) = split_server(m.address);
            let mut base = crc32fast::Hasher::new();
            base.update(host.as_bytes());
            base.update(&[0]);
            base.update(port.as_bytes());
            let mut prev: u32 = 0;
            for _ in 0..m.weight.max(1) * 160 {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                let hash = h.finalize();
                points.push((hash, i as u32));
                prev = hash;
            }
        }
        // nginx uses qsort on the hash alone; ties between different servers are
        // astronomically rare, and we break them by member index to stay deterministic.
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        Ketama {
            points,
            members: members.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// The first point at or after the key's CRC32 (nginx's ngx_http_upstream_find_chash_point).
    fn find(&self, hash: u32) -> usize {
        self.points.partition_point(|p| p.0 < hash)
    }

    pub fn lookup(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let at = self.find(crc32fast::hash(key)) % self.points.len();
        Some(self.points[at].1 as usize)
    }

    /// Walks the continuum clockwise from the key's point, as nginx does when a server is
    /// unavailable. May repeat members; [`super::Candidates`] removes repeats.
    pub fn candidates(&self, key: &[u8]) -> Walk<'_> {
        let start = self.find(crc32fast::hash(key));
        Walk {
            ketama: self,
            at: start,
            steps: 0,
        }
    }
}

/// nginx splits `server` at the last ':' (a `unix:` path has no port).
fn split_server(server: &str) -> (&str, &str) {
    if let Some(path) = server
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("unix:"))
        .map(|_| &server[5..])
    {
        return (path, "");
    }
    match server.rfind(':') {
        Some(i) => (&server[..i], &server[i + 1..]),
        None => (server, ""),
    }
}

/// Clockwise walk over the continuum.
pub struct Walk<'a> {
    ketama: &'a Ketama,
    at: usize,
    steps: usize,
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let n = self.ketama.points.len();
        if self.steps >= n {
            return None;
        }
        let p = self.ketama.points[(self.at + self.steps) % n];
        self.steps += 1;
        Some(p.1 as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_server_like_nginx() {
        assert_eq!(split_server("127.0.0.1:8081"), ("127.0.0.1", "8081"));
        assert_eq!(split_server("[::1]:80"), ("[::1]", "80"));
        assert_eq!(split_server("backend"), ("backend", ""));
        assert_eq!(split_server("unix:/tmp/s"), ("/tmp/s", ""));
    }
}
