//! A long-lived aws-sdk-rust client: see ../README.md.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<f64> = std::env::args().skip(1).map(|a| a.parse().unwrap_or(0.0)).collect();
    let (seconds, interval) = (args[0], args[1]);
    let config = aws_config::load_from_env().await;
    let sts = aws_sdk_sts::Client::new(&config);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        let line = match sts.get_caller_identity().send().await {
            Ok(identity) => serde_json::json!({"ok": true, "arn": identity.arn()}),
            Err(error) => serde_json::json!({
                "ok": false,
                "error": format!("{}", aws_sdk_sts::error::DisplayErrorContext(&error)),
            }),
        };
        println!("{line}");
        tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    }
}
