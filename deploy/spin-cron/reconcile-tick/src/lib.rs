//! Calls kling-webhook's `POST /tasks/reconcile` on every cron tick.

use spin_cron_sdk::{Error, Metadata, cron_component};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::variables;

// A plain fn that drives the send with spin-sdk's own `run`: spin-cron-sdk's macro runs
// the handler inside an executor of its own, and which spin-executor version that is
// depends on the spin-cron-sdk revision; driving the send here works with any of them.
#[cron_component]
fn handle_cron_event(_metadata: Metadata) -> Result<(), Error> {
    let url = variables::get("reconcile_url").map_err(|e| Error::Other(e.to_string()))?;
    let tokens = variables::get("api_token").map_err(|e| Error::Other(e.to_string()))?;
    // While api_token is rotated it holds several space-separated tokens: send the first.
    let token = tokens.split_whitespace().next().unwrap_or_default();
    let request = Request::builder()
        .method(Method::Post)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .build();
    let response: Response = spin_sdk::http::run(spin_sdk::http::send(request))
        .map_err(|e| Error::Other(e.to_string()))?;
    // The report, e.g. {"checked":3,"updated":2,"pending":1,"left_due":0,...}.
    let status = *response.status();
    let body = String::from_utf8_lossy(response.body());
    println!("reconcile: {status} {body}");
    // A refused or failed run is the tick's failure, not a silent success.
    if !(200..300).contains(&status) {
        return Err(Error::Other(format!("reconcile answered HTTP {status}: {body}")));
    }
    Ok(())
}
