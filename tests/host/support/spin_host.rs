//! A Spin-like host on wasmtime 48: runs a component's `wasi:http/incoming-handler`
//! with WASI p2, outbound `wasi:http`, Spin's key-value and variables interfaces and
//! `wasi:keyvalue` store and batch over the same stores (bound from the WIT that ships
//! inside the spin-sdk crate, see `wit/spin-imports`).
//!
//! Every request gets a fresh instance from a shared, pre-linked `ProxyPre`, as Spin does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::kv::{KvStore, LABELS};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/spin-imports",
        world: "spin-host",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/key-value.store": super::OpenStore,
            "wasi:keyvalue/store.bucket": super::OpenStore,
        },
    });
}

use bindings::fermyon::spin::key_value::{self, Error as KvError};
use bindings::fermyon::spin::variables::{self, Error as VarError};
use bindings::wasi::keyvalue::batch;
use bindings::wasi::keyvalue::store::{self as wasi_kv, Error as BucketError, KeyResponse};

/// An open `store` resource: the label it was opened with.
pub struct OpenStore(&'static str);

pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: OutboundRules,
    table: ResourceTable,
    kv: KvStore,
    variables: Arc<HashMap<String, String>>,
    /// Variables read so far by this request's instance (for [`PROVIDER_FAILS_ONCE`]).
    variables_read: HashMap<String, usize>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// The hosts the shipped `spin.toml` allows, as Spin resolves them:
/// `allowed_outbound_hosts = ["{{ kling_base_url }}", "{{ notify_origin }}"]` with the
/// manifest's defaults for unset variables (a test keeps this list equal to the
/// manifest's). Spin refuses any other origin before connecting, and so does this host.
pub const ALLOWED_OUTBOUND_HOSTS: [(&str, &str); 2] = [
    ("kling_base_url", "https://api-singapore.klingai.com"),
    ("notify_origin", "https://notify-origin-unset.invalid"),
];

/// `scheme://host[:port]` of a URI, lowercase, without a default port.
pub fn origin_of(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
    let host = uri.host().unwrap_or("").to_ascii_lowercase();
    match (scheme.as_str(), uri.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) | (_, None) => format!("{scheme}://{host}"),
        (_, Some(port)) => format!("{scheme}://{host}:{port}"),
    }
}

/// Outbound HTTP as Spin allows it: only to the resolved allowed origins (`None`: any,
/// for components other than kling-webhook's).
#[derive(Default)]
struct OutboundRules {
    allowed: Option<Vec<String>>,
}

impl WasiHttpHooks for OutboundRules {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        _ = fut;
        let denied = self
            .allowed
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(&origin_of(request.uri())));
        Box::new(async move {
            if denied {
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

impl key_value::Host for HostState {}

impl key_value::HostStore for HostState {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, KvError>> {
        let Some(label) = LABELS.into_iter().find(|l| *l == label) else {
            return Ok(Err(KvError::NoSuchStore));
        };
        Ok(Ok(self.table.push(OpenStore(label))?))
    }

    async fn get(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, KvError>> {
        let label = self.table.get(&store)?.0;
        Ok(self.kv.get(label, &key).await.map_err(KvError::Other))
    }

    async fn set(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), KvError>> {
        let label = self.table.get(&store)?.0;
        Ok(self
            .kv
            .set(label, &key, value)
            .await
            .map_err(KvError::Other))
    }

    async fn delete(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), KvError>> {
        let label = self.table.get(&store)?.0;
        self.kv.delete(label, &key).await;
        Ok(Ok(()))
    }

    async fn exists(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, KvError>> {
        let label = self.table.get(&store)?.0;
        Ok(Ok(self.kv.exists(label, &key).await))
    }

    async fn get_keys(
        &mut self,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<Result<Vec<String>, KvError>> {
        let label = self.table.get(&store)?.0;
        Ok(Ok(self.kv.all_keys(label).await))
    }

    async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

/// `wasi:keyvalue` over the same stores as `fermyon:spin/key-value`, as Spin opens both
/// on one label's store.
impl wasi_kv::Host for HostState {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, BucketError>> {
        let Some(label) = LABELS.into_iter().find(|l| *l == label) else {
            return Ok(Err(BucketError::NoSuchStore));
        };
        Ok(Ok(self.table.push(OpenStore(label))?))
    }
}

impl wasi_kv::HostBucket for HostState {
    async fn get(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, BucketError>> {
        let label = self.table.get(&bucket)?.0;
        Ok(self.kv.get(label, &key).await.map_err(BucketError::Other))
    }

    async fn set(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), BucketError>> {
        let label = self.table.get(&bucket)?.0;
        Ok(self
            .kv
            .set(label, &key, value)
            .await
            .map_err(BucketError::Other))
    }

    async fn delete(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), BucketError>> {
        let label = self.table.get(&bucket)?.0;
        self.kv.delete(label, &key).await;
        Ok(Ok(()))
    }

    async fn exists(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, BucketError>> {
        let label = self.table.get(&bucket)?.0;
        Ok(Ok(self.kv.exists(label, &key).await))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<OpenStore>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<KeyResponse, BucketError>> {
        let label = self.table.get(&bucket)?.0;
        Ok(Ok(KeyResponse {
            keys: self.kv.all_keys(label).await,
            cursor: None,
        }))
    }

    async fn drop(&mut self, bucket: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl batch::Host for HostState {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, BucketError>> {
        let label = self.table.get(&bucket)?.0;
        let mut found = Vec::new();
        for key in keys {
            match self.kv.get(label, &key).await {
                Ok(value) => found.push((key, value)),
                Err(error) => return Ok(Err(BucketError::Other(error))),
            }
        }
        Ok(Ok(found))
    }

    /// All or nothing, as on Spin's SQLite (one transaction) and Redis (`MSET`).
    async fn set_many(
        &mut self,
        bucket: Resource<OpenStore>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), BucketError>> {
        let label = self.table.get(&bucket)?.0;
        Ok(self
            .kv
            .set_many(label, entries)
            .await
            .map_err(BucketError::Other))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), BucketError>> {
        let label = self.table.get(&bucket)?.0;
        for key in keys {
            self.kv.delete(label, &key).await;
        }
        Ok(Ok(()))
    }
}

/// A variable given this value reads as its provider failing to answer (a Vault that
/// timed out), as Spin reports it: `error::provider`.
pub const PROVIDER_FAILS: &str = "<the provider fails>";

/// A variable given this prefix before its value fails the first read in each request,
/// like [`PROVIDER_FAILS`], and answers the value after it from then on: a provider that
/// flaps.
pub const PROVIDER_FAILS_ONCE: &str = "<the provider fails once>";

impl variables::Host for HostState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, VarError>> {
        let reads = self.variables_read.entry(name.clone()).or_default();
        *reads += 1;
        let provider_failure = || Err(VarError::Provider("injected provider failure".into()));
        Ok(match self.variables.get(&name) {
            Some(value) if value == PROVIDER_FAILS => provider_failure(),
            Some(value) => match value.strip_prefix(PROVIDER_FAILS_ONCE) {
                Some(_) if *reads == 1 => provider_failure(),
                Some(value) => Ok(value.to_string()),
                None => Ok(value.clone()),
            },
            None => Err(VarError::Undefined(format!("no variable for {name:?}"))),
        })
    }
}

/// A compiled component, ready to instantiate per request.
pub struct Loaded {
    pre: ProxyPre<HostState>,
}

impl Loaded {
    pub fn load(engine: &Engine, wasm: &Path) -> Result<Self> {
        let component = Component::from_file(engine, wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling {}", wasm.display()))?;
        let mut linker = Linker::<HostState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)?;
        bindings::SpinHost::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("linking: the component imports something the host does not provide")?;
        Ok(Self {
            pre: ProxyPre::new(pre).map_err(anyhow::Error::from)?,
        })
    }
}

pub fn engine() -> Engine {
    Engine::new(&Config::new()).expect("wasmtime engine")
}

/// One deployment of a component: its variables and its store (which other
/// deployments may share, like replicas sharing one Redis).
#[derive(Clone)]
pub struct SpinApp {
    loaded: &'static Loaded,
    pub kv: KvStore,
    variables: Arc<HashMap<String, String>>,
    /// A fixed wall clock (seconds since the epoch), for signature timestamps.
    clock: Option<u64>,
    /// kling-webhook's HTTP API: every exchange is checked against `openapi.json`.
    pub(super) documented: bool,
    /// Requests [`Self::serve`] took over HTTP (the stand-in's callbacks) that failed in
    /// the host: a guest trap, or an exchange `openapi.json` does not describe. Served
    /// in tasks of their own, they would otherwise fail no test.
    served_failures: Arc<std::sync::Mutex<Vec<String>>>,
    /// Requests [`Self::serve`] is serving now.
    served_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The guest's stderr, kept for a test to read once it is set
    /// ([`Self::capture_guest_log`], shared by every copy of this deployment, the one
    /// serving the stand-in's callbacks included); unset: the test binary's own stderr.
    guest_log: Arc<std::sync::OnceLock<MemoryOutputPipe>>,
}

/// A wall clock stopped at one instant.
struct FixedClock(Duration);

impl wasmtime_wasi::HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        self.0
    }
}

/// A response, read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Checks the status; returns the JSON body.
    pub fn expect_json(&self, status: u16) -> serde_json::Value {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }

    /// Checks an error response's status and code; returns its `error` object.
    pub fn expect_error(&self, status: u16, code: &str, context: &str) -> serde_json::Value {
        assert_eq!(
            (self.status, self.error_code().as_str()),
            (status, code),
            "{context} {:?}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["error"].clone()
    }

    /// The machine-readable code of an error response.
    pub fn error_code(&self) -> String {
        let json = self.json();
        let code = json["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {json}"));
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without a message: {json}"
        );
        code.to_string()
    }
}

/// Timings of one request, for the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Until the response (head and whole body) was in hand.
    pub response: Duration,
    /// Until the guest's handler returned (after-acknowledgement work included).
    pub done: Duration,
}

impl SpinApp {
    pub fn new<K: AsRef<str>, V: AsRef<str>>(
        loaded: &'static Loaded,
        variables: &[(K, V)],
        kv: KvStore,
    ) -> Self {
        Self {
            loaded,
            kv,
            variables: Arc::new(
                variables
                    .iter()
                    .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
                    .collect(),
            ),
            clock: None,
            documented: false,
            served_failures: Arc::default(),
            served_in_flight: Arc::default(),
            guest_log: Arc::default(),
        }
    }

    /// From now on, every instance's stderr (its log lines) is kept in memory, for
    /// [`Self::guest_log`].
    pub fn capture_guest_log(&self) {
        // Unbounded in practice: a write past the capacity would trap the guest.
        self.guest_log
            .get_or_init(|| MemoryOutputPipe::new(1 << 40));
    }

    /// What the instances wrote to stderr since [`Self::capture_guest_log`].
    pub fn guest_log(&self) -> String {
        let log = self.guest_log.get().expect("capture_guest_log first");
        String::from_utf8_lossy(&log.contents()).into_owned()
    }

    /// Fails the test if a request served over HTTP failed in the host ([`Self::serve`]).
    /// On a multi-threaded runtime it first lets the requests being served finish (up to
    /// 20 s): a callback's work after its acknowledgement may still be running when the
    /// test has seen what it waited for. (A current-thread runtime cannot run them while
    /// this waits: there, only the requests already done are checked.)
    pub fn assert_served_without_failure(&self) {
        use std::sync::atomic::Ordering;
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| {
                let deadline = Instant::now() + Duration::from_secs(20);
                while self.served_in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let failures = self.served_failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "requests served over HTTP failed in the host: {failures:#?}"
        );
    }

    /// Another component in the same deployment: same variables, same store, same clock.
    pub fn with_component(&self, loaded: &'static Loaded) -> Self {
        Self {
            loaded,
            documented: false,
            ..self.clone()
        }
    }

    /// The same deployment with the guest's wall clock stopped at `unix_secs`.
    pub fn at_time(mut self, unix_secs: u64) -> Self {
        self.clock = Some(unix_secs);
        self
    }

    /// Serves this deployment over real HTTP on `listener`, one instance per request, the
    /// way Spin does: this is how the Kling stand-in calls the component back.
    /// A request that fails in the host is answered 500 and recorded
    /// ([`Self::assert_served_without_failure`]).
    pub fn serve(&self, listener: tokio::net::TcpListener) {
        let app = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let app = app.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let app = app.clone();
                            async move {
                                // Counted from the first byte: the body may still be on
                                // its way when the test ends.
                                let in_flight = app.served_in_flight.clone();
                                in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let what = format!("{} {}", parts.method, parts.uri);
                                let sending = app.clone();
                                let sent = tokio::spawn(async move {
                                    sending.send(http::Request::from_parts(parts, body)).await
                                })
                                .await;
                                in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                                let reply = match sent {
                                    Ok(reply) => reply,
                                    Err(failure) => {
                                        app.served_failures
                                            .lock()
                                            .unwrap()
                                            .push(format!("{what}: {failure}"));
                                        let mut response = hyper::Response::new(Full::new(
                                            Bytes::from_static(b"host failure"),
                                        ));
                                        *response.status_mut() =
                                            http::StatusCode::INTERNAL_SERVER_ERROR;
                                        return Ok(response);
                                    }
                                };
                                let mut response = hyper::Response::new(Full::new(reply.body));
                                *response.status_mut() =
                                    http::StatusCode::from_u16(reply.status).expect("status");
                                *response.headers_mut() = reply.headers;
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    /// Sends a request again and again (a fresh one from `request` each time) until its
    /// reply satisfies `done`, and returns that reply's JSON; fails after 20 seconds.
    /// Callbacks, pipeline steps and notifications happen asynchronously.
    pub async fn poll_json(
        &self,
        request: impl Fn() -> http::Request<Bytes>,
        done: impl Fn(&Reply) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let reply = self.send(request()).await;
            if done(&reply) {
                return reply.json();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still waiting: {} {:?}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a request that must answer 200, and returns its JSON body.
    pub async fn ok_json(&self, request: http::Request<Bytes>) -> serde_json::Value {
        self.send(request).await.expect_json(200)
    }

    /// Sends one request and waits until the guest is completely done.
    pub async fn send(&self, request: http::Request<Bytes>) -> Reply {
        self.send_timed(request).await.0
    }

    pub async fn send_timed(&self, request: http::Request<Bytes>) -> (Reply, Timing) {
        let (parts, body) = request.into_parts();
        let checked = self.documented.then(|| (parts.clone(), body.clone()));
        let (reply, timing) = self
            .try_send(http::Request::from_parts(parts, Full::new(body)))
            .await
            .expect("host failure");
        if let Some((parts, body)) = checked {
            super::openapi::check(&parts, &body, &reply);
        }
        (reply, timing)
    }

    /// Sends a request whose body is `first` and then never ends (a client trickling an
    /// upload), and gives the guest `within` to answer: `None` if it did not.
    pub async fn send_endless(
        &self,
        request: http::Request<Bytes>,
        within: Duration,
    ) -> Option<Reply> {
        let (parts, first) = request.into_parts();
        let request = http::Request::from_parts(parts, Endless(Some(first)));
        let reply = tokio::time::timeout(within, self.try_send(request))
            .await
            .ok()?;
        Some(reply.expect("host failure").0)
    }

    /// A fresh store for one instance of this deployment, as Spin makes per request.
    pub fn new_store(&self) -> Store<HostState> {
        let mut wasi = WasiCtx::builder();
        match self.guest_log.get() {
            Some(log) => wasi.stderr(log.clone()),
            None => wasi.inherit_stderr(),
        };
        if let Some(secs) = self.clock {
            wasi.wall_clock(FixedClock(Duration::from_secs(secs)));
        }
        Store::new(
            self.loaded.pre.engine(),
            HostState {
                wasi: wasi.build(),
                http: WasiHttpCtx::new(),
                outbound: OutboundRules {
                    allowed: self.documented.then(|| {
                        ALLOWED_OUTBOUND_HOSTS
                            .iter()
                            .map(|(name, default)| {
                                let value =
                                    self.variables.get(*name).map_or(*default, String::as_str);
                                origin_of(&value.parse().unwrap_or_default())
                            })
                            .collect()
                    }),
                },
                table: ResourceTable::new(),
                kv: self.kv.clone(),
                variables: self.variables.clone(),
                variables_read: HashMap::new(),
            },
        )
    }

    /// The pre-linked component, for calling exports other than the HTTP handler.
    pub fn instance_pre(&self) -> &wasmtime::component::InstancePre<HostState> {
        self.loaded.pre.instance_pre()
    }

    async fn try_send<B>(&self, request: http::Request<B>) -> Result<(Reply, Timing)>
    where
        B: hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static,
    {
        let started = Instant::now();
        // Spin (4.0.2) answers 500 with an empty body, before any component runs, to a
        // header value that is not UTF-8 (found by fuzzing the real Spin).
        if request
            .headers()
            .values()
            .any(|value| std::str::from_utf8(value.as_bytes()).is_err())
        {
            let reply = Reply {
                status: 500,
                headers: http::HeaderMap::new(),
                body: Bytes::new(),
            };
            let elapsed = started.elapsed();
            let timing = Timing {
                response: elapsed,
                done: elapsed,
            };
            return Ok((reply, timing));
        }
        let mut store = self.new_store();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(anyhow::Error::from)?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(anyhow::Error::from)?;
        let pre = self.loaded.pre.clone();
        let guest = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        });

        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(anyhow!("guest answered with an error code: {code:?}")),
            Err(_) => {
                let outcome = guest.await?;
                return Err(anyhow!("guest never set a response: {outcome:?}"));
            }
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| anyhow!("reading the response body: {e:?}"))?
            .to_bytes();
        let response_at = started.elapsed();
        guest
            .await?
            .map_err(anyhow::Error::from)
            .context("guest trapped")?;
        let done_at = started.elapsed();
        Ok((
            Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            },
            Timing {
                response: response_at,
                done: done_at,
            },
        ))
    }
}

/// A request body that yields its first chunk and then never ends.
struct Endless(Option<Bytes>);

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(first) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(first)))),
            None => std::task::Poll::Pending,
        }
    }
}
