//! Compiles `proto/tokenvend/v1/*.proto` with protox (pure Rust, no system `protoc`),
//! keeping source info so reflection serves the proto comments to grpcurl users.
use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["tokenvend/v1/token.proto", "tokenvend/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    // Imports included (google/protobuf/timestamp.proto): reflection clients must be able to
    // resolve every type without proto files of their own.
    let fds = protox::Compiler::new([&root])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(files)?
        .file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("tokenvend_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Written by hand (src/token_response.rs) so a cached answer is encoded once.
        .extern_path(
            ".tokenvend.v1.GetTokenResponse",
            "crate::v1::GetTokenResponse",
        )
        // Small per-call buffers instead of tonic's 8 KiB each way (src/codec.rs).
        .codec_path("crate::codec::SmallBufferCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
