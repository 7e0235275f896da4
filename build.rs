//! Embeds the API document for `GET /openapi.json`, minified and deflated: the component
//! carries it, and every byte of the component is compiled on Spin's cold starts.

#[path = "build/merge_openapi.rs"]
mod merge_openapi;

/// The component's stack, instead of Rust's 1 MiB. The stack sits at the bottom of linear
/// memory, and Spin's pooling allocator zeroes everything below the data segments each
/// time an instance is recycled, used or not: a 1 MiB stack was a 1 MiB `memset` per
/// request (README, "Performance on Spin"). The deepest request measured, JSON nested as
/// deep as serde_json parses, uses about 50 KiB; an overflow wraps below address 0 and traps rather
/// than overwrite data (the host test `json_as_deep_as_the_parser_goes_...`).
const STACK_BYTES: u32 = 128 * 1024;

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo::rustc-link-arg-cdylib=-zstack-size={STACK_BYTES}");
    }
    println!("cargo::rerun-if-changed=openapi.json");
    println!("cargo::rerun-if-changed=openapi.kinds.json");
    println!("cargo::rerun-if-changed=build/merge_openapi.rs");
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("dir"));
    let document = merge_openapi::document(&dir);
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let minified = serde_json::to_vec(&document).expect("serializing");
    std::fs::write(
        out.join("openapi.json.deflate"),
        miniz_oxide::deflate::compress_to_vec(&minified, 10),
    )
    .expect("writing the deflated document");
}
