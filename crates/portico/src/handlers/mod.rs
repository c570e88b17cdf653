//! Handlers: what answers a matched route. Exactly one per route.

pub mod proxy;
