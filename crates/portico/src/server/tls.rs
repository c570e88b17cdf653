//! TLS termination on client listeners: rustls with the aws-lc-rs provider.
//!
//! - **Certificates** are chosen per handshake by [`CertResolver`] from the client's SNI:
//!   an exact DNS subject alternative name first, then a `*.example.com` wildcard one
//!   label up; no SNI, or a name no certificate covers, gets the first certificate.
//! - **Versions and suites**: TLS 1.3 and 1.2 (1.2 off with `min_version: "1.3"`), with
//!   rustls' default suites, which are all AEAD with forward secrecy.
//! - **ALPN** offers `h2` and `http/1.1` (`http/1.1` only with `http2: false`).
//! - **Reload**: the resolver holds its certificates in an `ArcSwap`. A config reload
//!   compiles a new [`ListenerTls`]; between reloads, [`watch`] polls the files and swaps in
//!   new certificates when they change and parse. Open connections keep their session.
//! - **mTLS**: `client_auth` verifies client certificates with webpki against the
//!   configured CA; the verified subject goes into [`TlsInfo`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use portico_config::{CertificateFiles, ClientAuthMode, ConfigError, Listener, TlsVersion};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

use crate::observe::Metrics;
use crate::pipeline::TlsInfo;

/// What one file read gave: its bytes, or the error as text (so reads can be compared).
type FileRead = Result<Vec<u8>, String>;

/// One loaded certificate with what the metrics and the SNI map need of it.
#[derive(Debug)]
struct LoadedCert {
    key: Arc<CertifiedKey>,
    /// DNS subject alternative names, lower case (`*.example.com` included).
    dns_names: Vec<Box<str>>,
    /// The `name` label: the first subject alternative name, else the common name.
    label: Arc<str>,
    /// notAfter, Unix seconds.
    not_after: i64,
}

/// The certificates of a listener, as loaded at one moment.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// `(name label, notAfter)` of each certificate, in config order.
    expiry: Vec<(Arc<str>, i64)>,
    /// The file contents this set was built from: cert, key, cert, key, ...
    contents: Vec<Vec<u8>>,
}

impl CertSet {
    /// Builds a set from the files' contents (`reads`: cert, key, cert, key, ...).
    /// `path` is the config path of the listener's `tls`, for errors.
    fn build(
        files: &[CertificateFiles],
        reads: Vec<FileRead>,
        provider: &CryptoProvider,
        path: &str,
    ) -> Result<CertSet, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut loaded = Vec::new();
        let mut contents = Vec::with_capacity(reads.len());
        let mut reads = reads.into_iter();
        for (i, f) in files.iter().enumerate() {
            let p = format!("{path}.certificates[{i}]");
            let (cert, key) = (reads.next(), reads.next());
            let (Some(cert), Some(key)) = (cert, key) else { break };
            match load_one(f, &cert, &key, provider, &p) {
                Ok(c) => loaded.push(c),
                Err(e) => errors.push(e),
            }
            contents.push(cert.unwrap_or_default());
            contents.push(key.unwrap_or_default());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let Some(first) = loaded.first() else {
            return Err(vec![ConfigError::new(format!("{path}.certificates"), "at least one certificate is required")]);
        };
        let default = first.key.clone();
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for c in &loaded {
            for n in &c.dns_names {
                // The first certificate that names a host wins.
                match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.into()).or_insert_with(|| c.key.clone()),
                    None => exact.entry(n.clone()).or_insert_with(|| c.key.clone()),
                };
            }
        }
        let expiry = loaded.iter().map(|c| (c.label.clone(), c.not_after)).collect();
        Ok(CertSet { exact, wildcard, default, expiry, contents })
    }

    /// The certificate for a client's SNI (already lower case: rustls folds it).
    fn select(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else { return self.default.clone() };
        if let Some(k) = self.exact.get(name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return k.clone();
        }
        self.default.clone()
    }

    /// Whether `reads` are exactly the contents this set was built from.
    fn same_contents(&self, reads: &[FileRead]) -> bool {
        reads.len() == self.contents.len() && reads.iter().zip(&self.contents).all(|(r, c)| r.as_ref().ok() == Some(c))
    }
}

/// Reads every certificate and key file: cert, key, cert, key, ...
fn read_files(files: &[CertificateFiles]) -> Vec<FileRead> {
    files.iter().flat_map(|f| [&f.cert, &f.key]).map(|p| std::fs::read(p).map_err(|e| e.to_string())).collect()
}

fn load_one(
    f: &CertificateFiles,
    cert: &FileRead,
    key: &FileRead,
    provider: &CryptoProvider,
    p: &str,
) -> Result<LoadedCert, ConfigError> {
    let cert_err = |msg: String| ConfigError::new(format!("{p}.cert"), msg);
    let key_err = |msg: String| ConfigError::new(format!("{p}.key"), msg);
    let (cp, kp) = (&f.cert, &f.key);
    let cert_pem = cert.as_ref().map_err(|e| cert_err(format!("cannot read file {cp}: {e}")))?;
    let key_pem = key.as_ref().map_err(|e| key_err(format!("cannot read file {kp}: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("{cp}: not a PEM certificate file: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_err(format!("{cp} holds no certificate")));
    };
    let (_, x509) =
        X509Certificate::from_der(leaf).map_err(|e| cert_err(format!("{cp}: not an X.509 certificate: {e}")))?;
    let mut dns_names = Vec::new();
    let mut first_san = None;
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if first_san.is_none() {
                first_san = general_name(n);
            }
            if let GeneralName::DNSName(d) = n {
                dns_names.push(d.to_ascii_lowercase().into_boxed_str());
            }
        }
    }
    let label = first_san
        .map(|s| s.split_once(':').map_or(s.clone(), |(_, v)| v.to_owned()))
        .or_else(|| x509.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned))
        .unwrap_or_else(|| p.to_owned());
    let not_after = x509.validity().not_after.timestamp();
    if !x509.validity().is_valid() {
        tracing::warn!(cert = %cp, name = %label, "certificate is outside its validity period; clients will refuse it");
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => key_err(format!("{kp}: not a private key: it holds no PEM key")),
        e => key_err(format!("{kp}: not a private key: {e}")),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| key_err(format!("{kp}: not a usable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(key_err(format!("cert and key do not match: {kp} is not the private key of {cp}")));
        }
        Err(e) => return Err(cert_err(format!("{cp}: {e}"))),
    }
    Ok(LoadedCert { key: Arc::new(certified), dns_names, label: label.into(), not_after })
}

/// A subject alternative name as `DNS:..`, `IP:..`, `URI:..` or `email:..`.
fn general_name(n: &GeneralName<'_>) -> Option<String> {
    Some(match n {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => format!("IP:{}", std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?)),
            16 => format!("IP:{}", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?)),
            _ => return None,
        },
        _ => return None,
    })
}

/// Chooses the certificate of each handshake from the client's SNI, among the
/// certificates currently loaded; these are swapped whole when files change.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertSet>,
}

impl CertResolver {
    /// The certificates in use.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().select(hello.server_name()))
    }
}

/// A listener's compiled TLS settings, built once per config load.
#[derive(Debug)]
pub struct ListenerTls {
    /// rustls settings; its certificate resolver is `resolver`.
    pub config: Arc<ServerConfig>,
    /// The certificates, swapped when their files change.
    pub resolver: Arc<CertResolver>,
    /// The files, as configured.
    files: Vec<CertificateFiles>,
    /// Config path of the listener's `tls`, for errors.
    path: String,
    /// The header that carries the client certificate's subject upstream (with
    /// `client_auth`).
    pub forward_header: Option<HeaderName>,
    /// What this was compiled from, to reuse it on a reload that changes nothing.
    source: (portico_config::ListenerTls, bool),
    /// The CA file's content (with `client_auth`).
    ca_contents: Option<Vec<u8>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The client certificate verifier of `client_auth`, with the CA file's content.
fn client_verifier(
    ca: &portico_config::ClientAuth,
    read: std::io::Result<Vec<u8>>,
    provider: &Arc<CryptoProvider>,
    path: &str,
) -> Result<(Arc<dyn rustls::server::danger::ClientCertVerifier>, Vec<u8>), ConfigError> {
    let cp = &ca.ca;
    let err = |msg: String| ConfigError::new(format!("{path}.client_auth.ca"), msg);
    let pem = read.map_err(|e| err(format!("cannot read file {cp}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{cp}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err(format!("{cp} holds no certificate")));
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| err(format!("{cp}: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = match ca.mode {
        ClientAuthMode::Required => verifier,
        ClientAuthMode::Optional => verifier.allow_unauthenticated(),
    };
    let verifier = verifier.build().map_err(|e| err(format!("{cp}: cannot verify with it: {e}")))?;
    Ok((verifier, pem))
}

impl ListenerTls {
    /// Compiles the `tls` of listener `index`, reading its files. Returns the previous
    /// compiled settings when neither the config nor the files' contents changed, so a
    /// reload keeps the TLS session cache.
    pub fn compile(
        index: usize,
        l: &Listener,
        prev: Option<&Arc<ListenerTls>>,
    ) -> Result<Option<Arc<ListenerTls>>, Vec<ConfigError>> {
        let Some(tls) = &l.tls else { return Ok(None) };
        let path = format!("listeners[{index}].tls");
        let reads = read_files(&tls.certificates);
        let ca_read = tls.client_auth.as_ref().map(|c| std::fs::read(&c.ca));
        if let Some(p) = prev
            && p.source.0 == *tls
            && p.path == path
            && p.source.1 == l.http2
            && p.resolver.current().same_contents(&reads)
            && p.ca_contents.as_ref() == ca_read.as_ref().and_then(|r| r.as_ref().ok())
        {
            return Ok(Some(p.clone()));
        }
        let provider = provider();
        let set = CertSet::build(&tls.certificates, reads, &provider, &path);
        // Report the CA's problems together with the certificates'.
        let verifier = match (&tls.client_auth, ca_read) {
            (Some(ca), Some(read)) => Some(client_verifier(ca, read, &provider, &path)),
            _ => None,
        };
        let (set, verifier) = match (set, verifier.transpose()) {
            (Ok(set), Ok(v)) => (set, v),
            (set, v) => {
                let mut errors = set.err().unwrap_or_default();
                errors.extend(v.err());
                return Err(errors);
            }
        };
        let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| vec![ConfigError::new(path.clone(), format!("TLS setup failed: {e}"))])?;
        let (builder, ca_contents) = match verifier {
            Some((verifier, pem)) => (builder.with_client_cert_verifier(verifier), Some(pem)),
            None => (builder.with_no_client_auth(), None),
        };
        let resolver = Arc::new(CertResolver { current: ArcSwap::from_pointee(set) });
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols =
            if l.http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        // Validation has checked the name.
        let forward_header =
            tls.client_auth.as_ref().and_then(|c| HeaderName::from_bytes(c.forward_header.as_bytes()).ok());
        Ok(Some(Arc::new(ListenerTls {
            config: Arc::new(config),
            resolver,
            files: tls.certificates.clone(),
            path,
            forward_header,
            source: (tls.clone(), l.http2),
            ca_contents,
        })))
    }

    /// What a finished handshake tells about the connection.
    pub(crate) fn conn_info(&self, conn: &ServerConnection) -> TlsInfo {
        let mut info = TlsInfo {
            sni: conn.server_name().map(Into::into),
            alpn_h2: conn.alpn_protocol() == Some(b"h2"),
            client_subject: None,
            client_sans: Vec::new(),
            forward_header: self.forward_header.clone(),
            client_subject_value: None,
        };
        // The verifier has accepted this chain; its leaf is the client's certificate.
        if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
            match X509Certificate::from_der(leaf) {
                Ok((_, cert)) => {
                    let subject = rfc4514(cert.subject());
                    info.client_subject_value = HeaderValue::from_str(&subject).ok();
                    info.client_subject = Some(subject.into_boxed_str());
                    if let Ok(Some(san)) = cert.subject_alternative_name() {
                        info.client_sans = san
                            .value
                            .general_names
                            .iter()
                            .filter(|n| !matches!(n, GeneralName::IPAddress(_)))
                            .filter_map(general_name)
                            .map(String::into_boxed_str)
                            .collect();
                    }
                }
                Err(e) => tracing::debug!(error = %e, "client certificate could not be parsed"),
            }
        }
        info
    }
}

/// A distinguished name as RFC 4514 text: RDNs most specific first, `CN=alice,O=Example`.
/// Bytes outside printable ASCII are escaped as `\XX`, so the text is a valid header value.
///
/// Hand-written: x509-parser's `Display` keeps the certificate's order and joins with
/// ", ", which is not RFC 4514.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type().to_id_string();
            let short = match oid.as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "2.5.4.6" => Some("C"),
                "2.5.4.9" => Some("STREET"),
                "0.9.2342.19200300.100.1.25" => Some("DC"),
                "0.9.2342.19200300.100.1.1" => Some("UID"),
                _ => None,
            };
            match (short, atv.as_str()) {
                (Some(s), Ok(v)) => {
                    out.push_str(s);
                    out.push('=');
                    escape_value(&mut out, v);
                }
                (short, _) => {
                    // Other types, and values that are not plain strings: `oid=#<DER hex>`.
                    out.push_str(short.map_or(oid.as_str(), |s| s));
                    out.push_str("=#");
                    let any = atv.attr_value();
                    let h = &any.header;
                    let tag = h.tag().0;
                    let first = ((h.class() as u8) << 6) | (u8::from(h.is_constructed()) << 5);
                    if tag < 31 {
                        let _ = write!(out, "{:02x}", first | tag as u8);
                        let len = any.data.len();
                        if len < 128 {
                            let _ = write!(out, "{len:02x}");
                        } else {
                            let bytes = len.to_be_bytes();
                            let skip = bytes.iter().take_while(|b| **b == 0).count();
                            let _ = write!(out, "{:02x}", 0x80 | (bytes.len() - skip) as u8);
                            for b in &bytes[skip..] {
                                let _ = write!(out, "{b:02x}");
                            }
                        }
                        for b in any.data {
                            let _ = write!(out, "{b:02x}");
                        }
                    }
                }
            }
        }
    }
    out
}

/// Escapes an attribute value per RFC 4514 section 2.4.
fn escape_value(out: &mut String, v: &str) {
    let last = v.len().saturating_sub(1);
    for (i, b) in v.bytes().enumerate() {
        match b {
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0x21..=0x7e | b' ' => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:02X}");
            }
        }
    }
}

/// The expiry series a listener has published, so replaced certificates' series go.
#[derive(Debug, Default)]
pub(crate) struct Published {
    names: Mutex<Vec<Arc<str>>>,
}

impl Published {
    /// Sets `gateway_tls_certificate_expiry_seconds` for `set` and drops series of names
    /// no longer in it.
    pub(crate) fn publish(&self, metrics: &Metrics, listener: &Arc<str>, set: Option<&CertSet>) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let fresh: Vec<Arc<str>> = set.map(|s| s.expiry.iter().map(|(n, _)| n.clone()).collect()).unwrap_or_default();
        for old in names.iter().filter(|n| !fresh.contains(n)) {
            metrics.forget_tls_certificate(listener, old);
        }
        if let Some(s) = set {
            for (name, not_after) in &s.expiry {
                metrics.tls_certificate_expiry(listener, name, *not_after);
            }
        }
        *names = fresh;
    }
}

/// Polls the certificate and key files of the listener whose TLS settings `current`
/// returns, every `interval()`, and swaps in new certificates once changed files have
/// stayed the same for a whole interval and parse. A file that does not parse, or a cert
/// and key that do not match (a half-done rotation), keeps the old certificates: logged
/// once per content and counted in `gateway_tls_reloads_total{result="error"}`.
pub(crate) async fn watch(
    listener: Arc<str>,
    current: impl Fn() -> Option<Arc<ListenerTls>>,
    interval: impl Fn() -> Duration,
    metrics: Arc<Metrics>,
    published: Arc<Published>,
) {
    let mut pending: Option<Vec<FileRead>> = None;
    let mut failed: Option<Vec<FileRead>> = None;
    loop {
        let every = interval();
        if every.is_zero() {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        tokio::time::sleep(every).await;
        let Some(tls) = current() else {
            pending = None;
            continue;
        };
        let files = tls.files.clone();
        let Ok(reads) = tokio::task::spawn_blocking(move || read_files(&files)).await else { continue };
        if tls.resolver.current().same_contents(&reads) {
            (pending, failed) = (None, None);
            continue;
        }
        if pending.as_ref() != Some(&reads) {
            // Changed since the last look: let the writer finish first.
            pending = Some(reads);
            continue;
        }
        if failed.as_ref() == Some(&reads) {
            continue;
        }
        match CertSet::build(&tls.files, reads.clone(), &provider(), &tls.path) {
            Ok(set) => {
                let set = Arc::new(set);
                tls.resolver.current.store(set.clone());
                published.publish(&metrics, &listener, Some(&set));
                metrics.tls_reload(&listener, true);
                failed = None;
                tracing::info!(listener = %listener, "TLS certificates changed on disk; loaded for new connections");
            }
            Err(errors) => {
                metrics.tls_reload(&listener, false);
                let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::error!(listener = %listener, errors = %text.join("; "), "TLS certificate files changed but cannot be loaded; the previous certificates stay in use");
                failed = Some(reads);
            }
        }
        pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn set(certs: &[(String, String)]) -> Result<CertSet, Vec<ConfigError>> {
        let files: Vec<CertificateFiles> = (0..certs.len())
            .map(|i| CertificateFiles { cert: format!("c{i}.pem"), key: format!("k{i}.pem") })
            .collect();
        let reads = certs.iter().flat_map(|(c, k)| [Ok(c.clone().into_bytes()), Ok(k.clone().into_bytes())]).collect();
        CertSet::build(&files, reads, &provider(), "listeners[0].tls")
    }

    #[test]
    fn sni_selects_exact_then_wildcard_then_the_first() {
        let a = cert(&["a.test"]);
        let w = cert(&["*.example.com", "example.com"]);
        let s = set(&[a, w]).unwrap();
        let (first, wild) = (s.default.clone(), s.exact["example.com"].clone());
        assert!(Arc::ptr_eq(&s.select(Some("a.test")), &first));
        assert!(Arc::ptr_eq(&s.select(Some("x.example.com")), &wild));
        assert!(Arc::ptr_eq(&s.select(Some("example.com")), &wild));
        assert!(Arc::ptr_eq(&s.select(Some("a.b.example.com")), &first), "a wildcard covers one label");
        assert!(Arc::ptr_eq(&s.select(Some("other.test")), &first));
        assert!(Arc::ptr_eq(&s.select(None), &first));
        assert_eq!(&*s.expiry[1].0, "*.example.com");
    }

    #[test]
    fn bad_files_are_errors_at_their_paths() {
        let a = cert(&["a.test"]);
        let b = cert(&["b.test"]);
        let errs = set(&[a.clone(), (b.0.clone(), a.1.clone())]).unwrap_err();
        assert!(
            errs[0].to_string().starts_with("listeners[0].tls.certificates[1].key: cert and key do not match"),
            "{errs:?}"
        );
        let errs = set(&[(a.0.clone(), "junk".into())]).unwrap_err();
        assert!(
            errs[0].to_string().starts_with("listeners[0].tls.certificates[0].key: k0.pem: not a private key"),
            "{errs:?}"
        );
        let errs = set(&[("junk".into(), a.1.clone())]).unwrap_err();
        assert!(
            errs[0].to_string().starts_with("listeners[0].tls.certificates[0].cert: c0.pem holds no certificate"),
            "{errs:?}"
        );
        let files = [CertificateFiles { cert: "/nonexistent/c.pem".into(), key: "k.pem".into() }];
        let errs = CertSet::build(&files, read_files(&files), &provider(), "listeners[2].tls").unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .starts_with("listeners[2].tls.certificates[0].cert: cannot read file /nonexistent/c.pem"),
            "{errs:?}"
        );
    }

    #[test]
    fn subjects_are_rfc4514() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["alice.test".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        params.distinguished_name.push(rcgen::DnType::CommonName, " alice+\u{e9}");
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(rfc4514(c.subject()), "CN=\\ alice\\+\\C3\\A9,O=Example\\, Inc.");
    }
}
