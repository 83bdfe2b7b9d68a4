//! Compiles the wire contract in proto/gpufleet and etcd's API in proto/etcd
//! with protox (pure Rust: no protoc needed).

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
    // etcd's v3 API (vendored in proto/etcd): the HA store's client only.
    let etcd = [
        "proto/etcd/auth.proto",
        "proto/etcd/kv.proto",
        "proto/etcd/rpc.proto",
    ];
    for p in &etcd {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(etcd, ["proto/etcd"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
