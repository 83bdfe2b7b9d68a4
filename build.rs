//! Compiles the wire contract in proto/ with protox (pure Rust: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/gpufleet/v1/types.proto",
        "proto/gpufleet/v1/agent.proto",
        "proto/gpufleet/v1/control.proto",
        "proto/gpufleet/v1/gateway.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
