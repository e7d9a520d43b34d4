//! Compiles `proto/parley/v1/*.proto` with protox (pure Rust, no system
//! `protoc`) into prost/tonic code, and writes the encoded descriptor set that
//! tonic-reflection serves so `grpcurl` can list every service.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["auth", "chat", "common", "edge", "presence"]
        .map(|name| format!("proto/parley/v1/{name}.proto"));
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("parley_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
