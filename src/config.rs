//! Configuration from Spin variables, read per request (variables are cheap host
//! calls, and reading only what a route needs lets `/health` work unconfigured).

use std::fmt;

use crate::signatures::standard_webhooks::WebhookSecret;

/// Where variable values come from: Spin's variables in the component, a map in tests.
pub trait Variables {
    /// The value of `name`, or `None` when it is undefined or empty. An error when the
    /// provider could not answer (a Vault that timed out): never read as "unset", which
    /// would put a default (retention, verification off) in place of the real value.
    fn get(&self, name: &'static str) -> Result<Option<String>, ConfigError>;
}

/// A secret value: never printed, compared in constant time where it is checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The shortest secret accepted (bytes): anything shorter can be guessed.
pub const MIN_SECRET_BYTES: usize = 16;

/// One or more secrets from one variable, separated by spaces: the first signs, any
/// verifies. A secret is rotated by putting the new one first, and the old one is
/// dropped once nothing signed with it is in flight (a callback URL lives as long as its
/// Kling task; a client keeps its token until redeployed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing(Vec<Secret>);

impl KeyRing {
    /// A ring of one secret.
    pub fn single(secret: Secret) -> Self {
        Self(vec![secret])
    }

    /// The secret that signs.
    pub fn signing(&self) -> &Secret {
        &self.0[0]
    }

    /// Every secret that verifies, the signing one first.
    pub fn all(&self) -> &[Secret] {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("required variable `{0}` is not set")]
    Missing(&'static str),
    #[error("variable `{0}` is not valid: {1}")]
    Invalid(&'static str, &'static str),
    #[error("variable `{0}` could not be read: Spin's variables provider did not answer")]
    Unavailable(&'static str),
}

pub const CALLBACK_SECRET: &str = "callback_secret";
pub const API_TOKEN: &str = "api_token";
pub const WEBHOOK_SIGNING_SECRET: &str = "webhook_signing_secret";
pub const KLING_ACCESS_KEY: &str = "kling_access_key";
pub const KLING_SECRET_KEY: &str = "kling_secret_key";
pub const KLING_API_KEY: &str = "kling_api_key";
pub const KLING_BASE_URL: &str = "kling_base_url";
pub const KLING_TIMEOUT_MS: &str = "kling_timeout_ms";
pub const PUBLIC_BASE_URL: &str = "public_base_url";
pub const STALE_AFTER_SECONDS: &str = "stale_after_seconds";
pub const VERIFY_CALLBACKS: &str = "verify_callbacks";
pub const RETENTION_DAYS: &str = "retention_days";
pub const NOTIFY_URL: &str = "notify_url";
pub const NOTIFY_SECRET: &str = "notify_secret";
pub const NOTIFY_ORIGIN: &str = "notify_origin";
pub const NOTIFY_RETRY_SECONDS: &str = "notify_retry_seconds";
pub const LOST_AFTER_POLLS: &str = "lost_after_polls";
pub const LOST_AFTER_SECONDS: &str = "lost_after_seconds";
pub const RECONCILE_BUDGET_SECONDS: &str = "reconcile_budget_seconds";

/// How long final tasks are kept; `0` keeps them forever.
pub fn retention_ms(vars: &dyn Variables) -> Result<Option<u64>, ConfigError> {
    let days = bounded(
        vars,
        RETENTION_DAYS,
        crate::reconcile::DEFAULT_RETENTION_DAYS,
        (0, 36_500),
        "expected a number of days up to 36500 (0 keeps tasks forever)",
    )?;
    Ok((days > 0).then_some(days * 24 * 60 * 60 * 1000))
}

/// A whole number from a variable: `default` when unset, else `min` to `max`. Every
/// duration and count goes through here, so its arithmetic (`* 1000`) cannot wrap.
fn bounded(
    vars: &dyn Variables,
    name: &'static str,
    default: u64,
    (min, max): (u64, u64),
    expected: &'static str,
) -> Result<u64, ConfigError> {
    match vars.get(name)? {
        None => Ok(default),
        Some(value) => value
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or(ConfigError::Invalid(name, expected)),
    }
}

/// When the reconciler gives a task up, and how long one run may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileLimits {
    /// "Not found" answers in a row before a task is `lost`...
    pub lost_after_polls: u32,
    /// ...spread over at least this long since the first of them.
    pub lost_after_ms: u64,
    /// A run starts no new Kling query after this long.
    pub budget_ms: u64,
}

impl ReconcileLimits {
    pub fn load(vars: &dyn Variables) -> Result<Self, ConfigError> {
        let polls = bounded(
            vars,
            LOST_AFTER_POLLS,
            crate::reconcile::DEFAULT_LOST_AFTER_POLLS.into(),
            (1, 1000),
            "expected a number of polls from 1 to 1000",
        )?;
        let lost_secs = bounded(
            vars,
            LOST_AFTER_SECONDS,
            crate::reconcile::DEFAULT_LOST_AFTER_SECS,
            (0, 365 * 24 * 3600),
            "expected a number of seconds, at most a year",
        )?;
        let budget_secs = bounded(
            vars,
            RECONCILE_BUDGET_SECONDS,
            crate::reconcile::DEFAULT_BUDGET_SECS,
            (1, 3600),
            "expected a number of seconds from 1 to 3600",
        )?;
        Ok(Self {
            lost_after_polls: u32::try_from(polls).unwrap_or(u32::MAX),
            lost_after_ms: lost_secs * 1000,
            budget_ms: budget_secs * 1000,
        })
    }
}

/// `verify_callbacks` = `true`: re-fetch final callbacks from Kling before trusting them.
pub fn verify_callbacks(vars: &dyn Variables) -> Result<bool, ConfigError> {
    match vars.get(VERIFY_CALLBACKS)?.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ConfigError::Invalid(
            VERIFY_CALLBACKS,
            "expected true or false",
        )),
    }
}

/// Every variable the component reads; `spin.toml` must declare and map each (a host
/// test checks it).
pub const ALL_VARIABLES: [&str; 19] = [
    CALLBACK_SECRET,
    API_TOKEN,
    WEBHOOK_SIGNING_SECRET,
    KLING_ACCESS_KEY,
    KLING_SECRET_KEY,
    KLING_API_KEY,
    KLING_BASE_URL,
    KLING_TIMEOUT_MS,
    PUBLIC_BASE_URL,
    STALE_AFTER_SECONDS,
    VERIFY_CALLBACKS,
    RETENTION_DAYS,
    NOTIFY_URL,
    NOTIFY_SECRET,
    NOTIFY_ORIGIN,
    NOTIFY_RETRY_SECONDS,
    LOST_AFTER_POLLS,
    LOST_AFTER_SECONDS,
    RECONCILE_BUDGET_SECONDS,
];

/// The first retry of a failed notification waits this long by default.
pub const DEFAULT_NOTIFY_RETRY_SECONDS: u64 = 30;

/// Where state changes are announced (`notify_url`), and the key that signs them.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub url: String,
    /// Every notification is signed with each (Standard Webhooks carries several
    /// signatures), so a receiver can move to a new secret at its own pace.
    pub secrets: Vec<WebhookSecret>,
    /// The wait before the first retry; it doubles with each failure.
    pub retry_after_ms: u64,
    /// `notify_url` is not under `notify_origin`, the host the shipped manifest allows:
    /// Spin will refuse every send (said in each failure's log line).
    pub outside_allowed_origin: bool,
}

impl NotifyConfig {
    /// `None` when `notify_url` is not set: notifications are off.
    pub fn load(vars: &dyn Variables) -> Result<Option<Self>, ConfigError> {
        let Some(url) = vars.get(NOTIFY_URL)? else {
            return Ok(None);
        };
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::Invalid(
                NOTIFY_URL,
                "expected an http(s):// URL",
            ));
        }
        // The shipped manifest allows outbound HTTP to `{{ notify_origin }}` only. A URL
        // elsewhere is not refused here: its notifications wait in the outbox (nothing is
        // lost) and each failed send says why, until the variables are put right.
        let outside_allowed_origin = vars
            .get(NOTIFY_ORIGIN)?
            .is_some_and(|origin| !origin.contains('*') && !is_under_origin(&url, &origin));
        let value = vars
            .get(NOTIFY_SECRET)?
            .ok_or(ConfigError::Missing(NOTIFY_SECRET))?;
        let secrets = value
            .split_whitespace()
            .map(|secret| {
                let secret = WebhookSecret::parse(secret).map_err(|_| {
                    ConfigError::Invalid(NOTIFY_SECRET, "expected `whsec_` followed by base64")
                })?;
                if secret.key_len() < MIN_SECRET_BYTES {
                    return Err(ConfigError::Invalid(
                        NOTIFY_SECRET,
                        "every secret must decode to at least 16 bytes",
                    ));
                }
                Ok(secret)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(ConfigError::Missing(NOTIFY_SECRET));
        }
        let retry_secs = bounded(
            vars,
            NOTIFY_RETRY_SECONDS,
            DEFAULT_NOTIFY_RETRY_SECONDS,
            (0, 24 * 3600),
            "expected a number of seconds, at most a day",
        )?;
        Ok(Some(Self {
            url,
            secrets,
            retry_after_ms: retry_secs * 1000,
            outside_allowed_origin,
        }))
    }
}

/// `url` is `origin` itself or a path, query or fragment under it: the same scheme, host
/// and port (case-insensitive, a scheme's default port written or not).
fn is_under_origin(url: &str, origin: &str) -> bool {
    fn parts(text: &str) -> Option<(String, String)> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => ":443",
            "http" => ":80",
            _ => return Some((scheme, authority)),
        };
        let authority = match authority.strip_suffix(default_port) {
            Some(host) => host.to_string(),
            None => authority,
        };
        Some((scheme, authority))
    }
    let origin = origin.trim_end_matches('/');
    parts(origin).is_some_and(|o| parts(url) == Some(o))
}

/// Kling's global host; the Beijing host and the stand-in are set with `kling_base_url`.
pub const DEFAULT_KLING_BASE_URL: &str = "https://api-singapore.klingai.com";
/// How long one Kling call may take before it counts as a timeout.
pub const DEFAULT_KLING_TIMEOUT_MS: u64 = 20_000;
pub const MAX_KLING_TIMEOUT_MS: u64 = 60_000;

/// How the component authenticates to Kling.
#[derive(Debug, Clone)]
pub enum KlingAuth {
    /// A plain API key as the bearer (accepted since mid-2026).
    ApiKey(Secret),
    /// Access key / secret key: a fresh HS256 JWT per call.
    AccessKey {
        access_key: Secret,
        secret_key: Secret,
    },
}

impl KlingAuth {
    pub fn bearer(&self, now_secs: u64) -> String {
        match self {
            KlingAuth::ApiKey(key) => key.expose().to_string(),
            KlingAuth::AccessKey {
                access_key,
                secret_key,
            } => crate::kling::jwt::token(access_key, secret_key, now_secs),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KlingConfig {
    /// Without a trailing slash.
    pub base_url: String,
    pub auth: KlingAuth,
    pub timeout_ms: u64,
}

impl KlingConfig {
    pub fn load(vars: &dyn Variables) -> Result<Self, ConfigError> {
        let auth = match (
            vars.get(KLING_API_KEY)?,
            vars.get(KLING_ACCESS_KEY)?,
            vars.get(KLING_SECRET_KEY)?,
        ) {
            (Some(key), _, _) => KlingAuth::ApiKey(Secret(key)),
            (None, Some(access_key), Some(secret_key)) => KlingAuth::AccessKey {
                access_key: Secret(access_key),
                secret_key: Secret(secret_key),
            },
            (None, Some(_), None) => return Err(ConfigError::Missing(KLING_SECRET_KEY)),
            (None, None, _) => {
                return Err(ConfigError::Missing(
                    "kling_api_key (or kling_access_key and kling_secret_key)",
                ));
            }
        };
        let base_url = vars
            .get(KLING_BASE_URL)?
            .unwrap_or_else(|| DEFAULT_KLING_BASE_URL.to_string());
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(ConfigError::Invalid(
                KLING_BASE_URL,
                "expected an http(s):// URL",
            ));
        }
        // At most a minute for each of connect, first byte and between bytes: a create (a
        // small JSON answer) and the lookup that may follow it (for advanced-lip-sync and
        // ai-multi-shot up to two pages of Kling's list) then end, answered or failed,
        // within about nine minutes, inside the reconciler's SUBMITTING_GRACE_MS, so an
        // unanswered create is not taken for one that never went through.
        let timeout_ms = bounded(
            vars,
            KLING_TIMEOUT_MS,
            DEFAULT_KLING_TIMEOUT_MS,
            (1, MAX_KLING_TIMEOUT_MS),
            "expected a number of milliseconds from 1 to 60000",
        )?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            auth,
            timeout_ms,
        })
    }
}

/// How old a pending task's last news must be before the reconciler asks Kling.
pub fn stale_after_ms(vars: &dyn Variables) -> Result<u64, ConfigError> {
    let secs = bounded(
        vars,
        STALE_AFTER_SECONDS,
        crate::reconcile::DEFAULT_STALE_AFTER_SECS,
        (0, 30 * 24 * 3600),
        "expected a number of seconds, at most 30 days",
    )?;
    Ok(secs * 1000)
}

/// What submitting needs: Kling, where Kling calls back, and the key that signs it.
#[derive(Debug, Clone)]
pub struct SubmitConfig {
    pub kling: KlingConfig,
    /// The app's public URL as Kling reaches it, without a trailing slash.
    pub public_base_url: String,
    pub callback_secret: KeyRing,
    /// When the reconciler first asks Kling about a task whose callbacks have not come.
    pub stale_after_ms: u64,
}

impl SubmitConfig {
    pub fn load(vars: &dyn Variables) -> Result<Self, ConfigError> {
        let public_base_url = vars
            .get(PUBLIC_BASE_URL)?
            .ok_or(ConfigError::Missing(PUBLIC_BASE_URL))?;
        if !(public_base_url.starts_with("https://") || public_base_url.starts_with("http://")) {
            return Err(ConfigError::Invalid(
                PUBLIC_BASE_URL,
                "expected an http(s):// URL",
            ));
        }
        Ok(Self {
            kling: KlingConfig::load(vars)?,
            public_base_url: public_base_url.trim_end_matches('/').to_string(),
            callback_secret: key_ring(vars, CALLBACK_SECRET)?,
            stale_after_ms: stale_after_ms(vars)?,
        })
    }

    /// `{public_base_url}/callbacks/kling/{external_task_id}?sig={sig}`
    pub fn callback_url(&self, external_task_id: &str) -> String {
        format!(
            "{}/callbacks/kling/{external_task_id}?sig={}",
            self.public_base_url,
            crate::signatures::callback_url::sign(self.callback_secret.signing(), external_task_id)
        )
    }
}

/// What the callback routes need.
#[derive(Debug)]
pub struct CallbackConfig {
    /// Keys of the `sig` on callback URLs (UTF-8 bytes of each value); any verifies.
    pub callback_secret: KeyRing,
    /// Standard Webhooks key, when the deployment opted in to Kling's signed callbacks and
    /// the delivery can use it (see [`CallbackConfig::load`]): `None` is also "not read".
    pub webhook_secret: Option<WebhookSecret>,
}

impl CallbackConfig {
    /// `with_webhook_key`: whether the delivery can use the Standard Webhooks key
    /// ([`Callback::can_use_webhook_key`]); Kling's usual callback, to a `sig` URL without
    /// the headers, cannot, and on Spin every variable read is a provider lookup.
    ///
    /// [`Callback::can_use_webhook_key`]: crate::callback::receive::Callback::can_use_webhook_key
    pub fn load(vars: &dyn Variables, with_webhook_key: bool) -> Result<Self, ConfigError> {
        let webhook_secret = if with_webhook_key {
            vars.get(WEBHOOK_SIGNING_SECRET)?
        } else {
            None
        };
        Ok(Self {
            callback_secret: key_ring(vars, CALLBACK_SECRET)?,
            webhook_secret: webhook_secret
                .map(|value| {
                    WebhookSecret::parse(&value).map_err(|_| {
                        ConfigError::Invalid(
                            WEBHOOK_SIGNING_SECRET,
                            "expected `whsec_` followed by base64",
                        )
                    })
                })
                .transpose()?,
        })
    }
}

/// The management API's bearer tokens (any of them is accepted).
pub fn api_token(vars: &dyn Variables) -> Result<KeyRing, ConfigError> {
    key_ring(vars, API_TOKEN)
}

/// A variable of one or more space-separated secrets, each at least
/// [`MIN_SECRET_BYTES`] long.
fn key_ring(vars: &dyn Variables, name: &'static str) -> Result<KeyRing, ConfigError> {
    let value = vars.get(name)?.ok_or(ConfigError::Missing(name))?;
    let secrets: Vec<Secret> = value
        .split_whitespace()
        .map(|secret| Secret(secret.to_string()))
        .collect();
    if secrets.is_empty() {
        return Err(ConfigError::Missing(name));
    }
    // Only the first signs (and is what a client is given now): an older, shorter one
    // may stay after it while a deployment moves off it.
    if secrets[0].0.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::Invalid(
            name,
            "the first secret must be at least 16 bytes (several may be given, space-separated)",
        ));
    }
    Ok(KeyRing(secrets))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// What unit tests submit with: a Kling at `http://kling.test`, callbacks to
    /// `https://hooks.example`.
    pub fn submit_config() -> SubmitConfig {
        SubmitConfig {
            kling: KlingConfig {
                base_url: "http://kling.test".into(),
                auth: KlingAuth::ApiKey(Secret::new("k")),
                timeout_ms: 100,
            },
            public_base_url: "https://hooks.example".into(),
            callback_secret: KeyRing::single(Secret::new("test-callback-secret")),
            stale_after_ms: 300_000,
        }
    }

    pub struct MapVariables(pub HashMap<&'static str, &'static str>);

    impl Variables for MapVariables {
        fn get(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
            Ok(self
                .0
                .get(name)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string()))
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = CallbackConfig {
            callback_secret: KeyRing::single(Secret::new("hunter2-callback")),
            webhook_secret: Some(WebhookSecret::parse("whsec_aHVudGVyMg==").unwrap()),
        };
        let shown = format!("{config:?} {:?}", Secret::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("aHVudGVyMg"), "{shown}");
    }

    #[test]
    fn a_callback_reads_the_webhook_key_only_when_it_can_use_it() {
        let vars = MapVariables(HashMap::from([
            (CALLBACK_SECRET, "test-callback-secret"),
            (WEBHOOK_SIGNING_SECRET, "not-a-whsec-key"),
        ]));
        let sig_only = CallbackConfig::load(&vars, false).unwrap();
        assert!(sig_only.webhook_secret.is_none());
        assert!(matches!(
            CallbackConfig::load(&vars, true),
            Err(ConfigError::Invalid(WEBHOOK_SIGNING_SECRET, _))
        ));
    }

    #[test]
    fn every_duration_and_count_is_bounded_so_its_arithmetic_cannot_wrap() {
        let kling = [(KLING_API_KEY, "k"), (KLING_BASE_URL, "https://kling.test")];
        type Load = fn(&MapVariables) -> Result<(), ConfigError>;
        let loaders: [(&'static str, Load); 7] = [
            (RETENTION_DAYS, |v| retention_ms(v).map(drop)),
            (STALE_AFTER_SECONDS, |v| stale_after_ms(v).map(drop)),
            (LOST_AFTER_POLLS, |v| ReconcileLimits::load(v).map(drop)),
            (LOST_AFTER_SECONDS, |v| ReconcileLimits::load(v).map(drop)),
            (RECONCILE_BUDGET_SECONDS, |v| {
                ReconcileLimits::load(v).map(drop)
            }),
            (KLING_TIMEOUT_MS, |v| KlingConfig::load(v).map(drop)),
            (NOTIFY_RETRY_SECONDS, |v| NotifyConfig::load(v).map(drop)),
        ];
        for (name, load) in loaders {
            for bad in ["18446744073709551615", "-1", "1e3", "twelve"] {
                let mut vars = HashMap::from(kling);
                vars.insert(NOTIFY_URL, "https://next.example");
                vars.insert(NOTIFY_SECRET, "whsec_aHVudGVyMi1odW50ZXIyLWh1bnRlcjI=");
                vars.insert(name, bad);
                let err = load(&MapVariables(vars)).unwrap_err();
                assert!(
                    matches!(err, ConfigError::Invalid(n, _) if n == name),
                    "{name}={bad}: {err:?}"
                );
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
        // A Kling call cannot outlast the reconciler's grace for an unanswered create.
        let kling_with = |timeout| {
            let mut vars = HashMap::from(kling);
            vars.insert(KLING_TIMEOUT_MS, timeout);
            KlingConfig::load(&MapVariables(vars))
        };
        assert_eq!(kling_with("60000").unwrap().timeout_ms, 60_000);
        assert!(kling_with("60001").is_err());
        // The largest accepted values still compute.
        let vars = MapVariables(HashMap::from([(RETENTION_DAYS, "36500")]));
        assert_eq!(retention_ms(&vars).unwrap(), Some(36_500 * 86_400_000));
    }

    /// A provider that answers for some variables and fails for one.
    struct FailingFor(&'static str, MapVariables);

    impl Variables for FailingFor {
        fn get(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
            if name == self.0 {
                return Err(ConfigError::Unavailable(name));
            }
            self.1.get(name)
        }
    }

    #[test]
    fn a_variable_its_provider_cannot_read_is_an_error_never_its_default() {
        let set = || {
            MapVariables(HashMap::from([
                (RETENTION_DAYS, "0"),
                (VERIFY_CALLBACKS, "true"),
                (NOTIFY_URL, "https://next.example"),
                (NOTIFY_SECRET, "whsec_aHVudGVyMi1odW50ZXIyLWh1bnRlcjI="),
                (KLING_API_KEY, "k"),
                (CALLBACK_SECRET, "a-callback-secret-of-16+"),
            ]))
        };
        fn unavailable<T>(name: &'static str) -> Result<T, ConfigError> {
            Err(ConfigError::Unavailable(name))
        }
        assert_eq!(retention_ms(&set()), Ok(None), "0 keeps everything");
        assert_eq!(
            retention_ms(&FailingFor(RETENTION_DAYS, set())),
            unavailable(RETENTION_DAYS)
        );
        assert_eq!(
            verify_callbacks(&FailingFor(VERIFY_CALLBACKS, set())),
            unavailable(VERIFY_CALLBACKS)
        );
        assert_eq!(
            NotifyConfig::load(&FailingFor(NOTIFY_URL, set())).map(|c| c.is_some()),
            unavailable(NOTIFY_URL)
        );
        assert_eq!(
            KlingConfig::load(&FailingFor(KLING_API_KEY, set())).map(drop),
            unavailable(KLING_API_KEY)
        );
        assert_eq!(
            CallbackConfig::load(&FailingFor(CALLBACK_SECRET, set()), false).map(drop),
            unavailable(CALLBACK_SECRET)
        );
        let error = ConfigError::Unavailable(API_TOKEN).to_string();
        assert!(error.contains("api_token"), "{error}");
    }

    #[test]
    fn missing_and_invalid_variables_are_named_without_their_value() {
        let vars = MapVariables(HashMap::from([(CALLBACK_SECRET, "")]));
        assert_eq!(
            CallbackConfig::load(&vars, true).unwrap_err(),
            ConfigError::Missing(CALLBACK_SECRET)
        );
        assert_eq!(
            api_token(&vars).unwrap_err(),
            ConfigError::Missing(API_TOKEN)
        );

        // A short first secret is refused, and never echoed.
        for short in ["change-me", "change-me a-long-enough-secret"] {
            let vars = MapVariables(HashMap::from([
                (CALLBACK_SECRET, short),
                (API_TOKEN, short),
            ]));
            let err = CallbackConfig::load(&vars, true).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid(CALLBACK_SECRET, _)),
                "{err:?}"
            );
            assert!(!err.to_string().contains("change-me"));
            let err = api_token(&vars).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid(API_TOKEN, _)), "{err:?}");
        }
        // Moving off a short one: it may follow a long one for a while.
        let moving = MapVariables(HashMap::from([(
            API_TOKEN,
            "a-long-enough-secret change-me",
        )]));
        assert_eq!(api_token(&moving).unwrap().all().len(), 2);
        let spaces = MapVariables(HashMap::from([(API_TOKEN, "   ")]));
        assert_eq!(
            api_token(&spaces).unwrap_err(),
            ConfigError::Missing(API_TOKEN)
        );

        let vars = MapVariables(HashMap::from([
            (CALLBACK_SECRET, "sixteen-bytes-ok"),
            (WEBHOOK_SIGNING_SECRET, "whsec_not*base64"),
        ]));
        let err = CallbackConfig::load(&vars, true).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Invalid(
                WEBHOOK_SIGNING_SECRET,
                "expected `whsec_` followed by base64"
            )
        );
        assert!(!err.to_string().contains("not*base64"));
    }

    #[test]
    fn notifications_are_off_without_a_url_and_need_a_valid_secret_with_one() {
        let off = MapVariables(HashMap::from([(NOTIFY_URL, ""), (NOTIFY_SECRET, "")]));
        assert!(NotifyConfig::load(&off).unwrap().is_none());
        let cases = [
            (
                [(NOTIFY_URL, "https://next.example"), (NOTIFY_SECRET, "")],
                ConfigError::Missing(NOTIFY_SECRET),
            ),
            (
                [
                    (NOTIFY_URL, "next.example"),
                    (NOTIFY_SECRET, "whsec_aHVudGVyMi1odW50ZXIyLWh1bnRlcjI="),
                ],
                ConfigError::Invalid(NOTIFY_URL, "expected an http(s):// URL"),
            ),
            (
                [
                    (NOTIFY_URL, "https://next.example"),
                    (NOTIFY_SECRET, "hunter*2"),
                ],
                ConfigError::Invalid(NOTIFY_SECRET, "expected `whsec_` followed by base64"),
            ),
            (
                [
                    (NOTIFY_URL, "https://next.example"),
                    (NOTIFY_SECRET, "whsec_aHVudGVyMg=="),
                ],
                ConfigError::Invalid(
                    NOTIFY_SECRET,
                    "every secret must decode to at least 16 bytes",
                ),
            ),
        ];
        for (vars, expected) in cases {
            let err = NotifyConfig::load(&MapVariables(HashMap::from(vars))).unwrap_err();
            assert!(!err.to_string().contains("hunter"), "{err}");
            assert_eq!(err, expected);
        }
        let on = MapVariables(HashMap::from([
            (NOTIFY_URL, "https://next.example/hooks"),
            (NOTIFY_SECRET, "whsec_aHVudGVyMi1odW50ZXIyLWh1bnRlcjI="),
        ]));
        let config = NotifyConfig::load(&on).unwrap().unwrap();
        assert_eq!(config.retry_after_ms, DEFAULT_NOTIFY_RETRY_SECONDS * 1000);
        assert!(
            !config.outside_allowed_origin,
            "no notify_origin: no judgement"
        );
        for (origin, inside) in [
            ("https://next.example", true),
            ("HTTPS://Next.Example/", true),
            ("https://next.example:443", true),
            ("https://*.example", true),
            ("https://next.example:8443", false),
            ("https://next.ex", false),
            ("https://next.example.evil", false),
            ("http://next.example", false),
            ("https://notify-origin-unset.invalid", false),
        ] {
            let vars = MapVariables(HashMap::from([
                (NOTIFY_URL, "https://next.example/hooks"),
                (NOTIFY_SECRET, "whsec_aHVudGVyMi1odW50ZXIyLWh1bnRlcjI="),
                (NOTIFY_ORIGIN, origin),
            ]));
            let config = NotifyConfig::load(&vars).unwrap().unwrap();
            assert_eq!(!config.outside_allowed_origin, inside, "{origin}");
        }
        assert!(
            !format!("{config:?}").contains("aHVudGVy"),
            "secret redacted"
        );
    }

    #[test]
    fn kling_auth_prefers_the_api_key_and_needs_both_halves_of_a_key_pair() {
        let vars = MapVariables(HashMap::from([
            (KLING_API_KEY, "k"),
            (KLING_ACCESS_KEY, "a"),
        ]));
        let config = KlingConfig::load(&vars).unwrap();
        assert_eq!(config.auth.bearer(0), "k");
        assert_eq!(config.base_url, DEFAULT_KLING_BASE_URL);
        let vars = MapVariables(HashMap::from([(KLING_ACCESS_KEY, "a")]));
        assert_eq!(
            KlingConfig::load(&vars).unwrap_err(),
            ConfigError::Missing(KLING_SECRET_KEY)
        );
        let vars = MapVariables(HashMap::from([
            (KLING_ACCESS_KEY, "access-hunter2"),
            (KLING_SECRET_KEY, "secret-hunter2"),
            (KLING_BASE_URL, "http://127.0.0.1:9/"),
        ]));
        let config = KlingConfig::load(&vars).unwrap();
        assert_eq!(config.base_url, "http://127.0.0.1:9");
        assert!(config.auth.bearer(100).starts_with("eyJ"));
        assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
    }

    #[test]
    fn the_callback_url_carries_the_sig() {
        let vars = MapVariables(HashMap::from([
            (KLING_API_KEY, "k"),
            (CALLBACK_SECRET, "test-callback-secret"),
            (PUBLIC_BASE_URL, "https://hooks.example/"),
        ]));
        let config = SubmitConfig::load(&vars).unwrap();
        assert_eq!(
            config.callback_url("job-1"),
            "https://hooks.example/callbacks/kling/job-1?sig=V2ucXnrDxfowJok8DZQ7EDP7WSR1cOwBTCE3n54VYbA"
        );
        let vars = MapVariables(HashMap::from([
            (KLING_API_KEY, "k"),
            (CALLBACK_SECRET, "s"),
        ]));
        assert_eq!(
            SubmitConfig::load(&vars).unwrap_err(),
            ConfigError::Missing(PUBLIC_BASE_URL)
        );
    }

    #[test]
    fn spin_toml_declares_and_maps_every_variable_the_component_reads() {
        let manifest = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/spin.toml"));
        for name in ALL_VARIABLES {
            assert!(
                manifest.contains(&format!("\n{name} = {{ ")),
                "{name} is not declared in [variables]"
            );
            assert!(
                manifest.contains(&format!("\n{name} = \"{{{{ {name} }}}}\"")),
                "{name} is not mapped to the component"
            );
        }
        // And the list is complete: every variable-name constant in this file is in it.
        for line in include_str!("config.rs").lines() {
            let Some(rest) = line.strip_prefix("pub const ") else {
                continue;
            };
            let Some((_, value)) = rest.split_once(": &str = \"") else {
                continue;
            };
            let value = value.trim_end_matches("\";");
            if value.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                assert!(
                    ALL_VARIABLES.contains(&value),
                    "{value} is missing from ALL_VARIABLES"
                );
            }
        }
    }

    #[test]
    fn the_webhook_secret_is_optional() {
        let vars = MapVariables(HashMap::from([(CALLBACK_SECRET, "sixteen-bytes-ok")]));
        let config = CallbackConfig::load(&vars, true).unwrap();
        assert_eq!(
            config.callback_secret.signing().expose(),
            "sixteen-bytes-ok"
        );
        assert!(config.webhook_secret.is_none());
    }
}
