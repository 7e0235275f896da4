//! Builds the release `.wasm` components (cargo makes this a no-op when they are fresh)
//! and compiles each into wasmtime once per test run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::kv::KvStore;
use super::spin_host::{Loaded, SpinApp, engine};

pub struct Components {
    pub kling: Loaded,
    pub baseline: Loaded,
    pub wasm_dir: PathBuf,
}

static COMPONENTS: OnceLock<Components> = OnceLock::new();

pub fn components() -> &'static Components {
    COMPONENTS.get_or_init(|| {
        let wasm_dir = build_release_wasm();
        let engine = engine();
        let load = |name: &str| {
            Loaded::load(&engine, &wasm_dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"))
        };
        Components {
            kling: load("kling_webhook.wasm"),
            baseline: load("bench_baseline.wasm"),
            wasm_dir,
        }
    })
}

/// `cargo build --release --target wasm32-wasip2` for the component and the benchmark
/// baseline, in the same target directory as this test binary.
fn build_release_wasm() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace");
    // <target>/debug/deps/host-<hash>
    let target_dir = std::env::current_exe()
        .expect("test binary path")
        .ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "kling-webhook",
            "-p",
            "bench-baseline",
        ])
        .status()
        .expect("running cargo to build the components");
    assert!(status.success(), "building the wasm components failed");
    target_dir.join("wasm32-wasip2").join("release")
}

/// The kling-webhook component with the standard test configuration and a fresh store.
pub fn kling_app() -> SpinApp {
    kling_app_with(&super::requests::STANDARD_VARIABLES, KvStore::default())
}

pub fn kling_app_with<K: AsRef<str>, V: AsRef<str>>(variables: &[(K, V)], kv: KvStore) -> SpinApp {
    SpinApp::new(&components().kling, variables, kv)
}
