//! Compiles `proto/nodedns/admin/v1/admin.proto` with protox, a protobuf
//! compiler in Rust, so a fresh machine needs no system `protoc`. Emits the
//! tonic server and client and the encoded file descriptor set that server
//! reflection serves.

use std::path::PathBuf;

use prost::Message as _;

const PROTO: &str = "nodedns/admin/v1/admin.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([PROTO], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("admin_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // No `connect` helper: it needs tonic's transport feature; the ctl
        // client and the tests bring their own HTTP/2 connection.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
