//! TLS toward `https://` targets: rustls (aws-lc-rs), roots from a configured CA file or
//! the system, an optional SNI/verification name, and an optional client certificate.
//! Certificate verification is always on.

use std::sync::Arc;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use portico_config::{ConfigError, UpstreamProtocol};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The connector of an upstream: TLS-capable when its targets are `https://`.
pub(crate) fn connector(
    name: &str,
    def: &portico_config::Upstream,
    https: bool,
    http: HttpConnector,
) -> Result<HttpsConnector<HttpConnector>, ConfigError> {
    let err = |field: &str, msg: String| ConfigError::new(format!("upstreams.{name}.tls{field}"), msg);
    let tls = def.tls.clone().unwrap_or_default();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("", format!("TLS setup failed: {e}")))?;
    let roots = if https {
        root_store(tls.ca.as_deref(), name).map_err(|m| err(".ca", m))?
    } else {
        // Plain http: the TLS side is never used.
        RootCertStore::empty()
    };
    let builder = builder.with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| err(".client_cert", format!("cannot read {cert}: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(".client_cert", format!("{cert}: not a PEM certificate file: {e}")))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| err(".client_key", format!("cannot read a private key from {key}: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err(".client_cert", format!("certificate and key do not fit: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let b = HttpsConnectorBuilder::new().with_tls_config(config).https_or_http();
    let b = match &tls.server_name {
        Some(n) => {
            let name = rustls_pki_types::ServerName::try_from(n.clone())
                .map_err(|e| err(".server_name", format!("{n:?} is not a DNS name or IP address: {e}")))?;
            b.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => b,
    };
    // http2: ALPN offers h2 only. http1: no ALPN (servers then speak HTTP/1.1).
    Ok(match def.protocol {
        UpstreamProtocol::Http1 => b.enable_http1().wrap_connector(http),
        UpstreamProtocol::Http2 => b.enable_http2().wrap_connector(http),
    })
}

/// The trusted roots: the certificates of the PEM file `ca`, else the system's. `who`
/// names the user in the warning logged when the system has none.
pub(crate) fn root_store(ca: Option<&str>, who: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read {ca}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{ca}: not a PEM certificate file: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{ca} holds no certificate"));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("{ca}: {e}"))?;
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if roots.is_empty() {
            // Not fatal: a minimal image may lack a CA bundle. Every handshake then fails
            // verification, and this says why.
            tracing::warn!(user = %who, "no system CA certificates found; https peers cannot be verified until a CA file is set");
        }
    }
    Ok(roots)
}

/// The contents of the TLS files an upstream names (CA, client certificate and key), so a
/// reload can tell whether they changed on disk. Unreadable files count as empty.
pub fn files_fingerprint(def: &portico_config::Upstream) -> Vec<Vec<u8>> {
    let Some(tls) = &def.tls else { return Vec::new() };
    [&tls.ca, &tls.client_cert, &tls.client_key]
        .into_iter()
        .flatten()
        .map(|path| std::fs::read(path).unwrap_or_default())
        .collect()
}
