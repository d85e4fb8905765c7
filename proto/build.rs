//! Compiles `proto/leash/v1/*.proto` and `proto/spiffe/workload.proto` with protox, so
//! no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/leash/v1/common.proto",
        "proto/leash/v1/controlplane.proto",
        "proto/leash/v1/agent.proto",
        "proto/leash/v1/admin.proto",
        "proto/spiffe/workload.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
