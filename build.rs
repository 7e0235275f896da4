//! Embeds `openapi.json` minified (half its size: the component carries it for
//! `GET /openapi.json`), after checking that it is JSON.

fn main() {
    println!("cargo::rerun-if-changed=openapi.json");
    let text = std::fs::read_to_string("openapi.json").expect("openapi.json at the crate root");
    let document: serde_json::Value = serde_json::from_str(&text).expect("openapi.json is JSON");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(
        out.join("openapi.min.json"),
        serde_json::to_vec(&document).expect("serializing"),
    )
    .expect("writing the minified document");
}
