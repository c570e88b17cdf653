//! Observability: Prometheus metrics, the JSON access log and the audit log.

pub mod access_log;
pub mod audit;
pub mod histogram;
pub mod metrics;

pub use access_log::{AccessLog, AccessRecord};
pub use audit::{AuditLog, AuditRecord};
pub use metrics::Metrics;
