//! Configuration from Spin variables, read per request (variables are cheap host
//! calls, and reading only what a route needs lets `/health` work unconfigured).

use std::fmt;

use crate::signatures::standard_webhooks::WebhookSecret;

/// Where variable values come from: Spin's variables in the component, a map in tests.
pub trait Variables {
    /// The value of `name`, or `None` when it is undefined or empty.
    fn get(&self, name: &str) -> Option<String>;
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("required variable `{0}` is not set")]
    Missing(&'static str),
    #[error("variable `{0}` is not valid: {1}")]
    Invalid(&'static str, &'static str),
}

pub const CALLBACK_SECRET: &str = "callback_secret";
pub const API_TOKEN: &str = "api_token";
pub const WEBHOOK_SIGNING_SECRET: &str = "webhook_signing_secret";

/// What the callback routes need.
#[derive(Debug)]
pub struct CallbackConfig {
    /// Key of the `sig` on callback URLs (UTF-8 bytes of the value).
    pub callback_secret: Secret,
    /// Standard Webhooks key, when the deployment opted in to Kling's signed callbacks.
    pub webhook_secret: Option<WebhookSecret>,
}

impl CallbackConfig {
    pub fn load(vars: &dyn Variables) -> Result<Self, ConfigError> {
        Ok(Self {
            callback_secret: required(vars, CALLBACK_SECRET)?,
            webhook_secret: vars
                .get(WEBHOOK_SIGNING_SECRET)
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

/// The management API's bearer token.
pub fn api_token(vars: &dyn Variables) -> Result<Secret, ConfigError> {
    required(vars, API_TOKEN)
}

fn required(vars: &dyn Variables, name: &'static str) -> Result<Secret, ConfigError> {
    vars.get(name).map(Secret).ok_or(ConfigError::Missing(name))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    pub struct MapVariables(pub HashMap<&'static str, &'static str>);

    impl Variables for MapVariables {
        fn get(&self, name: &str) -> Option<String> {
            self.0
                .get(name)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string())
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = CallbackConfig {
            callback_secret: Secret::new("hunter2-callback"),
            webhook_secret: Some(WebhookSecret::parse("whsec_aHVudGVyMg==").unwrap()),
        };
        let shown = format!("{config:?} {:?}", Secret::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("aHVudGVyMg"), "{shown}");
    }

    #[test]
    fn missing_and_invalid_variables_are_named_without_their_value() {
        let vars = MapVariables(HashMap::from([(CALLBACK_SECRET, "")]));
        assert_eq!(
            CallbackConfig::load(&vars).unwrap_err(),
            ConfigError::Missing(CALLBACK_SECRET)
        );
        assert_eq!(
            api_token(&vars).unwrap_err(),
            ConfigError::Missing(API_TOKEN)
        );

        let vars = MapVariables(HashMap::from([
            (CALLBACK_SECRET, "s"),
            (WEBHOOK_SIGNING_SECRET, "whsec_not*base64"),
        ]));
        let err = CallbackConfig::load(&vars).unwrap_err();
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
    fn the_webhook_secret_is_optional() {
        let vars = MapVariables(HashMap::from([(CALLBACK_SECRET, "s")]));
        let config = CallbackConfig::load(&vars).unwrap();
        assert_eq!(config.callback_secret.expose(), "s");
        assert!(config.webhook_secret.is_none());
    }
}
