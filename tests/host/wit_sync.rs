//! The host binds Spin's interfaces from WIT copied out of the spin-sdk crate; this
//! keeps the copy identical to the crate the component is built with.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn vendored_spin_wit_matches_the_spin_sdk_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .expect("cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "spin-sdk" && p["version"] == "5.2.0")
        .expect("spin-sdk 5.2.0 in the dependency graph")["manifest_path"]
        .as_str()
        .unwrap()
        .to_string();
    let sdk_wit = PathBuf::from(manifest)
        .parent()
        .unwrap()
        .join("wit/deps/spin@2.0.0");
    let ours =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../wit/spin-imports/deps/spin@2.0.0");
    for file in ["key-value.wit", "variables.wit"] {
        assert_eq!(
            std::fs::read_to_string(ours.join(file)).unwrap(),
            std::fs::read_to_string(sdk_wit.join(file)).unwrap(),
            "{file} differs from spin-sdk's"
        );
    }
}
