//! Compiles Envoy's external authorization service (`envoy.service.auth.v3`)
//! with protox (a pure-Rust protobuf compiler), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/envoy/ext_authz.proto";
    println!("cargo:rerun-if-changed=proto/envoy");
    let descriptors = protox::compile([proto], ["proto/envoy"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
