//! Shared state behind the instances of a deployment. Only Redis so far ([`redis`]): the
//! JWT revocation deny-list uses it; rate-limit counters will.

pub mod redis;
