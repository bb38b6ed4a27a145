//! Compiles `ccfleet/v1/*.proto` with the pure-Rust `protox` compiler (no
//! system `protoc`, so the build works the same in CI and inside a Nix build)
//! and hands the descriptors to tonic's code generator.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "ccfleet/v1/fleet.proto",
        "ccfleet/v1/agent.proto",
        "ccfleet/v1/admin.proto",
        "ccfleet/v1/enrollment.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The encoded descriptor set feeds the gRPC reflection service.
    std::fs::write(
        out_dir.join("ccfleet_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The Agent service's stream is called `Connect`, which collides with
        // the generated `AgentClient::connect` constructor; every client in
        // this workspace builds its own (TLS) channel anyway.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
