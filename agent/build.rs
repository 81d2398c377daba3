//! Compiles `proto/coredns/dns/dns.proto` (CoreDNS's `DnsService`, served
//! on `grpc://` blocks) with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["coredns/dns/dns.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
