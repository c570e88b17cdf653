//! A deprecated route (`deprecated` in its config): `Deprecation` (RFC 9745), `Sunset`
//! (RFC 8594) and `Link` on every response, and from its sunset on the gateway's own 410
//! before anything else runs, so that the day needs no config change. Who still calls it
//! is counted in `gateway_deprecated_requests_total{route,consumer}`.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::error::{ErrorKind, GatewayError};

/// `Deprecation`.
static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
/// `Sunset`.
static SUNSET: HeaderName = HeaderName::from_static("sunset");

/// A route's compiled `deprecated`.
#[derive(Debug)]
pub struct Lifecycle {
    /// `@<seconds since the epoch>`, RFC 9745's structured date.
    deprecation: HeaderValue,
    /// When the route is retired, and the `Sunset` value (an HTTP date).
    sunset: Option<(SystemTime, HeaderValue)>,
    /// The `Link` value: the notice (`rel="deprecation"`) and the successor
    /// (`rel="successor-version"`), when given.
    link: Option<HeaderValue>,
    /// What to call instead, named in the 410's body.
    replacement: Option<Arc<str>>,
}

impl Lifecycle {
    /// Compiles a validated `deprecated`.
    pub fn new(d: &portico_config::lifecycle::Deprecated) -> Self {
        let deprecation = HeaderValue::from_str(&format!("@{}", d.since.unix_seconds()))
            .unwrap_or_else(|_| HeaderValue::from_static("@0"));
        let sunset = d.sunset.and_then(|s| {
            let v = HeaderValue::from_str(&httpdate::fmt_http_date(s.0)).ok()?;
            Some((s.0, v))
        });
        let mut links = Vec::new();
        if let Some(l) = &d.link {
            links.push(format!("<{l}>; rel=\"deprecation\"; type=\"text/html\""));
        }
        if let Some(r) = &d.replacement {
            links.push(format!("<{r}>; rel=\"successor-version\""));
        }
        let link = (!links.is_empty()).then(|| HeaderValue::from_str(&links.join(", ")).ok()).flatten();
        Self { deprecation, sunset, link, replacement: d.replacement.as_deref().map(Arc::from) }
    }

    /// The 410 for a request now, once the sunset has passed. Out of line: the pipeline's
    /// code stays small for the routes without a lifecycle.
    #[inline(never)]
    pub fn retired_now(&self) -> Option<GatewayError> {
        self.retired(SystemTime::now())
    }

    /// The 410 for a request at `now`, once the sunset has passed.
    pub fn retired(&self, now: SystemTime) -> Option<GatewayError> {
        let (sunset, _) = self.sunset.as_ref()?;
        (now >= *sunset).then(|| GatewayError::new(ErrorKind::Retired(self.replacement.clone())))
    }

    /// A response of route `route` to `user_id` (none: anonymous) is ready: adds the
    /// lifecycle's fields and counts the caller in `gateway_deprecated_requests_total`.
    #[inline(never)]
    pub fn answered(
        &self,
        headers: &mut HeaderMap,
        metrics: &crate::observe::metrics::Metrics,
        route: &Arc<str>,
        user_id: Option<&Arc<str>>,
    ) {
        self.annotate(headers);
        metrics.deprecated_request(route, user_id);
    }

    /// Adds the lifecycle's fields to a response of the route (the upstream's own `Link`
    /// fields are kept).
    pub fn annotate(&self, headers: &mut HeaderMap) {
        headers.insert(DEPRECATION.clone(), self.deprecation.clone());
        if let Some((_, v)) = &self.sunset {
            headers.insert(SUNSET.clone(), v.clone());
        }
        if let Some(v) = &self.link {
            headers.append(header::LINK, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::lifecycle::{Deprecated, Timestamp};

    fn lifecycle(sunset: Option<&str>, link: Option<&str>, replacement: Option<&str>) -> Lifecycle {
        Lifecycle::new(&Deprecated {
            since: Timestamp::parse("2026-01-01").unwrap(),
            sunset: sunset.map(|s| Timestamp::parse(s).unwrap()),
            link: link.map(str::to_owned),
            replacement: replacement.map(str::to_owned),
        })
    }

    #[test]
    fn every_response_gets_the_rfc_fields() {
        let l = lifecycle(Some("2027-01-31T00:00:00Z"), Some("https://dev.example/v1"), Some("/v2/users"));
        let mut h = HeaderMap::new();
        h.insert(header::LINK, HeaderValue::from_static("</next>; rel=\"next\""));
        l.annotate(&mut h);
        assert_eq!(h["deprecation"], "@1767225600");
        assert_eq!(h["sunset"], "Sun, 31 Jan 2027 00:00:00 GMT");
        let links: Vec<_> = h.get_all(header::LINK).iter().collect();
        assert_eq!(
            links,
            [
                "</next>; rel=\"next\"",
                "<https://dev.example/v1>; rel=\"deprecation\"; type=\"text/html\", </v2/users>; rel=\"successor-version\""
            ]
        );
        let bare = lifecycle(None, None, None);
        let mut h = HeaderMap::new();
        bare.annotate(&mut h);
        assert_eq!((h.len(), &h["deprecation"]), (1, &HeaderValue::from_static("@1767225600")));
    }

    #[test]
    fn the_sunset_retires_the_route_with_a_410_naming_the_replacement() {
        let l = lifecycle(Some("2027-01-31"), None, Some("/v2/users"));
        let sunset = Timestamp::parse("2027-01-31").unwrap().0;
        assert!(l.retired(sunset - std::time::Duration::from_secs(1)).is_none());
        let e = l.retired(sunset).expect("retired at its sunset");
        assert_eq!(e.status(), 410);
        assert_eq!(e.kind, ErrorKind::Retired(Some("/v2/users".into())));
        assert!(lifecycle(None, None, None).retired(SystemTime::now()).is_none(), "no sunset: never retired");
    }
}
