//! `launch = "kernel"`: after a build, the user's own server, started through the Hub's
//! REST API when it is not running, with the environment's kernel in the shared kernels
//! directory its `JUPYTER_PATH` includes (BinderHub's `launcher.py`, for any hub).
//!
//! The service's Hub token needs `admin:servers` (or `servers`) and `read:users` (see the
//! README's Hub configuration). The Hub's spawn progress is relayed as `launching`
//! events; the `ready` event's `url` is the user's server, to which the launch page
//! appends BinderHub's `urlpath` / `labpath` / `filepath`.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use super::builds::{event, EventObject};
use super::config::ServeConfig;

/// How long a server may take to start.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(600);

/// Start (or find) `user`'s default server; relays progress to `events`. Returns the
/// server's URL path (`/user/<name>/`).
pub async fn launch(
    config: &ServeConfig,
    user: &str,
    events: &mpsc::Sender<EventObject>,
) -> Result<String, String> {
    let api = config
        .hub_api
        .as_deref()
        .ok_or("JUPYTERHUB_API_URL is not set; the service cannot start servers")?;
    let token = config.hub_token.as_deref().unwrap_or_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(LAUNCH_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let name =
        percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC).to_string();
    let hub = |method: reqwest::Method, path: String| {
        http.request(method, format!("{api}{path}"))
            .header("Authorization", format!("token {token}"))
    };
    let model = hub(reqwest::Method::GET, format!("/users/{name}"))
        .send()
        .await
        .map_err(|e| format!("the Hub API did not answer: {e}"))?;
    if !model.status().is_success() {
        return Err(format!(
            "the Hub refused to describe {user} ({}): the service's token needs read:users",
            model.status()
        ));
    }
    let model: Value = serde_json::from_slice(&model.bytes().await.map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let server = &model["servers"][""];
    if server["ready"].as_bool() == Some(true) {
        let _ = events
            .send(event("launching", "Your server is already running"))
            .await;
        return Ok(server_url(&model, user));
    }
    let _ = events.send(event("launching", "Launching server...")).await;
    if server["pending"].is_null() {
        let started = hub(reqwest::Method::POST, format!("/users/{name}/server"))
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| format!("the Hub API did not answer: {e}"))?;
        let status = started.status().as_u16();
        if !matches!(status, 201 | 202 | 400) {
            let body = started.text().await.unwrap_or_default();
            return Err(format!(
                "the Hub did not start {user}'s server ({status}): {}",
                crate::printer::sanitize_line(&body)
            ));
        }
    }
    follow_progress(&hub, &name, events).await?;
    Ok(server_url(&model, user))
}

fn server_url(model: &Value, user: &str) -> String {
    model["servers"][""]["url"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("/user/{user}/"))
}

/// Relay the Hub's spawn progress (`GET /users/<name>/server/progress`, an event stream)
/// until the server is ready or has failed.
async fn follow_progress(
    hub: &impl Fn(reqwest::Method, String) -> reqwest::RequestBuilder,
    name: &str,
    events: &mpsc::Sender<EventObject>,
) -> Result<(), String> {
    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    let mut response = hub(
        reqwest::Method::GET,
        format!("/users/{name}/server/progress"),
    )
    .header("Accept", "text/event-stream")
    .send()
    .await
    .map_err(|e| format!("the Hub's progress stream: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "the Hub's progress stream answered {}",
            response.status()
        ));
    }
    let mut buffer = String::new();
    while Instant::now() < deadline {
        let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? else {
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let Ok(progress) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            if let Some(message) = progress["message"].as_str() {
                let _ = events
                    .send(event("launching", crate::printer::sanitize_line(message)))
                    .await;
            }
            if progress["failed"].as_bool() == Some(true) {
                return Err(format!(
                    "the server failed to start: {}",
                    progress["message"].as_str().unwrap_or("no reason given")
                ));
            }
            if progress["ready"].as_bool() == Some(true) {
                return Ok(());
            }
        }
    }
    Err("the server did not become ready".into())
}
