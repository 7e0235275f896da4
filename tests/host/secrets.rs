//! Secrets never leave: no Kling key, callback secret, API token or callback `sig`
//! reaches a response or the component's own log, whatever route it came through.

use bytes::Bytes;
use kling_standin::{CreateBehaviour, Script};

use crate::support::deployment::{Auth, deploy_with, text2video_as};
use crate::support::requests::{API_TOKEN, CALLBACK_SECRET, request};

/// No secret reaches a response or the component's own log: Kling's error that quotes
/// the create's `callback_url` (with its `sig`; a 502, which is logged), a forged
/// callback, a callback with the right `sig`, an unauthenticated read. With either way
/// of authenticating to Kling: an access/secret key pair, or an API key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_response_or_the_component_log() {
    for auth in [Auth::KeyPair, Auth::ApiKey] {
        no_secret_leaves_a_deployment_using(auth).await;
    }
}

async fn no_secret_leaves_a_deployment_using(auth: Auth) {
    use crate::support::requests::{callback, callback_with_sig, flat, sig};
    let d = deploy_with(auth, None, &[]).await;
    d.app.capture_guest_log();
    d.standin.script(
        "job-quoted",
        Script {
            create: CreateBehaviour::FailQuotingCallbackUrl,
            ..Script::default()
        },
    );
    let refused = d.app.send(text2video_as("job-quoted")).await;
    let error = refused.expect_error(502, "kling_unavailable", "Kling's 5000");
    let quoted = error["kling"]["message"].as_str().unwrap();
    assert!(quoted.contains("?sig=<redacted>"), "{quoted}");
    let forged = d
        .app
        .send(callback_with_sig(
            "job-quoted",
            "forged",
            flat("1", "job-quoted", "succeed", 1),
        ))
        .await;
    assert_eq!(forged.status, 401);
    let stored = d
        .app
        .send(callback("job-else", flat("5", "job-else", "processing", 1)))
        .await;
    assert_eq!(stored.status, 200);
    let anonymous = d
        .app
        .send(
            request("GET", "/tasks/job-else")
                .body(Bytes::new())
                .unwrap(),
        )
        .await;
    assert_eq!(anonymous.status, 401);

    let config = d.standin.config().clone();
    let mut secrets = vec![
        CALLBACK_SECRET.to_string(),
        API_TOKEN.to_string(),
        config.secret_key.clone(),
        sig("job-quoted"),
        sig("job-else"),
    ];
    secrets.extend(config.api_key.clone());
    let log = d.app.guest_log();
    assert!(
        log.contains("POST /tasks/text2video") && log.contains("?sig=<redacted>"),
        "the 502 is logged with Kling's message: {log}"
    );
    for (what, text) in [
        (
            "the refusal",
            String::from_utf8_lossy(&refused.body).into_owned(),
        ),
        (
            "the forged callback's answer",
            String::from_utf8_lossy(&forged.body).into_owned(),
        ),
        (
            "the stored callback's answer",
            String::from_utf8_lossy(&stored.body).into_owned(),
        ),
        ("the log", log),
    ] {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret in {what}: {text}"
            );
        }
        assert!(!text.contains("Bearer "), "a bearer in {what}");
    }
}
