//! `POST /kling/identify-face` and `POST /kling/tts`: Kling's synchronous calls, passed
//! through with the deployment's Kling credentials. Nothing is stored.

use serde_json::Value;

use crate::api::submit::SubmitError;
use crate::config::KlingConfig;
use crate::kling::client::KlingClient;
use crate::kling::request::validate_by;
use crate::outbound::HttpTransport;
use crate::router::KlingCall;

/// Kling's `data` for the call; refusals and failures map like a submit's.
pub fn pass_through(
    call: KlingCall,
    body: &[u8],
    config: &KlingConfig,
    transport: &dyn HttpTransport,
    now_secs: u64,
) -> Result<Value, SubmitError> {
    let request = validate_by(call.rules(), body)?;
    let client = KlingClient::new(config, transport, now_secs);
    Ok(client.call_sync(call.path(), &request)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kling::client::KlingError;
    use crate::kling::client::tests::config;
    use crate::outbound::scripted::Scripted;

    #[test]
    fn a_call_is_checked_then_posted_and_kling_s_data_is_the_answer() {
        let transport = Scripted::new(vec![Ok((
            200,
            r#"{"code":0,"message":"SUCCEED","data":{"session_id":"s-1","face_data":[{"face_id":"0"}]}}"#,
        ))]);
        let answer = pass_through(
            KlingCall::IdentifyFace,
            br#"{"video_id":"86"}"#,
            &config(),
            &transport,
            0,
        )
        .unwrap();
        assert_eq!(answer["session_id"], "s-1");
        let sent = &transport.sent.borrow()[0];
        assert_eq!(sent.url, "http://kling.test/v1/videos/identify-face");
        assert_eq!(sent.body, br#"{"video_id":"86"}"#);
    }

    #[test]
    fn a_request_kling_would_refuse_never_reaches_it_and_kling_s_refusal_is_kept() {
        let transport = Scripted::new(vec![Ok((
            400,
            r#"{"code":1201,"message":"voice_id invalid","request_id":"r"}"#,
        ))]);
        let long = format!(
            r#"{{"text":"{}","voice_id":"v","voice_language":"en"}}"#,
            "x".repeat(1001)
        );
        let err =
            pass_through(KlingCall::Tts, long.as_bytes(), &config(), &transport, 0).unwrap_err();
        assert!(
            matches!(err, SubmitError::InvalidRequest(ref e) if e.field == "text"),
            "{err:?}"
        );
        let err = pass_through(
            KlingCall::IdentifyFace,
            br#"{"video_id":"1","video_url":"u"}"#,
            &config(),
            &transport,
            0,
        )
        .unwrap_err();
        assert!(matches!(err, SubmitError::InvalidRequest(_)), "{err:?}");
        let err = pass_through(
            KlingCall::Tts,
            br#"{"text":"hi","voice_id":"v"}"#,
            &config(),
            &transport,
            0,
        )
        .unwrap_err();
        assert!(
            matches!(err, SubmitError::InvalidRequest(ref e) if e.field == "voice_language"),
            "{err:?}"
        );
        assert!(transport.sent.borrow().is_empty());
        let err = pass_through(
            KlingCall::Tts,
            br#"{"text":"hi","voice_id":"nope","voice_language":"en"}"#,
            &config(),
            &transport,
            0,
        )
        .unwrap_err();
        assert!(matches!(err, SubmitError::Kling(KlingError::Api(ref e)) if e.code == 1201));
    }
}
