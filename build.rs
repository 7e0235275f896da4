//! Embeds the API document for `GET /openapi.json`, minified and deflated: the component
//! carries it, and every byte of the component is compiled on Spin's cold starts.

#[path = "build/merge_openapi.rs"]
mod merge_openapi;

fn main() {
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
