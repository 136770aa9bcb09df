//! TLS: certificates for the https listeners (SNI choice, ALPN h2/http1.1, TLS 1.2 and 1.3,
//! loaded with each config so reloads swap them) and client configs for HTTPS backends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{Config, Diagnostic, FileRef, SniCert};

/// Everything TLS a snapshot needs, loaded (and checked) before the snapshot is built.
#[derive(Default)]
pub struct TlsMaterial {
    pub server: Option<Arc<ServerConfig>>,
    /// (pool, backend id) → how to connect to it over TLS.
    pub backends: HashMap<(String, String), Arc<BackendTls>>,
    /// Problems that do not prevent serving (an expired certificate).
    pub warnings: Vec<String>,
}

/// A backend's TLS client settings.
pub struct BackendTls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the listeners' certificates and the backends' TLS settings of `config`; relative
/// paths are relative to `base` (the config file's directory). Every problem is reported
/// at the key that named the file.
pub fn load(config: &Config, base: &Path) -> Result<TlsMaterial, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut m = TlsMaterial::default();
    if let Some(t) = &config.tls {
        let default = certified_key(&t.cert, &t.key, base, &mut errors, &mut m.warnings);
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for SniCert { host, cert, key } in &t.sni {
            if let Some(k) = certified_key(cert, key, base, &mut errors, &mut m.warnings) {
                match host.strip_prefix("*.") {
                    Some(suffix) => wildcard.insert(suffix.to_string(), k),
                    None => exact.insert(host.clone(), k),
                };
            }
        }
        if let Some(default) = default {
            let resolver = SniResolver {
                default,
                exact,
                wildcard,
            };
            match ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            {
                Ok(b) => {
                    let mut sc = b
                        .with_no_client_auth()
                        .with_cert_resolver(Arc::new(resolver));
                    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                    m.server = Some(Arc::new(sc));
                }
                Err(e) => errors.push(t.cert.at.error(format!("TLS setup failed: {e}"))),
            }
        }
    }
    let mut system_roots: Option<Arc<RootCertStore>> = None;
    for p in &config.pools {
        // File backends by id; discovered ones share their `discover` entry's settings.
        let file = p.backends.iter().filter(|b| b.discovered.is_none());
        let file = file.filter_map(|b| Some((&b.id, b.tls.as_ref()?)));
        let found = p
            .discover
            .iter()
            .filter_map(|d| Some((&d.name, d.tls.as_ref()?)));
        for (id, bt) in file.chain(found) {
            let roots = match &bt.ca {
                Some(ca) => match ca_roots(ca, base) {
                    Ok(r) => Arc::new(r),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
                None => system_roots
                    .get_or_insert_with(|| Arc::new(native_roots()))
                    .clone(),
            };
            let name = match ServerName::try_from(bt.server_name.clone()) {
                Ok(n) => n,
                Err(_) => {
                    errors.push(Diagnostic {
                        file: bt
                            .ca
                            .as_ref()
                            .map(|c| c.at.file.clone())
                            .unwrap_or_default(),
                        line: 0,
                        col: 0,
                        path: format!("pools.{}.backends.{}.server_name", p.name, id),
                        message: format!("{:?} is not a valid TLS server name", bt.server_name),
                    });
                    continue;
                }
            };
            let config = match ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
            {
                Ok(c) => {
                    let mut c = c.with_root_certificates(roots).with_no_client_auth();
                    c.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Arc::new(c)
                }
                Err(_) => continue,
            };
            m.backends.insert(
                (p.name.clone(), id.clone()),
                Arc::new(BackendTls { config, name }),
            );
        }
    }
    if errors.is_empty() {
        Ok(m)
    } else {
        Err(errors)
    }
}

fn resolve(base: &Path, f: &FileRef) -> PathBuf {
    let p = Path::new(&f.path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn read(base: &Path, f: &FileRef, what: &str) -> Result<Vec<u8>, Diagnostic> {
    let path = resolve(base, f);
    std::fs::read(&path).map_err(|e| {
        f.at.error(format!("cannot read {what} {}: {e}", path.display()))
    })
}

fn certified_key(
    cert: &FileRef,
    key: &FileRef,
    base: &Path,
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<String>,
) -> Option<Arc<CertifiedKey>> {
    let cert_pem = read(base, cert, "certificate")
        .map_err(|e| errors.push(e))
        .ok();
    let key_pem = read(base, key, "private key")
        .map_err(|e| errors.push(e))
        .ok();
    let (cert_pem, key_pem) = (cert_pem?, key_pem?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        errors.push(
            cert.at
                .error(format!("{}: no PEM certificate found", cert.path)),
        );
        return None;
    }
    let Ok(private) = PrivateKeyDer::from_pem_slice(&key_pem) else {
        errors.push(
            key.at
                .error(format!("{}: no PEM private key found", key.path)),
        );
        return None;
    };
    match CertifiedKey::from_der(chain.clone(), private, &provider()) {
        Ok(k) => {
            if let Some(w) = validity_warning(&chain[0], &cert.path) {
                tracing::warn!("{w}");
                warnings.push(format!(
                    "{}:{}:{}: {}: {w}",
                    cert.at.file, cert.at.line, cert.at.col, cert.at.key
                ));
            }
            Some(Arc::new(k))
        }
        Err(rustls::Error::InconsistentKeys(_)) => {
            errors.push(key.at.error(format!(
                "{} does not match the certificate {}",
                key.path, cert.path
            )));
            None
        }
        Err(e) => {
            errors.push(
                key.at
                    .error(format!("{}: unusable private key: {e}", key.path)),
            );
            None
        }
    }
}

/// An expired or not-yet-valid certificate is served anyway (clients decide), with a warning.
fn validity_warning(cert: &CertificateDer<'_>, path: &str) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let v = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if v.not_after < now {
        return Some(format!("certificate {path} expired on {}", v.not_after));
    }
    if v.not_before > now {
        return Some(format!(
            "certificate {path} is not valid before {}",
            v.not_before
        ));
    }
    None
}

fn ca_roots(ca: &FileRef, base: &Path) -> Result<RootCertStore, Diagnostic> {
    let pem = read(base, ca, "CA file")?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots
        .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
    if added == 0 {
        return Err(ca
            .at
            .error(format!("{}: no usable CA certificate found", ca.path)));
    }
    Ok(roots)
}

fn native_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no system CA certificates found; HTTPS backends without `ca` will fail verification"
        );
    }
    roots
}

/// Chooses the certificate by SNI: exact name, then `*.` wildcard (one label), then the
/// default `[tls]` certificate.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}
