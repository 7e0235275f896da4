//! Runs the Kling stand-in by hand, for local demos:
//! `cargo run -p kling-standin -- [port]` (default 8787), then point the component at it
//! with `SPIN_VARIABLE_KLING_BASE_URL=http://127.0.0.1:8787`. With
//! `KLING_STANDIN_WEBHOOK_SECRETS="whsec_..."` (space-separated, as during a rotation) its
//! callbacks carry Standard Webhooks signatures, as Kling's do once enabled.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8787);
    let config = kling_standin::Config {
        webhook_secrets: std::env::var("KLING_STANDIN_WEBHOOK_SECRETS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        ..kling_standin::Config::default()
    };
    let standin =
        kling_standin::StandIn::start(config.clone(), SocketAddr::from(([127, 0, 0, 1], port)))
            .await?;
    println!("Kling stand-in on {}", standin.base_url());
    println!(
        "  access key {:?}, secret key {:?}, API key {:?}",
        config.access_key, config.secret_key, config.api_key
    );
    std::future::pending::<()>().await;
    Ok(())
}
