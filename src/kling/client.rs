//! Creating and querying Kling tasks over a [`HttpTransport`].

use serde::Deserialize;
use serde_json::{Map, Value};

use super::catalog::{Family, Query, TaskKind};
use crate::callback::parse::{PayloadError, parse_callback};
use crate::config::{KlingAuth, KlingConfig};
use crate::outbound::{HttpTransport, OutboundRequest, TransportError};
use crate::task::TaskEvent;
use crate::validate::is_valid_task_id;

/// An error body from Kling: `{"code":N,"message":"…","request_id":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlingApiError {
    pub http_status: u16,
    pub code: i64,
    pub message: String,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KlingError {
    #[error("Kling refused the request (code {}): {}", .0.code, .0.message)]
    Api(KlingApiError),
    #[error("could not reach Kling: {0}")]
    Transport(#[from] TransportError),
    #[error("Kling answered HTTP {0} with a body that is not Kling's envelope")]
    InvalidResponse(u16),
    /// Kling reported a status this build does not know (one added after it).
    #[error("Kling reported a task status this build does not know")]
    UnknownStatus,
    /// Kling accepted a create (code 0) but its answer names no task.
    #[error("Kling accepted the create but its answer has no task_id")]
    MissingTaskId,
    /// API 2.0 takes an API key only; a JWT from access/secret keys is refused.
    #[error(
        "this kind is in Kling's API 2.0, which takes an API key only: set kling_api_key (only kling_access_key and kling_secret_key are configured)"
    )]
    ApiKeyRequired,
}

/// A page of Kling's list (`pageSize` goes up to 500), and how many pages a lookup by our
/// id reads where Kling takes only its own id (advanced-lip-sync, ai-multi-shot). A
/// create with no clear answer is looked up at once, and a stale task within minutes,
/// so it is among the newest; two pages bound the time a lookup can take (each call up
/// to three `kling_timeout_ms`) at twice what one took.
const LIST_PAGE_SIZE: usize = 500;
const MAX_LIST_PAGES: usize = 2;

/// Kling's "internal timeout" on a create: the task may exist anyway.
pub const CODE_TIMEOUT: i64 = 5002;

impl KlingError {
    /// Whether a failed create may nevertheless have created the task (so it must be
    /// looked up, never blindly created again).
    pub fn may_have_created(&self) -> bool {
        match self {
            KlingError::Transport(TransportError::NotSent(_)) => false,
            KlingError::Transport(_) => true,
            KlingError::Api(e) => e.code == CODE_TIMEOUT,
            KlingError::InvalidResponse(status) => *status >= 500,
            // Kling said yes: the task exists, its id is what is missing.
            KlingError::MissingTaskId => true,
            // Not a create's answer.
            KlingError::UnknownStatus | KlingError::ApiKeyRequired => false,
        }
    }

    /// Kling's "invalid request parameters" (1201), which is also how it refuses an
    /// `external_task_id` it already has.
    pub fn is_invalid_request(&self) -> bool {
        matches!(self, KlingError::Api(e) if e.code == CODE_INVALID_PARAMS)
    }

    /// Kling's 1201 for an `external_task_id` it already has (its message names the
    /// field; other 1201s are about the request's own parameters).
    pub fn is_duplicate_external_id(&self) -> bool {
        matches!(self, KlingError::Api(e) if e.code == CODE_INVALID_PARAMS && {
            let message = e.message.to_ascii_lowercase();
            message.contains("external_task_id")
                && (message.contains("exist") || message.contains("duplicat"))
        })
    }

    /// Kling refused the request itself (1200-1203 parameters, 1300-1301 content): the
    /// same request will be refused again. Auth, account, rate and server errors are not
    /// (they pass once the deployment, the balance or Kling is fixed).
    pub fn is_request_refused(&self) -> bool {
        matches!(self, KlingError::Api(e) if matches!(e.code, 1200..=1203 | 1300 | 1301))
    }

    /// Kling asked us to back off (1302, 1303).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, KlingError::Api(e) if matches!(e.code, 1302 | 1303))
    }
}

/// Kling's "invalid request parameters".
pub const CODE_INVALID_PARAMS: i64 = 1201;

/// Which of a task's two ids a lookup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRef<'a> {
    /// Kling's `task_id` (API 2.0: `id`).
    Kling(&'a str),
    /// Ours: `external_task_id` (API 2.0: `external_id`).
    External(&'a str),
}

/// A task as Kling's query names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub task_id: String,
    pub external_task_id: Option<String>,
    /// `None` when Kling's status is one this build does not know.
    pub event: Option<TaskEvent>,
}

#[derive(Deserialize)]
struct Envelope {
    /// kling-api.md shows API 2.0's create answer only as `data{...}`: a 2xx with `data`
    /// and no `code` is read as success, anything else without one is not Kling's.
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

pub struct KlingClient<'a> {
    config: &'a KlingConfig,
    transport: &'a dyn HttpTransport,
    now_secs: u64,
}

impl<'a> KlingClient<'a> {
    pub fn new(config: &'a KlingConfig, transport: &'a dyn HttpTransport, now_secs: u64) -> Self {
        Self {
            config,
            transport,
            now_secs,
        }
    }

    /// `POST {path}`; returns Kling's `task_id` (API 2.0: `id`).
    pub fn create(
        &self,
        kind: TaskKind,
        request: &Map<String, Value>,
    ) -> Result<String, KlingError> {
        let body = serde_json::to_vec(request).expect("a JSON object serializes");
        self.check_auth(kind)?;
        let data = self.call("POST", kind.path().to_string(), body)?;
        let data = data.as_ref();
        // An id that could not be stored or asked about is no id: look the task up.
        data.and_then(kling_id).ok_or(KlingError::MissingTaskId)
    }

    /// The task by either id (the kind's [`Query`]); `None` when Kling does not know it.
    pub fn query(&self, kind: TaskKind, id: TaskRef<'_>) -> Result<Option<TaskEvent>, KlingError> {
        match self.find(kind, id)? {
            Some(Found {
                event: Some(event), ..
            }) => Ok(Some(event)),
            Some(Found { event: None, .. }) => Err(KlingError::UnknownStatus),
            None => Ok(None),
        }
    }

    /// [`Self::query`], keeping which task Kling names even when its status is one this
    /// build does not know (enough to bind a task, not to judge it).
    pub fn find(&self, kind: TaskKind, id: TaskRef<'_>) -> Result<Option<Found>, KlingError> {
        let path = kind.path();
        self.check_auth(kind)?;
        // Ids go into the URL as they are: ours are `[A-Za-z0-9_-]`, Kling's were checked
        // as `[A-Za-z0-9._-]` when they were stored.
        // `filtered`: Kling answered only tasks under the id asked about.
        let (url, listed, filtered) = match (kind.spec().query, id) {
            (Query::ById, TaskRef::Kling(id) | TaskRef::External(id))
            | (Query::ByTaskIdOnly, TaskRef::Kling(id)) => (format!("{path}/{id}"), false, true),
            // Kling cannot look these up by our id: find it in its list, page by page.
            (Query::ByTaskIdOnly, TaskRef::External(_)) => {
                return match self.find_in_list(path, id)? {
                    Some(task) => found(&task).map(Some),
                    None => Ok(None),
                };
            }
            (Query::Tasks, TaskRef::Kling(id)) => (format!("/tasks?task_ids={id}"), true, true),
            (Query::Tasks, TaskRef::External(id)) => {
                (format!("/tasks?external_task_ids={id}"), true, true)
            }
        };
        let Some(tasks) = self.tasks_at(url, listed)? else {
            return Ok(None);
        };
        let task = tasks
            .into_iter()
            // `GET {path}/{id}` takes a task_id as well as an external id: asked by our
            // id, an answer naming another external id is another task, never ours.
            .find(|task| {
                (!listed && matches!(id, TaskRef::Kling(_))) || is_named(task, id, filtered)
            });
        task.as_ref().map(found).transpose()
    }

    /// The task named `id` in Kling's list of `path` (`pageNum` 1, 2, ... of
    /// [`LIST_PAGE_SIZE`], up to [`MAX_LIST_PAGES`]): `None` once a page that is not
    /// full ends the list without it, or past the last page read. That "not found" can
    /// be wrong on a very busy account, as it was with one page; it gives up only a task
    /// still unbound after the reconciler's grace, and the task's own callback binds it
    /// again (by its `task_id`) however far down the list it is.
    fn find_in_list(&self, path: &str, id: TaskRef<'_>) -> Result<Option<Value>, KlingError> {
        for page in 1..=MAX_LIST_PAGES {
            let url = format!("{path}?pageNum={page}&pageSize={LIST_PAGE_SIZE}");
            let Some(tasks) = self.tasks_at(url, true)? else {
                return Ok(None);
            };
            let full = tasks.len() >= LIST_PAGE_SIZE;
            if let Some(task) = tasks.into_iter().find(|task| is_named(task, id, false)) {
                return Ok(Some(task));
            }
            if !full {
                break;
            }
        }
        Ok(None)
    }

    /// The tasks of Kling's answer to `GET url`: the one task of a query, or a list's
    /// (`listed`); `None` for Kling's "no such task".
    fn tasks_at(&self, url: String, listed: bool) -> Result<Option<Vec<Value>>, KlingError> {
        let data = match self.call("GET", url, Vec::new()) {
            Ok(Some(data)) => data,
            Ok(None) => return Err(KlingError::InvalidResponse(200)),
            // "No such task" is Kling's own 404 with 1203 (resource does not exist). Its
            // 404 with 1202 (wrong method), or a 404 that is not Kling's envelope (a
            // proxy, a `kling_base_url` that is not Kling) says nothing about the task: an
            // error, so that no run gives a task up as `lost` over it. (Kling's 1203 for
            // a path it no longer serves reads as "no such task": it cannot be told apart.)
            Err(KlingError::Api(e)) if e.http_status == 404 && e.code == 1203 => return Ok(None),
            Err(e) => return Err(e),
        };
        // A list answers `data: [...]` (or, API 2.0, `data: {"result": [...]}`): the task
        // is the one with the id asked about, never merely the first.
        match data {
            Value::Object(task) if !listed => Ok(Some(vec![Value::Object(task)])),
            Value::Object(mut page) => match page.remove("result") {
                Some(Value::Array(tasks)) => Ok(Some(tasks)),
                _ => Err(KlingError::InvalidResponse(200)),
            },
            Value::Array(tasks) if listed => Ok(Some(tasks)),
            _ => Err(KlingError::InvalidResponse(200)),
        }
    }

    /// `POST {path}` of a synchronous call: Kling's `data` is the answer.
    pub fn call_sync(&self, path: &str, body: &Map<String, Value>) -> Result<Value, KlingError> {
        let body = serde_json::to_vec(body).expect("a JSON object serializes");
        self.call("POST", path.to_string(), body)?
            .ok_or(KlingError::InvalidResponse(200))
    }

    fn check_auth(&self, kind: TaskKind) -> Result<(), KlingError> {
        check_auth(&self.config.auth, kind)
    }

    fn call(
        &self,
        method: &'static str,
        path: String,
        body: Vec<u8>,
    ) -> Result<Option<Value>, KlingError> {
        let response = self.transport.send(OutboundRequest {
            method,
            url: format!("{}{path}", self.config.base_url),
            headers: vec![
                (
                    "authorization",
                    format!("Bearer {}", self.config.auth.bearer(self.now_secs)),
                ),
                ("content-type", "application/json".to_string()),
            ],
            body,
            timeout_ms: self.config.timeout_ms,
        })?;
        let envelope: Envelope = serde_json::from_slice(&response.body)
            .map_err(|_| KlingError::InvalidResponse(response.status))?;
        let code = match envelope.code {
            Some(code) => code,
            None if (200..300).contains(&response.status) && envelope.data.is_some() => 0,
            None => return Err(KlingError::InvalidResponse(response.status)),
        };
        if code != 0 || response.status >= 400 {
            return Err(KlingError::Api(KlingApiError {
                http_status: response.status,
                code,
                message: without_sig(&envelope.message),
                request_id: envelope.request_id,
            }));
        }
        Ok(envelope.data)
    }
}

/// Kling's message with the value of any `sig=` cut out. A message about an invalid
/// parameter may quote the request, whose `callback_url` carries the `sig` that
/// authenticates callbacks; the message goes to callers, the store and logs.
fn without_sig(message: &str) -> String {
    // `sig=` in any case, or percent-encoded (`sig%3D`); ASCII lowercasing keeps every
    // byte where it was, so positions in the copy are positions in the message.
    let lower = message.to_ascii_lowercase();
    let mut kept = String::with_capacity(message.len());
    let mut from = 0;
    while let Some((at, name)) = ["sig=", "sig%3d"]
        .iter()
        .filter_map(|name| Some((from + lower[from..].find(name)?, name.len())))
        .min()
    {
        let value = at + name;
        kept.push_str(&message[from..value]);
        kept.push_str("<redacted>");
        from = value
            + message[value..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '%'))
                .unwrap_or(message.len() - value);
    }
    kept.push_str(&message[from..]);
    kept
}

/// Whether these credentials can reach `kind` at all (API 2.0 takes an API key only).
pub fn check_auth(auth: &KlingAuth, kind: TaskKind) -> Result<(), KlingError> {
    match (kind.family(), auth) {
        (Family::Api2, KlingAuth::AccessKey { .. }) => Err(KlingError::ApiKeyRequired),
        _ => Ok(()),
    }
}

/// An id as Kling writes it: a string, or (carelessly) a whole number.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        _ => None,
    }
}

/// Our id in a task of either family.
fn external_id(task: &Value) -> Option<String> {
    id_text(&task["task_info"]["external_task_id"]).or_else(|| id_text(&task["external_id"]))
}

/// Kling's id of a task of either family, if it is one we can store and ask about.
fn kling_id(task: &Value) -> Option<String> {
    id_text(&task["task_id"])
        .or_else(|| id_text(&task["id"]))
        .filter(|id| is_valid_task_id(id))
}

/// The task Kling reported, read as a callback body is.
fn found(task: &Value) -> Result<Found, KlingError> {
    match parse_callback(task.to_string().as_bytes()) {
        Ok(event) => Ok(Found {
            task_id: event.task_id.clone(),
            external_task_id: event.external_task_id.clone(),
            event: Some(event),
        }),
        Err(PayloadError::UnknownStatus) => Ok(Found {
            task_id: kling_id(task).ok_or(KlingError::InvalidResponse(200))?,
            external_task_id: external_id(task),
            event: None,
        }),
        Err(_) => Err(KlingError::InvalidResponse(200)),
    }
}

/// Whether a task of a list answer is the one `id` names. In an answer Kling filtered by
/// our id, a task that does not repeat it counts (the contract names `external_id` in
/// creates and callbacks, not in every query answer); one naming another never does.
fn is_named(task: &Value, id: TaskRef<'_>, filtered: bool) -> bool {
    match id {
        TaskRef::Kling(id) => kling_id(task).as_deref() == Some(id),
        TaskRef::External(id) => match external_id(task) {
            Some(named) => named == id,
            None => filtered,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{KlingAuth, Secret};
    use crate::outbound::scripted::{Answer, Scripted};

    /// Kling at `http://kling.test`, with the API key `key-1`.
    pub(crate) fn config() -> KlingConfig {
        KlingConfig {
            base_url: "http://kling.test".into(),
            auth: KlingAuth::ApiKey(Secret::new("key-1")),
            timeout_ms: 1000,
        }
    }

    #[test]
    fn create_posts_to_the_kind_s_endpoint_with_the_bearer_and_returns_the_task_id() {
        let transport = Scripted::new(vec![Ok((
            200,
            r#"{"code":0,"message":"SUCCEED","request_id":"r1","data":{"task_id":"867283741759111202","task_status":"submitted"}}"#,
        ))]);
        let config = config();
        let client = KlingClient::new(&config, &transport, 0);
        let body = serde_json::json!({"prompt": "p"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            client
                .create(TaskKind::from_name("video-extend").unwrap(), &body)
                .unwrap(),
            "867283741759111202"
        );
        let sent = &transport.sent.borrow()[0];
        assert_eq!(
            (sent.method, sent.url.as_str()),
            ("POST", "http://kling.test/v1/videos/video-extend")
        );
        assert!(
            sent.headers
                .contains(&("authorization", "Bearer key-1".to_string()))
        );
    }

    #[test]
    fn error_envelopes_become_api_errors_and_5002_or_no_answer_may_have_created() {
        let cases: Vec<(Answer<'_>, bool)> = vec![
            (
                Ok((
                    429,
                    r#"{"code":1303,"message":"parallel task over resource pack limit","request_id":"r2"}"#,
                )),
                false,
            ),
            (
                Ok((400, r#"{"code":1201,"message":"bad","request_id":"r3"}"#)),
                false,
            ),
            (
                Ok((
                    504,
                    r#"{"code":5002,"message":"timeout","request_id":"r4"}"#,
                )),
                true,
            ),
            (Ok((502, "<html>bad gateway</html>")), true),
            (Err(TransportError::Timeout), true),
            (
                Err(TransportError::Failed("reading the response".into())),
                true,
            ),
            // Refused before anything was sent: nothing can exist.
            (
                Err(TransportError::NotSent("ConnectionRefused".into())),
                false,
            ),
        ];
        let config = config();
        for (answer, may_exist) in cases {
            let transport = Scripted::new(vec![answer]);
            let client = KlingClient::new(&config, &transport, 0);
            let err = client
                .create(TaskKind::from_name("text2video").unwrap(), &Map::new())
                .unwrap_err();
            assert_eq!(err.may_have_created(), may_exist, "{err:?}");
        }
    }

    #[test]
    fn query_reads_the_task_and_kling_s_1203_means_unknown() {
        let transport = Scripted::new(vec![
            Ok((
                200,
                r#"{"code":0,"message":"SUCCEED","data":{"task_id":"86","task_status":"succeed","task_info":{"external_task_id":"job-1"},"task_result":{"videos":[{"id":"v","url":"u","duration":"5"}]}}}"#,
            )),
            Ok((
                404,
                r#"{"code":1203,"message":"task not found","request_id":"r"}"#,
            )),
        ]);
        let config = config();
        let client = KlingClient::new(&config, &transport, 0);
        let task = client
            .query(
                TaskKind::from_name("text2video").unwrap(),
                TaskRef::External("job-1"),
            )
            .unwrap()
            .unwrap();
        assert_eq!((task.task_id.as_str(), task.videos.len()), ("86", 1));
        assert_eq!(
            transport.sent.borrow()[0].url,
            "http://kling.test/v1/videos/text2video/job-1"
        );
        assert_eq!(
            client
                .query(
                    TaskKind::from_name("text2video").unwrap(),
                    TaskRef::External("job-2")
                )
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_404_that_is_not_kling_s_no_such_task_is_an_error() {
        for (body, expected) in [
            (
                r#"{"code":1202,"message":"wrong method","request_id":"r"}"#,
                "1202",
            ),
            ("<html>Not Found</html>", "InvalidResponse(404)"),
        ] {
            let transport = Scripted::new(vec![Ok((404, body))]);
            let config = config();
            let client = KlingClient::new(&config, &transport, 0);
            let error = client
                .query(
                    TaskKind::from_name("text2video").unwrap(),
                    TaskRef::External("job-1"),
                )
                .unwrap_err();
            assert!(format!("{error:?}").contains(expected), "{error:?}");
        }
    }

    #[test]
    fn api_2_creates_read_id_and_queries_go_through_tasks_by_either_id() {
        let transport = Scripted::new(vec![
            Ok((
                200,
                r#"{"code":0,"message":"SUCCEED","data":{"id":"t-9","status":"submitted","external_id":"job-9"}}"#,
            )),
            Ok((
                200,
                r#"{"code":0,"message":"SUCCEED","data":[{"id":"t-9","status":"succeeded","external_id":"job-9","outputs":[{"type":"video","id":"v","url":"https://v.mp4"}]}]}"#,
            )),
            Ok((
                200,
                r#"{"code":0,"message":"SUCCEED","data":{"result":[{"id":"t-9","status":"processing"}]}}"#,
            )),
            Ok((200, r#"{"code":0,"message":"SUCCEED","data":[]}"#)),
        ]);
        let config = config();
        let client = KlingClient::new(&config, &transport, 0);
        let kind = TaskKind::from_name("text-to-video/kling-3.0-turbo").unwrap();
        assert_eq!(client.create(kind, &Map::new()).unwrap(), "t-9");
        let task = client
            .query(kind, TaskRef::External("job-9"))
            .unwrap()
            .unwrap();
        assert_eq!((task.task_id.as_str(), task.videos.len()), ("t-9", 1));
        assert_eq!(
            task.external_task_id.as_deref(),
            Some("job-9"),
            "API 2.0 names our id `external_id`"
        );
        let task = client.query(kind, TaskRef::Kling("t-9")).unwrap().unwrap();
        assert_eq!(task.status, crate::task::TaskStatus::Processing);
        assert_eq!(client.query(kind, TaskRef::Kling("t-0")).unwrap(), None);
        let urls: Vec<String> = transport
            .sent
            .borrow()
            .iter()
            .map(|r| r.url.clone())
            .collect();
        assert_eq!(
            urls,
            [
                "http://kling.test/text-to-video/kling-3.0-turbo",
                "http://kling.test/tasks?external_task_ids=job-9",
                "http://kling.test/tasks?task_ids=t-9",
                "http://kling.test/tasks?task_ids=t-0",
            ]
        );
    }

    #[test]
    fn an_answer_without_code_is_kling_s_only_as_a_2xx_with_data() {
        let kind = TaskKind::from_name("text-to-video/kling-3.0-turbo").unwrap();
        let config = config();
        let created = Scripted::new(vec![Ok((
            200,
            r#"{"data":{"id":"t-9","status":"submitted","external_id":"job-9"}}"#,
        ))]);
        let client = KlingClient::new(&config, &created, 0);
        assert_eq!(client.create(kind, &Map::new()).unwrap(), "t-9");
        for (status, body) in [
            (200, r#"{"message":"hello"}"#),
            (500, r#"{"data":{"id":"t-9"}}"#),
        ] {
            let transport = Scripted::new(vec![Ok((status, body))]);
            let client = KlingClient::new(&config, &transport, 0);
            let err = client.create(kind, &Map::new()).unwrap_err();
            assert!(
                matches!(err, KlingError::InvalidResponse(s) if s == status),
                "{status} {body}: {err:?}"
            );
        }
    }

    #[test]
    fn an_answer_filtered_by_our_id_need_not_repeat_it_but_may_not_name_another() {
        let transport = Scripted::new(vec![
            Ok((
                200,
                r#"{"code":0,"data":[{"id":"t-1","status":"processing"}]}"#,
            )),
            Ok((
                200,
                r#"{"code":0,"data":[{"id":"t-2","status":"processing","external_id":"theirs"}]}"#,
            )),
            // An unfiltered list: a task that names no external id is not ours.
            Ok((
                200,
                r#"{"code":0,"data":[{"task_id":"3","task_status":"processing"}]}"#,
            )),
        ]);
        let config = config();
        let client = KlingClient::new(&config, &transport, 0);
        let api2 = TaskKind::from_name("text-to-video/kling-2.6").unwrap();
        let found = client.find(api2, TaskRef::External("job-1")).unwrap();
        assert_eq!(found.map(|f| f.task_id).as_deref(), Some("t-1"));
        assert_eq!(client.find(api2, TaskRef::External("job-1")).unwrap(), None);
        let by_task_id_only = TaskKind::from_name("ai-multi-shot").unwrap();
        assert_eq!(
            client
                .find(by_task_id_only, TaskRef::External("job-1"))
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_kind_queried_by_task_id_only_is_found_by_external_id_in_kling_s_list() {
        let transport = Scripted::new(vec![Ok((
            200,
            r#"{"code":0,"message":"SUCCEED","data":[
                {"task_id":"1","task_status":"succeed","task_info":{"external_task_id":"other"}},
                {"task_id":"2","task_status":"processing","task_info":{"external_task_id":"mine"}}]}"#,
        ))]);
        let config = config();
        let client = KlingClient::new(&config, &transport, 0);
        let kind = TaskKind::from_name("advanced-lip-sync").unwrap();
        let task = client
            .query(kind, TaskRef::External("mine"))
            .unwrap()
            .unwrap();
        assert_eq!(task.task_id, "2");
        assert_eq!(
            transport.sent.borrow()[0].url,
            "http://kling.test/v1/videos/advanced-lip-sync?pageNum=1&pageSize=500"
        );
    }

    /// Past a full page the list goes on: the next page is read, up to
    /// [`MAX_LIST_PAGES`].
    #[test]
    fn a_lookup_in_kling_s_list_reads_on_while_pages_are_full() {
        let page = |first: usize, count: usize, mine: bool| {
            let mut tasks: Vec<String> = (first..first + count)
                .map(|n| {
                    format!(
                        r#"{{"task_id":"{n}","task_status":"succeed","task_info":{{"external_task_id":"other-{n}"}}}}"#
                    )
                })
                .collect();
            if mine {
                tasks.push(
                    r#"{"task_id":"7","task_status":"processing","task_info":{"external_task_id":"mine"}}"#.into(),
                );
            }
            format!(r#"{{"code":0,"data":[{}]}}"#, tasks.join(","))
        };
        let kind = TaskKind::from_name("ai-multi-shot").unwrap();
        let config = config();
        let full = || page(1000, LIST_PAGE_SIZE, false);
        let lookup = |answers: Vec<String>| {
            let transport = Scripted::new(answers.iter().map(|a| Ok((200, a.as_str()))).collect());
            let found = KlingClient::new(&config, &transport, 0)
                .find(kind, TaskRef::External("mine"))
                .map(|found| found.map(|f| f.task_id));
            let pages: Vec<String> = (transport.sent.borrow().iter())
                .map(|sent| sent.url.rsplit_once('?').unwrap().1.to_string())
                .collect();
            (found, pages)
        };

        let (found, pages) = lookup(vec![full(), page(0, 10, true)]);
        assert_eq!(found, Ok(Some("7".to_string())));
        assert_eq!(pages, ["pageNum=1&pageSize=500", "pageNum=2&pageSize=500"]);
        // A page that is not full ends the list: Kling does not have the task.
        let (found, pages) = lookup(vec![full(), page(0, 499, false)]);
        assert_eq!((found, pages.len()), (Ok(None), 2));
        // Past the last page read: not found, as the end of the list is.
        let (found, pages) = lookup(vec![full(); MAX_LIST_PAGES + 1]);
        assert_eq!((found, pages.len()), (Ok(None), MAX_LIST_PAGES));
    }

    /// Kling's message reaches callers, the store and logs: a `sig` it quotes does not.
    #[test]
    fn a_sig_quoted_in_kling_s_message_is_cut_out() {
        let transport = Scripted::new(vec![Ok((
            400,
            r#"{"code":1201,"message":"callback_url https://h/callbacks/kling/j?sig=abc-DEF_123 is invalid; sig=x2","request_id":"r"}"#,
        ))]);
        let config = config();
        let client = KlingClient::new(&config, &transport, 0);
        let kind = TaskKind::from_name("text2video").unwrap();
        let Err(KlingError::Api(e)) = client.create(kind, &Map::new()) else {
            panic!("a refusal");
        };
        assert_eq!(
            e.message,
            "callback_url https://h/callbacks/kling/j?sig=<redacted> is invalid; sig=<redacted>"
        );
        assert_eq!(without_sig("no secret here"), "no secret here");
        assert_eq!(
            without_sig("url=h%3Fsig%3DaBc_1 SIG=zz, é"),
            "url=h%3Fsig%3D<redacted> SIG=<redacted>, é"
        );
    }

    #[test]
    fn a_task_kling_answers_for_our_id_is_ours_only_if_it_names_no_other_id() {
        let answer = |ext: &str| {
            format!(
                r#"{{"code":0,"message":"SUCCEED","data":{{"task_id":"86","task_status":"processing"{ext}}}}}"#
            )
        };
        let kind = TaskKind::from_name("text2video").unwrap();
        let config = config();
        // Kling took our digits for a task_id: that task is not ours.
        let other = answer(r#","task_info":{"external_task_id":"job-other"}"#);
        let mine = answer(r#","task_info":{"external_task_id":"1234"}"#);
        let silent = answer("");
        for (body, ours) in [(&other, false), (&mine, true), (&silent, true)] {
            let transport = Scripted::new(vec![Ok((200, body.as_str()))]);
            let client = KlingClient::new(&config, &transport, 0);
            let found = client.query(kind, TaskRef::External("1234")).unwrap();
            assert_eq!(found.is_some(), ours, "{body}");
            // By task_id, the task Kling answers is the one asked about.
            let transport = Scripted::new(vec![Ok((200, body.as_str()))]);
            let client = KlingClient::new(&config, &transport, 0);
            assert!(client.query(kind, TaskRef::Kling("86")).unwrap().is_some());
        }
    }

    #[test]
    fn api_2_with_only_access_keys_says_so_without_calling_kling() {
        let transport = Scripted::new(vec![Err(TransportError::Timeout)]);
        let config = KlingConfig {
            auth: KlingAuth::AccessKey {
                access_key: Secret::new("ak"),
                secret_key: Secret::new("sk"),
            },
            ..config()
        };
        let client = KlingClient::new(&config, &transport, 0);
        let kind = TaskKind::from_name("omni-video/kling-3.0-omni").unwrap();
        let err = client.create(kind, &Map::new()).unwrap_err();
        assert_eq!(err, KlingError::ApiKeyRequired);
        assert!(!err.may_have_created());
        assert!(transport.sent.borrow().is_empty());
        // Legacy kinds still take the JWT: this one reaches the transport.
        let legacy = TaskKind::from_name("omni-video").unwrap();
        assert!(matches!(
            client.create(legacy, &Map::new()),
            Err(KlingError::Transport(_))
        ));
        assert_eq!(transport.sent.borrow().len(), 1);
    }
}
