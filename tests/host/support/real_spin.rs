//! The component on a real Spin: `spin build` with the shipped manifest, then `spin up`
//! processes on loopback, each with a throw-away store (SQLite files in a fresh directory,
//! or a `redis-server` several instances share), driven over HTTP as a client would.
//!
//! The Spin CLI is `spin` from `PATH` when there is one, else `../shared/tools/spin`
//! beside the checkout, or beside the local repository it was cloned from (`SPIN_BIN`
//! names another); each run says which. Without any, the
//! suite fails and says how to get one: it never skips.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::spin_host::Reply;

/// The workspace root (this crate is `tests/`).
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
}

/// `../shared/tools/spin` beside the local repository this checkout was cloned from,
/// when there is none beside the checkout (`git clone . "$(mktemp -d)"` leaves it behind).
fn beside_origin() -> Option<PathBuf> {
    if workspace().join("../shared/tools/spin").is_file() {
        return None;
    }
    let origin = Command::new("git")
        .args(["config", "--get", "remote.origin.url"])
        .current_dir(workspace())
        .output()
        .ok()?;
    let origin = PathBuf::from(String::from_utf8(origin.stdout).ok()?.trim());
    Some(origin.join("../shared/tools/spin")).filter(|cli| cli.is_file())
}

/// The Spin CLI this suite runs, found once.
pub fn spin_cli() -> &'static Path {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        let (cli, from) = if let Some(path) = std::env::var_os("SPIN_BIN") {
            (PathBuf::from(path), "SPIN_BIN")
        } else if let Some(path) = on_path("spin") {
            (path, "PATH")
        } else if let Some(path) = beside_origin() {
            (
                path,
                "../shared/tools/spin beside the repository this was cloned from",
            )
        } else {
            (
                workspace().join("../shared/tools/spin"),
                "../shared/tools/spin",
            )
        };
        let version = Command::new(&cli)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "no Spin CLI at {} ({e}): the real-Spin suite needs one. Put `spin` on PATH \
                     (https://spinframework.dev/install) or set SPIN_BIN",
                    cli.display()
                )
            });
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        summarize(&format!(
            "real Spin: {version}, from {from} ({})",
            cli.display()
        ));
        cli
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Runs `spin build` on the shipped manifest once (cargo makes it a no-op when the
/// component is fresh), into this test binary's target directory; returns the
/// directory holding the release `.wasm` files.
pub fn spin_build() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target_dir = super::components::target_dir();
        for manifest in ["spin.toml", "examples/pipeline-starter/spin.toml"] {
            let status = Command::new(spin_cli())
                .current_dir(workspace())
                .env("CARGO_TARGET_DIR", &target_dir)
                .args(["build", "--skip-generate-wits", "--from", manifest])
                .status()
                .expect("running spin build");
            assert!(status.success(), "spin build --from {manifest} failed");
        }
        target_dir.join("wasm32-wasip2").join("release")
    })
}

/// Appends a line to `<target>/real-spin-summary.txt`, which `.ci/run` prints after the
/// tests: what ran on the real Spin, and how much.
pub fn summarize(line: &str) {
    use std::io::Write;
    let path = super::components::target_dir().join("real-spin-summary.txt");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the summary file");
    writeln!(file, "{line}").expect("writing the summary");
}

/// A fresh directory for one Spin instance's files (manifest copy, stores, logs).
fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static CLEANED: OnceLock<()> = OnceLock::new();
    let root = super::components::target_dir().join("real-spin");
    // What failed runs left (kept for their logs until the next run).
    CLEANED.get_or_init(|| {
        let _ = std::fs::remove_dir_all(&root);
    });
    let dir = root.join(format!(
        "{}-{name}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// A free loopback port (bound, then released for the process about to take it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Where an instance keeps its key-value labels.
#[derive(Clone)]
pub enum Stores {
    /// Spin's own SQLite store, one file per label, in the instance's directory.
    Sqlite,
    /// The Redis runtime config the project ships (`deploy/runtime-config.redis.toml`),
    /// pointed at this server.
    Redis(u16),
}

impl Stores {
    fn runtime_config(&self, dir: &Path) -> String {
        match self {
            Stores::Sqlite => super::kv::LABELS
                .iter()
                .map(|label| {
                    format!(
                        "[key_value_store.{label}]\ntype = \"spin\"\npath = \"{}\"\n",
                        dir.join(format!("{label}.db")).display()
                    )
                })
                .collect(),
            Stores::Redis(port) => {
                let shipped =
                    std::fs::read_to_string(workspace().join("deploy/runtime-config.redis.toml"))
                        .expect("deploy/runtime-config.redis.toml");
                assert!(shipped.contains("redis://localhost:6379/"));
                shipped.replace(
                    "redis://localhost:6379/",
                    &format!("redis://127.0.0.1:{port}/"),
                )
            }
        }
    }
}

/// A `redis-server` on a free loopback port, without persistence; stopped on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> Self {
        let server = on_path("redis-server").unwrap_or_else(|| {
            panic!("no redis-server on PATH: run scripts/install-tools.sh (Debian's redis-server)")
        });
        let port = free_port();
        let mut child = Command::new(server)
            .process_group(0)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server exited ({status})");
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port }
    }
}

impl RedisServer {
    /// How many keys database `db` holds (`SELECT db`, `DBSIZE`, inline commands).
    pub async fn keys_in(&self, db: u8) -> u64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connecting to redis-server");
        stream
            .write_all(format!("SELECT {db}\r\nDBSIZE\r\n").as_bytes())
            .await
            .unwrap();
        let mut reply = Vec::new();
        let mut buffer = [0u8; 64];
        while !String::from_utf8_lossy(&reply).contains("\r\n:") || !reply.ends_with(b"\r\n") {
            let n = stream
                .read(&mut buffer)
                .await
                .expect("reading from redis-server");
            assert!(
                n > 0,
                "redis-server closed: {:?}",
                String::from_utf8_lossy(&reply)
            );
            reply.extend_from_slice(&buffer[..n]);
        }
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("+OK\r\n:"), "{text:?}");
        text["+OK\r\n:".len()..]
            .trim()
            .parse()
            .expect("DBSIZE's answer")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// One `spin up` process serving a manifest on loopback; killed on drop.
pub struct SpinInstance {
    child: Child,
    /// Requests this suite sent it (all checked against `openapi.json`).
    pub sent: AtomicUsize,
    dir: PathBuf,
    pub base_url: String,
    /// Values that must never appear in Spin's output or the component's logs.
    secrets: Vec<String>,
}

/// A manifest to run: one shipped with the project, with its `source` paths pointed
/// at the build (`spin build` leaves them in the target directory, which the tests
/// keep outside the checkout), or one written for the test.
pub enum App {
    /// `spin.toml`.
    Shipped,
    /// `examples/pipeline-starter/spin.toml`: the example through Spin's component
    /// dependencies.
    StarterWithDependencies,
    /// The example composed with kling-webhook ahead of time (`wac plug`), beside
    /// kling-webhook's own HTTP component.
    StarterComposed(PathBuf),
}

impl App {
    fn manifest(&self, wasm_dir: &Path) -> String {
        let read = |path: &str| {
            std::fs::read_to_string(workspace().join(path))
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        let point = |manifest: String, from: &str, to: &Path| {
            assert!(manifest.contains(from), "the manifest names {from}");
            manifest.replace(from, &to.display().to_string())
        };
        match self {
            App::Shipped => point(
                read("spin.toml"),
                "target/wasm32-wasip2/release/kling_webhook.wasm",
                &wasm_dir.join("kling_webhook.wasm"),
            ),
            App::StarterWithDependencies | App::StarterComposed(_) => {
                let manifest = point(
                    read("examples/pipeline-starter/spin.toml"),
                    "../../target/wasm32-wasip2/release/kling_webhook.wasm",
                    &wasm_dir.join("kling_webhook.wasm"),
                );
                let manifest = point(
                    manifest,
                    "../../target/wasm32-wasip2/release/pipeline_starter.wasm",
                    &wasm_dir.join("pipeline_starter.wasm"),
                );
                match self {
                    App::StarterComposed(composed) => {
                        // The composition already holds kling-webhook: no dependency.
                        let dependencies = "[component.starter.dependencies]\n";
                        let start = manifest.find(dependencies).expect("a dependencies table");
                        let end = start
                            + dependencies.len()
                            + manifest[start + dependencies.len()..]
                                .find("\n\n")
                                .expect("the table ends");
                        let manifest = format!("{}{}", &manifest[..start], &manifest[end..]);
                        point(
                            manifest,
                            &wasm_dir.join("pipeline_starter.wasm").display().to_string(),
                            composed,
                        )
                    }
                    _ => manifest,
                }
            }
        }
    }
}

impl SpinInstance {
    /// `spin up` of `app` over `stores` with these variables (as `SPIN_VARIABLE_*`); waits
    /// until `/health` answers. The port is chosen free and released for Spin to take,
    /// so another process may take it first: then Spin exits, and it is tried again on
    /// another port.
    pub async fn start(app: App, stores: &Stores, variables: &[(&str, String)]) -> Self {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(&app, stores, variables).await {
                Ok(instance) => return instance,
                Err(output) => failures.push(output),
            }
        }
        panic!("spin up exited three times:\n{}", failures.join("\n"));
    }

    async fn try_start(
        app: &App,
        stores: &Stores,
        variables: &[(&str, String)],
    ) -> Result<Self, String> {
        let wasm_dir = spin_build();
        let dir = scratch_dir("spin");
        std::fs::write(dir.join("spin.toml"), app.manifest(wasm_dir)).unwrap();
        std::fs::write(dir.join("runtime-config.toml"), stores.runtime_config(&dir)).unwrap();
        let port = free_port();
        let base_url = format!("http://127.0.0.1:{port}");
        let mut command = Command::new(spin_cli());
        // Its own process group: `spin up` runs the app in a child (`spin trigger http`),
        // and stopping the instance must stop both.
        command
            .process_group(0)
            .current_dir(&dir)
            .args(["up", "--from", "spin.toml"])
            .args(["--runtime-config-file", "runtime-config.toml"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--log-dir")
            .arg(dir.join("logs"))
            .env_remove("SPIN_HTTP_LISTEN_ADDR")
            .stdout(std::fs::File::create(dir.join("spin.stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("spin.stderr")).unwrap());
        // Kling calls this instance back on its own address unless told otherwise.
        let own = [("public_base_url", base_url.clone())];
        let defaults = own
            .iter()
            .filter(|(name, _)| !variables.iter().any(|(n, _)| n == name));
        for (name, value) in variables.iter().chain(defaults) {
            command.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
        }
        let child = command.spawn().expect("starting spin up");
        let mut instance = Self {
            child,
            sent: AtomicUsize::new(0),
            dir,
            base_url,
            secrets: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = instance.child.try_wait() {
                return Err(format!("spin up exited ({status}):\n{}", instance.output()));
            }
            if let Ok(reply) = instance.try_send(health()).await
                && reply.status == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "spin up never answered /health:\n{}",
                instance.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(instance)
    }

    /// Remembers values that must never show in any log (checked by [`Self::assert_no_secret_logged`]).
    pub fn secrets(mut self, secrets: &[&str]) -> Self {
        self.secrets = secrets.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Spin's own output and the component's logs, for failure messages.
    pub fn output(&self) -> String {
        let mut text = String::new();
        for file in self.log_files() {
            text.push_str(&format!("--- {}\n", file.display()));
            text.push_str(&std::fs::read_to_string(&file).unwrap_or_default());
        }
        text
    }

    fn log_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.dir.join("spin.stdout"), self.dir.join("spin.stderr")];
        if let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) {
            files.extend(entries.flatten().map(|entry| entry.path()));
        }
        files
    }

    /// No secret in Spin's output or in anything the component wrote to stdout/stderr.
    pub fn assert_no_secret_logged(&self) {
        let output = self.output();
        assert!(!self.secrets.is_empty(), "no secrets registered");
        // Spin writes each component's stdout and stderr under logs/: without them there
        // would be nothing to search.
        let component_logs = self
            .log_files()
            .iter()
            .filter(|file| file.starts_with(self.dir.join("logs")))
            .count();
        assert!(
            component_logs > 0,
            "no component logs under {}",
            self.dir.join("logs").display()
        );
        for secret in &self.secrets {
            assert!(
                !output.contains(secret.as_str()),
                "a secret appears in the logs of {}",
                self.dir.display()
            );
        }
    }

    /// Sends `request` (its URI's path and query; the authority is replaced) to this
    /// instance and reads the whole response.
    pub async fn send(&self, request: http::Request<Bytes>) -> Reply {
        let (parts, body) = request.into_parts();
        self.sent.fetch_add(1, Ordering::Relaxed);
        let reply = self
            .try_send(http::Request::from_parts(parts.clone(), body.clone()))
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}\n{}", parts.method, parts.uri, self.output()));
        // The example's own routes are not kling-webhook's API.
        if !parts.uri.path().starts_with("/starter/") {
            super::openapi::check(&parts, &body, &reply);
        }
        reply
    }

    async fn try_send(&self, request: http::Request<Bytes>) -> Result<Reply, String> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        parts.uri = format!("{}{path}", self.base_url).parse().unwrap();
        let authority = self.base_url.trim_start_matches("http://").to_string();
        parts
            .headers
            .insert(http::header::HOST, authority.parse().unwrap());
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let response = sender
            .send_request(hyper::Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// Sends a fresh request from `request` until the reply satisfies `done`; returns
    /// its JSON. Callbacks, steps and notifications happen asynchronously; gives up after
    /// 120 s (a hang, not a slow machine).
    pub async fn poll_json(
        &self,
        request: impl Fn() -> http::Request<Bytes>,
        done: impl Fn(&Reply) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let reply = self.send(request()).await;
            if done(&reply) {
                return reply.json();
            }
            assert!(
                Instant::now() < deadline,
                "still waiting: {} {:?}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn health() -> http::Request<Bytes> {
    http::Request::get("/health").body(Bytes::new()).unwrap()
}

/// Kills `child`'s whole process group (it leads one) and reaps `child`.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for SpinInstance {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
