//! Wire protocols the gateway speaks itself.

pub mod grpc;
pub mod h1;
