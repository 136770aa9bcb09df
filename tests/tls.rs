//! TLS termination and HTTPS backends, with certificates generated at test time (rcgen).
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use common::*;

/// A test CA that issues leaf certificates into a temporary directory.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = config_file("").parent().unwrap().to_path_buf();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `names`; returns (cert path, key path, cert DER).
    fn leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().clone())
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }

    async fn connect(
        &self,
        addr: std::net::SocketAddr,
        sni: &str,
        alpn: &[&[u8]],
    ) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        self.client(alpn)
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
            .unwrap()
    }
}

fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn tls_config(cert: &Path, key: &Path, backends: &[&Backend], pool_extra: &str) -> String {
    format!(
        "[listen]\nhttp = [\"127.0.0.1:0\"]\nhttps = [\"127.0.0.2:0\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        pool_config("", pool_extra, backends)
    )
}

async fn h1_get(stream: TlsStream<TcpStream>, path: &str, headers: &[(&str, &str)]) -> Answer {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::get(path).header("host", "shop.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = sender.send_request(b.body(empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2_over_tls_with_secure_cookies_and_sticky_streams() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("default", &["shop.test"]);
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&tls_config(&cert, &key, &[&a, &b, &c], "")).await;
    let tls_addr = proxy.tls_addr.unwrap();

    let s = pki.connect(tls_addr, "shop.test", &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let ans = h1_get(s, "/", &[]).await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.headers.get("x-seen-proto").unwrap(), "https");
    let set = ans.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(set.contains("; Secure"), "secure = auto over TLS: {set}");
    // Plain HTTP: no Secure attribute.
    let plain = get(proxy.addr, "/", &[]).await;
    assert!(!plain
        .headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Secure"));

    // h2 via ALPN: 50 concurrent streams on one connection with one cookie, one backend.
    let s = pki
        .connect(tls_addr, "shop.test", &[b"h2", b"http/1.1"])
        .await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let cookie = ans.tether_cookie().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut sender = sender.clone();
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get("https://shop.test/")
                .header("cookie", format!("TETHER={cookie}"))
                .body(empty())
                .unwrap();
            let res = sender.send_request(req).await.unwrap();
            assert_eq!(res.version(), http::Version::HTTP_2);
            res.headers()
                .get("x-backend")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), ans.backend());
    }
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let pki = Pki::new();
    let (cert, key, default_der) = pki.leaf("default", &["default.test"]);
    let (ca_, ka, a_der) = pki.leaf("a", &["a.test"]);
    let (cw, kw, w_der) = pki.leaf("wild", &["*.b.test"]);
    let backend = Backend::start("x").await;
    let cfg = tls_config(&cert, &key, &[&backend], "").replace(
        "[proxy]",
        &format!(
            "[[tls.sni]]\nhost = \"a.test\"\ncert = \"{}\"\nkey = \"{}\"\n[[tls.sni]]\nhost = \"*.b.test\"\ncert = \"{}\"\nkey = \"{}\"\n[proxy]",
            ca_.display(), ka.display(), cw.display(), kw.display()
        ),
    );
    let proxy = Proxy::start(&cfg).await;
    let addr = proxy.tls_addr.unwrap();
    assert_eq!(peer_cert(&pki.connect(addr, "a.test", &[]).await), a_der);
    assert_eq!(peer_cert(&pki.connect(addr, "x.b.test", &[]).await), w_der);
    assert_eq!(
        peer_cert(&pki.connect(addr, "default.test", &[]).await),
        default_der,
        "no match: the default"
    );
}

#[tokio::test]
async fn websocket_over_tls_reaches_the_pinned_backend() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("default", &["shop.test"]);
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&tls_config(&cert, &key, &[&a, &b, &c], "")).await;
    let addr = proxy.tls_addr.unwrap();
    let first = h1_get(
        pki.connect(addr, "shop.test", &[b"http/1.1"]).await,
        "/",
        &[("x-forwarded-for", "10.9.9.9")],
    )
    .await;
    let stream = pki.connect(addr, "shop.test", &[b"http/1.1"]).await;
    let mut req = "wss://shop.test/ws".into_client_request().unwrap();
    req.headers_mut().insert(
        "cookie",
        format!("TETHER={}", first.tether_cookie().unwrap())
            .parse()
            .unwrap(),
    );
    let (mut ws, res) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(res.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(
        reply.into_text().unwrap().as_str(),
        format!("{}:over tls", first.backend())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_a_new_certificate_to_new_connections_and_keeps_old_ones() {
    let pki = Pki::new();
    let (cert1, key1, der1) = pki.leaf("one", &["shop.test"]);
    let (cert2, key2, der2) = pki.leaf("two", &["shop.test"]);
    let backend = Backend::start("x").await;
    let path = config_file(&tls_config(&cert1, &key1, &[&backend], ""));
    let proxy = Proxy::start_file(&path).await;
    let addr = proxy.tls_addr.unwrap();
    let old = pki.connect(addr, "shop.test", &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&old), der1);
    let (mut old_sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old))
        .await
        .unwrap();
    tokio::spawn(conn);

    // A broken certificate is refused and the old one keeps serving.
    std::fs::write(&path, tls_config(&cert1, &key2, &[&backend], "")).unwrap();
    let err = proxy
        .reloader
        .reload(tether::reload::Trigger::Requested)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("does not match the certificate"),
        "{err}"
    );
    assert!(
        err.to_string().contains(":6:7: tls.key:"),
        "located at the key: {err}"
    );
    assert_eq!(peer_cert(&pki.connect(addr, "shop.test", &[]).await), der1);

    std::fs::write(&path, tls_config(&cert2, &key2, &[&backend], "")).unwrap();
    proxy
        .reloader
        .reload(tether::reload::Trigger::Requested)
        .await
        .unwrap();
    assert_eq!(
        peer_cert(&pki.connect(addr, "shop.test", &[]).await),
        der2,
        "new connections get the new certificate"
    );
    // The connection opened before the reload still works.
    let res = old_sender
        .send_request(
            Request::get("/")
                .header("host", "shop.test")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn certificate_problems_are_clear_errors_and_expiry_a_warning() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("ok", &["shop.test"]);
    let (_, other_key, _) = pki.leaf("other", &["shop.test"]);
    let load = |text: String| {
        let c = tether::config::Config::parse(&text, "t.toml").unwrap();
        tether::tls::load(&c, Path::new("/"))
    };
    let base = |c: &Path, k: &Path| {
        format!("[listen]\nhttps = [\"127.0.0.1:8443\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\n", c.display(), k.display())
    };
    let missing = load(base(Path::new("/nonexistent/cert.pem"), &key))
        .err()
        .unwrap();
    assert!(
        missing[0]
            .to_string()
            .starts_with("t.toml:4:8: tls.cert: cannot read certificate /nonexistent/cert.pem"),
        "{}",
        missing[0]
    );
    let mismatched = load(base(&cert, &other_key)).err().unwrap();
    assert!(
        mismatched[0].to_string().contains("tls.key:")
            && mismatched[0].to_string().contains("does not match"),
        "{}",
        mismatched[0]
    );
    let not_pem = load(base(&pki.ca_path().with_file_name("ok.key"), &key))
        .err()
        .unwrap();
    assert!(
        not_pem[0].to_string().contains("no PEM certificate"),
        "{}",
        not_pem[0]
    );

    // Expired: served, with a warning.
    let key_pair = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["old.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.signed_by(&key_pair, &pki.ca).unwrap();
    let (ec, ek) = (pki.dir.join("expired.pem"), pki.dir.join("expired.key"));
    std::fs::write(&ec, expired.pem()).unwrap();
    std::fs::write(&ek, key_pair.serialize_pem()).unwrap();
    let m = load(base(&ec, &ek)).unwrap_or_else(|e| panic!("expired must load: {e:?}"));
    assert!(m.server.is_some());
    assert!(
        m.warnings.iter().any(|w| w.contains("expired")),
        "{:?}",
        m.warnings
    );
}

#[tokio::test]
async fn redirect_http_sends_plain_requests_to_https() {
    let pki = Pki::new();
    let (cert, key, _) = pki.leaf("default", &["shop.test"]);
    let backend = Backend::start("x").await;
    let cfg = tls_config(&cert, &key, &[&backend], "redirect_http = true")
        .replace("https = [\"127.0.0.2:0\"]", "https = [\"127.0.0.2:8443\"]");
    let proxy = Proxy::start(&cfg).await;
    let ans = request(
        proxy.addr,
        Request::get("/cart?x=1")
            .header("host", "shop.test:8080")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(ans.status, 308);
    assert_eq!(
        ans.headers.get("location").unwrap(),
        "https://shop.test:8443/cart?x=1"
    );
    assert_eq!(backend.hits(), 0);
    let over_tls = h1_get(
        pki.connect(proxy.tls_addr.unwrap(), "shop.test", &[b"http/1.1"])
            .await,
        "/",
        &[],
    )
    .await;
    assert_eq!(over_tls.status, 200, "TLS requests are served");
}

/// An HTTPS backend: the test backend behind a TLS acceptor with a certificate for
/// `backend.test`.
async fn https_backend(pki: &Pki, name: &'static str) -> std::net::SocketAddr {
    let (cert, key, _) = pki.leaf(name, &["backend.test"]);
    let chain: Vec<CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_file_iter(&cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = rustls::pki_types::pem::PemObject::from_pem_file(&key).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let plain = Backend::start(name).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = plain;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let target = _keep.addr;
            tokio::spawn(async move {
                // Terminate TLS and relay to the plain test backend.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut inner) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_backends_are_verified_with_the_configured_ca_and_sni() {
    let pki = Pki::new();
    let addr = https_backend(&pki, "secure").await;
    let cfg = format!(
        "[log]\naccess = \"off\"\n[proxy]\nretries = 0\n[pools.p]\n[[pools.p.backends]]\nid = \"s\"\naddress = \"https://{addr}\"\nserver_name = \"backend.test\"\nca = \"{}\"\n",
        pki.ca_path().display()
    );
    let proxy = Proxy::start(&cfg).await;
    let ans = get(proxy.addr, "/", &[]).await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.backend(), "secure");
    // The wrong name fails verification: 502, never a silently unverified connection.
    let wrong = cfg.replace(
        "server_name = \"backend.test\"",
        "server_name = \"impostor.test\"",
    );
    let proxy = Proxy::start(&wrong).await;
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 502);
}
