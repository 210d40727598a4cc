//! The tokenvend.v1 wire types. Generated; the `.proto` files are the source of truth.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod codec;
mod token_response;

pub mod v1 {
    tonic::include_proto!("tokenvend.v1");
    pub use crate::token_response::GetTokenResponse;
}

/// Encoded `FileDescriptorSet` of the tokenvend.v1 protos (with comments), served by
/// gRPC server reflection so grpcurl needs no proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tokenvend_descriptor.bin"));
