//! Wire protocols the gateway speaks itself.

pub mod h1;
