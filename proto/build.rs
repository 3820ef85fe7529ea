//! Compiles `proto/*.proto` with tonic/prost. `protoc` comes from the `protoc-bin-vendored`
//! crate, so nobody has to install it by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY of set_var: build scripts are single-threaded.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // `PROTOC` is how prost-build finds the compiler.
    unsafe_env_set("PROTOC", protoc.as_os_str());
    let files = ["proto/chunk.proto", "proto/controller.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&files, &["proto"])?;
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_env_set(key: &str, value: &std::ffi::OsStr) {
    // Edition 2024 marks set_var unsafe because other threads may read the environment;
    // a build script has no other threads.
    unsafe { std::env::set_var(key, value) }
}
