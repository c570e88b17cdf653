//! Handlers: what answers a matched route. Exactly one per route, chosen when the config is
//! compiled ([`Handler`]) and matched in one place, the pipeline's handler phase (inline
//! there: an async dispatch function here would move the proxy's large future once more
//! per request).

pub mod aggregate;
pub mod proxy;
pub mod publish;
pub mod respond;

use std::sync::Arc;

use crate::upstream::Upstream;

/// What answers a route's requests.
#[derive(Debug)]
pub enum Handler {
    /// Forward to an upstream: this one, or (with `split`) the first share with a weight,
    /// unless a split or a tenant's flag chooses another per request.
    Proxy(Arc<Upstream>),
    /// Answer with a fixed response.
    Respond(respond::Respond),
    /// Answer with one JSON document from several upstream calls.
    Aggregate(Box<aggregate::Aggregate>),
    /// Publish the request as an event on a Redis stream; 202 once Redis has it.
    Publish(Box<publish::Publish>),
}

impl Handler {
    /// The route's upstream, when it forwards.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        match self {
            Handler::Proxy(up) => Some(up),
            Handler::Respond(_) | Handler::Aggregate(_) | Handler::Publish(_) => None,
        }
    }
}
