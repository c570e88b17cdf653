//! The one body type that flows through the gateway in both directions.
//!
//! An enum rather than a boxed trait object: no allocation per request, and every variant
//! is `Unpin`, so polling needs no pinning tricks.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;

/// Errors a body can produce while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body.
#[derive(Debug, Default)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// A complete body held in memory (gateway-made responses).
    Full(Option<Bytes>),
    /// A body streamed from the other side as it arrives.
    Incoming(Incoming),
    /// A client body streamed upstream, cut off with an error past the listener's limit.
    Limited(Limited<Incoming>),
    /// A response body read straight from a pooled HTTP/1.1 upstream connection.
    H1(crate::upstream::h1::ResponseBody),
    /// A body that holds something until it ends or is dropped (a concurrency slot).
    Holding(Box<Body>, Option<Box<dyn std::fmt::Debug + Send + Sync>>),
}

impl Body {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }
}

impl Body {
    /// This body, holding `held` until it ends or is dropped.
    pub fn holding(self, held: impl std::fmt::Debug + Send + Sync + 'static) -> Self {
        Body::Holding(Box::new(self), Some(Box::new(held)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Limited(b) => Pin::new(b).poll_frame(cx),
            Body::H1(b) => Pin::new(b).poll_frame(cx),
            Body::Holding(b, held) => {
                let res = Pin::new(&mut **b).poll_frame(cx);
                if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    *held = None;
                }
                res
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Limited(b) => b.is_end_stream(),
            Body::H1(b) => b.is_end_stream(),
            Body::Holding(b, _) => b.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Limited(b) => b.size_hint(),
            Body::H1(b) => b.size_hint(),
            Body::Holding(b, _) => b.size_hint(),
        }
    }
}
