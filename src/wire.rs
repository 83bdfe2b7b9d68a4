pub mod pb {
    tonic::include_proto!("gpufleet.v1");
}
