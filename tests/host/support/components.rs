//! Builds the release `.wasm` components (cargo makes this a no-op when they are fresh)
//! and compiles each into wasmtime once per test run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

use super::kv::KvStore;
use super::spin_host::{Loaded, SpinApp, engine};

pub struct Components {
    pub kling: Loaded,
    pub baseline: Loaded,
    /// `examples/pipeline-starter` with kling-webhook plugged into its
    /// `kling:video/tasks` import.
    pub starter_composed: Loaded,
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
        let composed = compose(
            &wasm_dir.join("pipeline_starter.wasm"),
            &wasm_dir.join("kling_webhook.wasm"),
        );
        std::fs::write(wasm_dir.join("pipeline_starter_composed.wasm"), composed)
            .expect("writing the composition");
        // KLING_WEBHOOK_WASM runs the suite against another build of the component (an
        // older commit's, to show that a test catches what it was written for).
        let kling = match std::env::var_os("KLING_WEBHOOK_WASM") {
            Some(path) => Loaded::load(&engine, Path::new(&path))
                .unwrap_or_else(|e| panic!("KLING_WEBHOOK_WASM: {e:#}")),
            None => load("kling_webhook.wasm"),
        };
        Components {
            kling,
            baseline: load("bench_baseline.wasm"),
            starter_composed: load("pipeline_starter_composed.wasm"),
            wasm_dir,
        }
    })
}

/// What `wac plug --plug kling_webhook.wasm pipeline_starter.wasm` does, with the
/// `wac-graph` library `wac` is built on: every import of the socket that the plug
/// exports (`kling:video/tasks`) is wired to it; the rest stay imports of the result.
fn compose(socket: &Path, plug: &Path) -> Vec<u8> {
    let mut graph = CompositionGraph::new();
    let socket = Package::from_file("example:pipeline-starter", None, socket, graph.types_mut())
        .expect("reading the example component");
    let socket = graph
        .register_package(socket)
        .expect("registering the socket");
    let plug = Package::from_file("kling:webhook", None, plug, graph.types_mut())
        .expect("reading kling-webhook");
    let plug = graph.register_package(plug).expect("registering the plug");
    wac_graph::plug(&mut graph, vec![plug], socket)
        .expect("kling-webhook satisfies the example's kling:video import");
    graph
        .encode(EncodeOptions::default())
        .expect("encoding the composition")
}

/// The target directory this test binary was built in (`<target>/debug/deps/host-<hash>`).
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .expect("test binary path")
        .ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf()
}

/// `cargo build --release --target wasm32-wasip2` for the component, the benchmark
/// baseline and the example, in the same target directory as this test binary.
fn build_release_wasm() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace");
    let target_dir = target_dir();
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
            "-p",
            "pipeline-starter",
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
    let mut app = SpinApp::new(&components().kling, variables, kv);
    app.documented = true;
    app
}

/// The composed example, deployed beside `kling` (its variables and its store), the way
/// a Spin app runs both components over one key-value store.
pub fn starter_beside(kling: &SpinApp) -> SpinApp {
    kling.with_component(&components().starter_composed)
}
