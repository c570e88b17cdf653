//! Integration tests: the real `portico` binary against real servers on loopback.
//! One test binary (faster to link than one per file).
#![allow(unreachable_pub, clippy::unwrap_used)]

mod access;
mod aggregate;
mod auth;
mod bodies;
mod cli;
mod client_side;
mod compression;
mod connections;
mod cors;
mod demo;
mod discovery;
mod docs;
mod errors;
mod framing;
mod gaps;
mod lean_server;
mod lifecycle;
mod matrix;
mod observe;
mod paths;
mod proxy;
mod ratelimit;
mod ratelimit_redis;
mod redis_cluster;
mod regex_routes;
mod resilience;
mod respond;
mod revocation;
mod support;
mod tenants;
mod tls_listener;
mod tls_upstream;
mod transforms;
mod upstream_h1;
