//! The service's routes, under its prefix, with BinderHub's names, fields and status
//! codes. One dispatcher reads the raw (still percent-encoded) path, as BinderHub's
//! `get_spec_from_request` does: a `git/<escaped URL>/<ref>` spec must not be decoded
//! before it is split.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::auth::{self, Denied, User};
use super::builds::{self, Answer, EventObject};
use super::providers::{self, Repo};
use super::{page, App};

/// BinderHub's keepalive interval.
const KEEPALIVE: Duration = Duration::from_secs(25);

/// Every route, behind one dispatcher.
pub fn router(app: Arc<App>) -> Router {
    Router::new().fallback(dispatch).with_state(app)
}

async fn dispatch(State(app): State<Arc<App>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let prefix = app.config.prefix.clone();
    let Some(rest) = path
        .strip_prefix(prefix.as_str())
        .or_else(|| (path == prefix.trim_end_matches('/')).then_some(""))
    else {
        return not_found();
    };
    let rest = rest.to_string();
    let headers = request.headers().clone();
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n").into_response();
    }
    let (route, tail) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    match route {
        "build" => match tail.split_once('/') {
            Some((provider, spec)) => build(&app, provider, spec, &query, &headers).await,
            None => sse_error(StatusCode::NOT_FOUND, "No provider and spec in the URL"),
        },
        "v2" => match tail.split_once('/') {
            Some((provider, spec)) => {
                let full = request
                    .uri()
                    .path_and_query()
                    .map_or(path.as_str(), |p| p.as_str());
                launch_page(&app, provider, spec, full, &headers).await
            }
            None => not_found(),
        },
        "oauth_callback" => oauth_callback(&app, &query, &headers).await,
        "api" if tail == "repoproviders" => json_response(
            StatusCode::OK,
            providers::display_configs(&app.config.providers),
        ),
        "versions" if tail.is_empty() => {
            let mut response = json_response(
                StatusCode::OK,
                json!({
                    "builder_info": {"hpcbinder": env!("CARGO_PKG_VERSION"), "build_command": "hpcbinder build --json"},
                    "binderhub": format!("hpcbinder-{}", env!("CARGO_PKG_VERSION")),
                }),
            );
            response.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            response
        }
        "health" if tail.is_empty() => health(&app, method == Method::HEAD).await,
        "metrics" if tail.is_empty() => {
            let (running, queued) = (app.builds.running(), app.builds.queued());
            let text = app
                .builds
                .metrics
                .render(running, queued, app.config.max_builds);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        "badge.svg" | "badge_logo.svg" if tail.is_empty() => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "max-age=86400"),
            ],
            page::BADGE,
        )
            .into_response(),
        "logs" => logs(&app, tail, &headers).await,
        "" => page::home(&app.config.prefix, &app.config.providers),
        _ => not_found(),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not found\n").into_response()
}

fn json_response(status: StatusCode, value: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// BinderHub's `send_error` on an event stream: the status, and one `failed` event.
fn sse_error(status: StatusCode, message: &str) -> Response {
    let event = json!({"phase": "failed", "status_code": status.as_u16(), "message": format!("{message}\n")});
    sse_body(status, &[event])
}

/// A short event stream, written at once.
fn sse_body(status: StatusCode, events: &[Value]) -> Response {
    let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    (
        status,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn failed(message: &str) -> Response {
    sse_body(
        StatusCode::OK,
        &[json!({"phase": "failed", "message": format!("{message}\n")})],
    )
}

/// How a request proved who it is.
enum Via {
    Token,
    Session { xsrf: String },
}

/// The request's user: an `Authorization` header, else the session cookie.
async fn identify(app: &App, headers: &HeaderMap) -> Result<(User, Via), Denied> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = if authorization.is_some() {
        app.auth
            .user_of_header(authorization)
            .await?
            .map(|user| (user, Via::Token))
    } else {
        let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
        match auth::cookie(cookies, auth::SESSION_COOKIE) {
            Some(session) => app
                .auth
                .user_of_session(session)
                .await?
                .map(|(user, xsrf)| (user, Via::Session { xsrf })),
            None => None,
        }
    };
    match user {
        Some((user, _)) if !app.auth.has_access(&user) => Err(Denied::NoAccess(user.name)),
        Some(found) => Ok(found),
        None => Err(Denied::Anonymous),
    }
}

/// The host a request came from: its `Origin`, else its `Host` (BinderHub's origin).
fn origin(headers: &HeaderMap) -> String {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(|o| url::Url::parse(o).ok())
        .map(|u| match u.port() {
            Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_string(),
        })
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn denied_sse(app: &App, denied: Denied) -> Response {
    match denied {
        Denied::Anonymous => sse_error(
            StatusCode::FORBIDDEN,
            "Forbidden: log in through the Hub, or send `Authorization: token <your Hub API token>`",
        ),
        Denied::NoAccess(user) => sse_error(
            StatusCode::FORBIDDEN,
            &format!(
                "Forbidden: {user} may not use this service (it needs the scope {})",
                app.config.access_scope()
            ),
        ),
        Denied::HubDown(why) => sse_error(StatusCode::SERVICE_UNAVAILABLE, &why),
    }
}

async fn build(
    app: &Arc<App>,
    provider: &str,
    raw_spec: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !accept
        .split([';', ','])
        .any(|s| s.trim().eq_ignore_ascii_case("text/event-stream"))
    {
        return sse_error(
            StatusCode::BAD_REQUEST,
            "Missing Accept header: text/event-stream",
        );
    }
    let (user, via) = match identify(app, headers).await {
        Ok(found) => found,
        Err(denied) => return denied_sse(app, denied),
    };
    let audience = format!("{provider}/{}", raw_spec.trim_end_matches('/'));
    match (query.get("build_token"), &via) {
        (Some(token), _) => {
            if !app
                .auth
                .check_build_token(token, &user.name, &audience, &origin(headers))
            {
                return sse_error(StatusCode::FORBIDDEN, "Invalid build token");
            }
        }
        (None, Via::Session { xsrf }) => {
            let sent = headers.get("x-xsrftoken").and_then(|v| v.to_str().ok());
            if !auth::Auth::check_xsrf(xsrf, sent) {
                return sse_error(
                    StatusCode::FORBIDDEN,
                    "A browser starts builds from the launch page (it carries a build token)",
                );
            }
        }
        (None, Via::Token) => {}
    }
    app.builds.metrics.request();
    let repo = match Repo::parse(provider, raw_spec, &app.config.providers) {
        Ok(repo) => repo,
        Err(message) => return failed(&message),
    };
    if app.config.is_banned(&repo.spec) {
        return failed(&format!(
            "Sorry, {} is not allowed to launch. Please contact admins for more info!",
            repo.spec
        ));
    }
    let key = format!("{provider}:{}", repo.spec);
    let commit = match app.resolver.resolve(&repo).await {
        Ok(Some(commit)) => commit,
        Ok(None) => {
            return failed(&format!(
            "Could not resolve ref for {key}. Double check your URL and that your repo is public."
        ))
        }
        Err(e) => return failed(&format!("Error resolving ref for {key}: {e}")),
    };
    let build_only = query
        .get("build_only")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let launch_host = app.config.public_url.clone().unwrap_or_else(|| {
        let scheme = if secure(app, headers) {
            "https"
        } else {
            "http"
        };
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        format!("{scheme}://{host}")
    });
    let launch_origin = launch_host.trim_end_matches('/').to_string();
    let fields = json!({
        "binder_request": repo.request(),
        "binder_persistent_request": repo.persistent_request(&commit),
        "binder_ref_url": repo.ref_url(&commit),
        "binder_launch_host": format!("{}{}", launch_host.trim_end_matches('/'), app.config.prefix),
        "repo_url": crate::source::redact(&repo.url),
        "ref": commit,
        "build_only": build_only,
    });
    match app.builds.request(&repo.url, &commit, &user.name) {
        Answer::Refused(message, status) => sse_body(
            StatusCode::OK,
            &[json!({"phase": "failed", "status_code": status, "message": format!("{message}\n")})],
        ),
        Answer::Events(mut receiver) => {
            // One relay per request: the shared build's events, then (launch = "kernel",
            // not build_only) the launch of this user's server.
            let (tx, rx) = tokio::sync::mpsc::channel::<EventObject>(64);
            let launch = app.config.launch != super::config::Launch::None && !build_only;
            let urlpath = super::launch::urlpath(query);
            // nbgitpuller pulls a branch (or the default one): a commit id cannot be given.
            let content = app.config.nbgitpuller.then(|| {
                let named = repo.unresolved_ref != "HEAD" && repo.unresolved_ref != commit;
                super::content::Content {
                    repo: repo.url.clone(),
                    branch: named.then(|| repo.unresolved_ref.clone()),
                    folder: super::launch::content_folder(
                        app.config.content_folder.as_deref(),
                        &repo.slug,
                    ),
                }
            });
            let app = app.clone();
            let user = user.name.clone();
            let repo_url = repo.url.clone();
            tokio::spawn(async move {
                while let Some(event) = receiver.recv().await {
                    if event.get("phase").and_then(Value::as_str) != Some("ready") {
                        if tx.send((*event).clone()).await.is_err() {
                            return; // the client left; the build goes on
                        }
                        continue;
                    }
                    let mut ready = ready_fields(&event, &fields);
                    if launch {
                        let built = builds::event("built", "Built, launching...");
                        if tx.send(built).await.is_err() {
                            return;
                        }
                        let build = super::launch::AfterBuild {
                            user: &user,
                            repo_url: &repo_url,
                            ready: &ready,
                            urlpath: &urlpath,
                            content: content.as_ref(),
                            origin: &launch_origin,
                        };
                        let launched = super::launch::after_build(&app.config, build, &tx).await;
                        match launched {
                            Ok((url, target)) => {
                                ready.insert(
                                    "message".into(),
                                    format!("server running at {url}\n").into(),
                                );
                                ready.insert("url".into(), url.into());
                                ready.insert("launch_url".into(), target.into());
                            }
                            Err(why) => {
                                let _ = tx
                                    .send(builds::event(
                                        "failed",
                                        format!("Launch failed: {why}\n"),
                                    ))
                                    .await;
                                return;
                            }
                        }
                    }
                    let _ = tx.send(ready).await;
                    return;
                }
            });
            // BinderHub's framing exactly: `data: <json>` blocks and `:keepalive` comments
            // every 25 s (axum's own keep-alive writes `: keepalive`).
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = tokio::select! {
                    event = rx.recv() => format!("data: {}\n\n", builds::to_json(&event?)),
                    () = tokio::time::sleep(KEEPALIVE) => ":keepalive\n\n".to_string(),
                };
                Some((Ok::<_, Infallible>(chunk), rx))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .header("x-accel-buffering", "no")
                .body(Body::from_stream(stream))
                .unwrap_or_default()
        }
    }
}

/// The `ready` event with the request's BinderHub fields and `imageName`.
fn ready_fields(event: &EventObject, fields: &Value) -> EventObject {
    let mut event = builds::with_request_fields(event, fields.clone());
    let image = event
        .get("image")
        .filter(|i| !i.is_null())
        .or_else(|| event.get("prefix"))
        .cloned()
        .unwrap_or(Value::Null);
    event.insert("imageName".into(), image);
    event
}

fn secure(app: &App, headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
        || app
            .config
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
}

fn cookie_header(
    app: &App,
    headers: &HeaderMap,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> String {
    let mut cookie = format!(
        "{name}={value}; Path={}; HttpOnly; SameSite=Lax",
        app.config.prefix
    );
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    if secure(app, headers) {
        cookie.push_str("; Secure");
    }
    cookie
}

async fn launch_page(
    app: &Arc<App>,
    provider: &str,
    raw_spec: &str,
    full_path: &str,
    headers: &HeaderMap,
) -> Response {
    let user = match identify(app, headers).await {
        Ok((user, _)) => user,
        Err(Denied::Anonymous) => {
            let (state, authorize) = app.auth.begin_login(full_path);
            let mut response = Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, authorize)
                .header(
                    header::SET_COOKIE,
                    cookie_header(app, headers, auth::STATE_COOKIE, &state, Some(600)),
                )
                .body(Body::empty())
                .unwrap_or_default();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return response;
        }
        Err(Denied::NoAccess(name)) => {
            return page::message(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "{name} may not use this service (it needs the scope {}). Ask the hub's admins for access.",
                    app.config.access_scope()
                ),
            )
        }
        Err(Denied::HubDown(why)) => {
            return page::message(StatusCode::SERVICE_UNAVAILABLE, "The Hub is not answering", &why)
        }
    };
    let spec = raw_spec.trim_end_matches('/');
    let repo = Repo::parse(provider, spec, &app.config.providers);
    let audience = format!("{provider}/{spec}");
    let token = app
        .auth
        .build_token(&user.name, &audience, &origin(headers));
    page::launch(
        &app.config.prefix,
        &audience,
        repo.as_ref().map_err(String::as_str),
        &token,
        &user.name,
    )
}

async fn oauth_callback(
    app: &Arc<App>,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let (Some(code), Some(state)) = (query.get("code"), query.get("state")) else {
        return page::message(
            StatusCode::BAD_REQUEST,
            "Login failed",
            "The Hub sent no code or state.",
        );
    };
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let cookie_state = auth::cookie(cookies, auth::STATE_COOKIE);
    match app.auth.finish_login(code, state, cookie_state).await {
        Ok((session, next)) => {
            let next = if next.starts_with(app.config.prefix.as_str()) && !next.starts_with("//") {
                next
            } else {
                app.config.prefix.clone()
            };
            Response::builder()
                .status(StatusCode::FOUND)
                .header(header::LOCATION, next)
                .header(
                    header::SET_COOKIE,
                    cookie_header(app, headers, auth::SESSION_COOKIE, &session, None),
                )
                .header(
                    header::SET_COOKIE,
                    cookie_header(app, headers, auth::STATE_COOKIE, "", Some(0)),
                )
                .body(Body::empty())
                .unwrap_or_default()
        }
        Err(Denied::NoAccess(name)) => page::message(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "{name} may not use this service (it needs the scope {}).",
                app.config.access_scope()
            ),
        ),
        Err(Denied::HubDown(why)) => page::message(StatusCode::SERVICE_UNAVAILABLE, "The Hub is not answering", &why),
        Err(Denied::Anonymous) => page::message(
            StatusCode::FORBIDDEN,
            "Login failed",
            "The login did not match the one this browser started (state mismatch); open the launch link again.",
        ),
    }
}

async fn logs(app: &Arc<App>, key16: &str, headers: &HeaderMap) -> Response {
    if let Err(denied) = identify(app, headers).await {
        let status = match denied {
            Denied::HubDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        };
        return (status, "Forbidden\n").into_response();
    }
    if key16.len() != 16
        || !key16
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return not_found();
    }
    match app.builds.log(key16) {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        None => not_found(),
    }
}

/// BinderHub's `/health`: the Hub API, the store, the queue; 503 when not ok. Checks
/// are cached for a few seconds, as BinderHub's `at_most_every`.
async fn health(app: &Arc<App>, head: bool) -> Response {
    let mut cached = app.health.lock().await;
    let (checks, ok) = match &*cached {
        Some((when, checks, ok)) if when.elapsed() < Duration::from_secs(5) => {
            (checks.clone(), *ok)
        }
        _ => {
            let hub_ok = match &app.config.hub_api {
                Some(api) => reqwest::Client::builder()
                    .timeout(Duration::from_secs(3))
                    .no_proxy()
                    .build()
                    .ok()
                    .map(|c| c.get(format!("{api}/")))
                    .map(|r| async { r.send().await.is_ok_and(|r| r.status().is_success()) }),
                None => None,
            };
            let hub_ok = match hub_ok {
                Some(check) => check.await,
                None => false,
            };
            let store = app.settings.store.clone();
            let store_ok = tokio::task::spawn_blocking(move || {
                fs_err::create_dir_all(&store).is_ok()
                    && tempfile::Builder::new()
                        .prefix(".health-")
                        .tempfile_in(&store)
                        .is_ok()
            })
            .await
            .unwrap_or(false);
            let checks = json!([
                {"service": "JupyterHub API", "ok": hub_ok},
                {"service": "Store", "ok": store_ok, "path": app.settings.store},
            ]);
            let ok = hub_ok && store_ok;
            *cached = Some((Instant::now(), checks.clone(), ok));
            (checks, ok)
        }
    };
    drop(cached);
    let mut checks = checks;
    if let Value::Array(list) = &mut checks {
        list.push(json!({
            "service": "Build queue", "ok": true,
            "running": app.builds.running() - app.builds.queued(),
            "queued": app.builds.queued(),
            "max_builds": app.config.max_builds,
        }));
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if head {
        return status.into_response();
    }
    json_response(status, json!({"ok": ok, "checks": checks}))
}
