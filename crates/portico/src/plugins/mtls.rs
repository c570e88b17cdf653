//! mTLS authentication: the client certificate the listener verified (`tls.client_auth`)
//! is the credential. The caller is the consumer listing the certificate's subject or one
//! of its SANs in `mtls_subjects`; otherwise the subject itself is the user ID, unless
//! `consumers_only` refuses unknown certificates. A connection without a verified
//! certificate carries no credential for this plugin.

use super::hooks::{AccessCtx, Hooks, Phases, Verdict};
use super::{Passed, Refusal, RequestView};
use crate::error::{Challenge, ErrorKind, GatewayError};
use crate::identity::{Consumers, Identity};
use crate::pipeline::TlsInfo;

/// A compiled `mtls` plugin.
#[derive(Debug)]
pub struct MtlsAuth {
    consumers_only: bool,
}

impl MtlsAuth {
    /// Compiles the plugin config.
    pub fn new(cfg: &portico_config::MtlsAuth) -> Self {
        Self { consumers_only: cfg.consumers_only }
    }

    /// The caller of a request on a connection with a verified client certificate.
    pub fn check(&self, tls: Option<&TlsInfo>, consumers: &Consumers) -> Result<Option<Identity>, GatewayError> {
        let Some(tls) = tls else { return Ok(None) };
        let Some(subject) = tls.client_subject.as_deref() else { return Ok(None) };
        let consumer = std::iter::once(subject)
            .chain(tls.client_sans.iter().map(|s| &**s))
            .find_map(|name| consumers.by_certificate(name))
            .cloned();
        let user_id = match &consumer {
            Some(c) => c.id.clone(),
            None if self.consumers_only => {
                return Err(GatewayError::new(ErrorKind::Unauthorized(
                    Challenge::Bearer,
                    "client certificate not allowed",
                )));
            }
            None => subject.into(),
        };
        Ok(Some(Identity { method: "mtls", user_id, consumer, token: None, key_name: None }))
    }
}

impl Hooks for MtlsAuth {
    fn kind(&self) -> &'static str {
        "mtls"
    }

    fn phases(&self) -> Phases {
        Phases { access: true, ..Phases::default() }
    }

    fn authenticates(&self) -> bool {
        true
    }

    // No challenge: a 401 cannot ask for a client certificate, which is the handshake's.

    async fn access(&self, req: &RequestView<'_>, cx: &AccessCtx<'_>, state: &mut Passed) -> Result<Verdict, Refusal> {
        state.authenticated(self.check(req.tls, cx.consumers), self.kind())
    }
}
