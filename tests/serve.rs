//! `hpcbinder serve` on its own port, with a loopback stand-in for the Hub's REST API
//! (tests/common/hubapi.rs): the service's build behaviour (sharing, late joiners,
//! timeouts, crashes, queue and per-user limits, the failure memo, SIGTERM), its event
//! framing, build tokens, logs and health. Real builds (uv, the wheelhouse, a kernel);
//! the same service inside a real JupyterHub is tests/serve_hub.rs.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::hubapi::{HubApi, HubUsers};
use common::sse::{client, events, free_port, repo, spawn_stream};
use common::Sandbox;
use serde_json::Value;

struct Service {
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// A sandbox, a Hub API stand-in, and the service with `table` as its `[serve]`.
    fn with_hub(table: &str) -> (Sandbox, HubApi, Self) {
        let sandbox = Sandbox::new();
        let hub = HubApi::start(HubUsers::standard());
        let service = Self::start(&sandbox, table, &hub.api_url());
        (sandbox, hub, service)
    }

    fn start(sandbox: &Sandbox, table: &str, hub_api: &str) -> Self {
        sandbox.native_site_config(&format!("local-sources = true\n[serve]\n{table}\n"));
        let port = free_port();
        let child = sandbox
            .command()
            .args(["serve", "--port", &port.to_string()])
            .env("JUPYTERHUB_API_URL", hub_api)
            .env("JUPYTERHUB_API_TOKEN", "service-secret")
            .env("JUPYTERHUB_SERVICE_PREFIX", "/services/binder/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let service = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::blocking::get(service.url("versions")).is_err() {
            assert!(Instant::now() < deadline, "serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/services/binder/{path}", self.port)
    }

    /// Stream `build/<spec>` as `token`; returns the status and the raw body.
    fn stream_raw(&self, spec: &str, token: &str) -> (u16, String) {
        let response = client()
            .get(self.url(&format!("build/{spec}")))
            .header("Accept", "text/event-stream")
            .header("Authorization", format!("token {token}"))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().unwrap())
    }

    fn stream(&self, spec: &str, token: &str) -> Vec<Value> {
        let (status, body) = self.stream_raw(spec, token);
        assert_eq!(status, 200, "{body}");
        events(&body)
    }

    fn metric(&self, name: &str) -> f64 {
        let text = reqwest::blocking::get(self.url("metrics"))
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    }
}

fn last(events: &[Value]) -> &Value {
    events.last().expect("at least one event")
}

#[test]
fn events_follow_binderhubs_framing_and_a_late_client_gets_the_whole_log() {
    let (sandbox, _hub, service) = Service::with_hub("");
    let spec = repo(&sandbox, "framing", "six==1.16.0\n", Some("sleep 3"));
    // The first client starts the build; the second joins while it runs.
    let first = {
        let url = service.url(&format!("build/{spec}?build_only=true"));
        std::thread::spawn(move || {
            let response = client()
                .get(url)
                .header("Accept", "text/event-stream")
                .header("Authorization", "token alice-token")
                .send()
                .unwrap();
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            response.text().unwrap()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while service.metric("hpcbinder_build_requests_total") < 1.0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let late = service.stream(&format!("{spec}?build_only=true"), "carol-token");
    let raw = first.join().unwrap();
    // BinderHub's framing: `data: <one JSON object>` then a blank line, or a comment.
    for block in raw.split_terminator("\n\n") {
        assert!(
            block.starts_with(':') || (block.starts_with("data: {") && !block.contains('\n')),
            "not BinderHub's framing: {block:?}"
        );
    }
    let early = events(&raw);
    // As BinderHub's JS fixture (fullbuild.eventsource) holds them: one `data:` line each.
    let phases = [
        "waiting",
        "fetching",
        "building",
        "pushing",
        "built",
        "launching",
        "ready",
        "failed",
        "unknown",
    ];
    for event in &early {
        assert!(
            phases.contains(&event["phase"].as_str().unwrap()),
            "{event}"
        );
        assert!(
            event["message"].as_str().unwrap().ends_with('\n'),
            "{event}"
        );
    }
    assert_eq!(early[0]["message"], "Waiting for build to start...\n");
    assert_eq!(
        early, late,
        "the late client gets the same events from the first"
    );
    let ready = last(&early);
    assert_eq!(ready["phase"], "ready", "{raw}");
    let commit = ready["ref"].as_str().unwrap();
    assert_eq!(commit.len(), 40);
    assert_eq!(ready["binder_request"], format!("v2/{spec}"));
    assert_eq!(
        ready["binder_persistent_request"],
        format!("v2/{}/{commit}", spec.trim_end_matches("/HEAD"))
    );
    assert!(Path::new(ready["prefix"].as_str().unwrap()).is_dir());
    // The stream ends at `ready`; the build is counted once its process has exited.
    let counted = Instant::now() + Duration::from_secs(30);
    while service.metric("hpcbinder_builds_total{outcome=\"ready\"}") < 1.0
        && Instant::now() < counted
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        service.metric("hpcbinder_builds_total{outcome=\"ready\"}"),
        1.0
    );
    // Built: the next request answers from the store at once.
    let again = service.stream(&format!("{spec}?build_only=true"), "alice-token");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["key"], ready["key"]);
    // The log is kept under the key, for users only.
    let key16 = &ready["key"].as_str().unwrap()[..16];
    let client = client();
    let log = client
        .get(service.url(&format!("logs/{key16}")))
        .header("Authorization", "token alice-token")
        .send()
        .unwrap();
    assert_eq!(log.status(), 200);
    assert!(log.text().unwrap().contains("Building a venv environment"));
    let anonymous = client
        .get(service.url(&format!("logs/{key16}")))
        .send()
        .unwrap();
    assert_eq!(anonymous.status(), 403);
    let bad = client
        .get(service.url("logs/..%2F..%2Fetc"))
        .header("Authorization", "token alice-token")
        .send()
        .unwrap();
    assert_eq!(bad.status(), 404);
}

#[test]
fn a_timeout_kills_exactly_that_build_and_a_crash_is_a_failed_event() {
    let (sandbox, _hub, service) = Service::with_hub("build-timeout = 60\nmax-builds = 3");
    let slow = repo(&sandbox, "slow", "six==1.16.0\n", Some("sleep 91.25"));
    let fast = repo(&sandbox, "fast", "six==1.16.0\n", None);
    let crash = repo(&sandbox, "crash", "six==1.16.0\n", Some("sleep 92.5"));
    let slow_client = spawn_stream(service.url(&format!("build/{slow}")), "alice-token");
    let crash_client = spawn_stream(service.url(&format!("build/{crash}")), "carol-token");
    // Kill the crashing build's process from outside once its postBuild runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = std::process::Command::new("pgrep")
            .args(["-f", "sleep 92.5"])
            .output()
            .unwrap();
        if found.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the crash build's postBuild never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let builder = std::process::Command::new("pgrep")
        .args(["-f", &format!("hpcbinder build --json .*{}", "crash")])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&builder.stdout).split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status();
    }
    let fast_events = service.stream(&fast, "alice-token");
    assert_eq!(last(&fast_events)["phase"], "ready", "{fast_events:?}");
    let crashed = events(&crash_client.join().unwrap());
    assert_eq!(last(&crashed)["phase"], "failed", "{crashed:?}");
    let slow_raw = slow_client.join().unwrap();
    // Quiet for 25 s: BinderHub's keepalive comment, exactly.
    assert!(slow_raw.contains("\n\n:keepalive\n\n"), "{slow_raw}");
    let slow_events = events(&slow_raw);
    let message = last(&slow_events)["message"].as_str().unwrap().to_string();
    assert_eq!(last(&slow_events)["phase"], "failed");
    assert!(
        message.contains("longer than the service's limit (60 s)"),
        "{message}"
    );
    std::thread::sleep(Duration::from_secs(1));
    for marker in ["sleep 91.25", "sleep 92.5"] {
        let left = std::process::Command::new("pgrep")
            .args(["-f", marker])
            .output()
            .unwrap();
        assert!(!left.status.success(), "{marker} still runs");
    }
    let health = reqwest::blocking::get(service.url("health")).unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        service.metric("hpcbinder_builds_total{outcome=\"timeout\"}"),
        1.0
    );
}

#[test]
fn the_queue_the_per_user_limit_and_the_failure_memo() {
    let (sandbox, _hub, service) =
        Service::with_hub("max-builds = 1\nmax-builds-per-user = 1\nfailed-build-retry = 4");
    let first = repo(&sandbox, "first", "six==1.16.0\n", Some("sleep 4"));
    let second = repo(&sandbox, "second", "six==1.16.0\n", None);
    let third = repo(&sandbox, "third", "six==1.16.0\n", None);
    let running = spawn_stream(service.url(&format!("build/{first}")), "alice-token");
    let deadline = Instant::now() + Duration::from_secs(60);
    while service.metric("hpcbinder_builds_running") < 1.0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    // alice has one build: her second is refused, as BinderHub refuses over quota.
    let refused = service.stream(&third, "alice-token");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["phase"], "failed");
    assert_eq!(refused[0]["status_code"], 429);
    // carol's waits for the one slot, and says so.
    let queued = service.stream(&second, "carol-token");
    assert!(
        queued
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("queued")),
        "{queued:?}"
    );
    assert_eq!(last(&queued)["phase"], "ready");
    assert_eq!(last(&events(&running.join().unwrap()))["phase"], "ready");

    // A failing build is reported again, not rebuilt, until failed-build-retry passes.
    let broken = repo(&sandbox, "broken", "no-such-package-hpcb==1.0\n", None);
    let failed = service.stream(&broken, "alice-token");
    assert_eq!(last(&failed)["phase"], "failed");
    let memo = service.stream(&broken, "carol-token");
    assert!(
        last(&memo)["message"]
            .as_str()
            .unwrap()
            .contains("tried again in"),
        "{memo:?}"
    );
    assert_eq!(
        service.metric("hpcbinder_builds_total{outcome=\"failed\"}"),
        1.0
    );
    std::thread::sleep(Duration::from_secs(5));
    let retried = service.stream(&broken, "alice-token");
    assert_eq!(last(&retried)["phase"], "failed");
    assert_eq!(
        service.metric("hpcbinder_builds_total{outcome=\"failed\"}"),
        2.0
    );
}

/// A cookie's value from a response's `Set-Cookie` headers.
fn set_cookie(response: &reqwest::blocking::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.strip_prefix(&format!("{name}="))?
                .split(';')
                .next()
                .map(str::to_string)
        })
}

#[test]
fn browsers_log_in_through_the_hub_and_build_only_with_the_pages_token() {
    let (sandbox, _hub, service) = Service::with_hub("");
    let spec = repo(&sandbox, "browser", "six==1.16.0\n", None);
    let client = client();
    let page = client
        .get(service.url(&format!("v2/{spec}")))
        .send()
        .unwrap();
    assert_eq!(page.status(), 302);
    let location = page.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("/hub/api/oauth2/authorize?client_id=service-binder"),
        "{location}"
    );
    let state = set_cookie(&page, "hpcbinder-oauth-state").unwrap();
    let cookie_line = page.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie_line.contains("HttpOnly") && cookie_line.contains("Path=/services/binder/"));
    assert!(location.contains(&format!("state={state}")));
    // A callback whose state is not this browser's is refused.
    let forged = client
        .get(service.url(&format!("oauth_callback?code=alice-code&state={state}")))
        .header("Cookie", "hpcbinder-oauth-state=someone-elses")
        .send()
        .unwrap();
    assert_eq!(forged.status(), 403);
    let (_, authorize) = location.split_once('?').unwrap();
    let back = client
        .get(service.url(&format!("oauth_callback?code=alice-code&state={state}")))
        .header("Cookie", format!("hpcbinder-oauth-state={state}"))
        .send();
    // The forged attempt consumed nothing: the state is still this browser's.
    let back = back.unwrap();
    assert_eq!(back.status(), 302, "{authorize}");
    assert_eq!(
        back.headers()["location"].to_str().unwrap(),
        format!("/services/binder/v2/{spec}")
    );
    let session = set_cookie(&back, "hpcbinder-session").unwrap();
    let cookie = format!("hpcbinder-session={session}");
    let page = client
        .get(service.url(&format!("v2/{spec}")))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    let token = common::sse::page_build_token(&html);
    let build = |path: &str, origin: Option<&str>| {
        let mut request = client
            .get(service.url(path))
            .header("Accept", "text/event-stream")
            .header("Cookie", &cookie);
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        let response = request.send().unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };
    // A cross-site page can make the browser send the cookie, but has no token.
    let (status, body) = build(&format!("build/{spec}"), Some("https://evil.example"));
    assert_eq!(status, 403, "{body}");
    let host = format!("http://127.0.0.1:{}", service.port);
    let other = repo(&sandbox, "other", "six==1.16.0\n", None);
    let (status, _) = build(&format!("build/{other}?build_token={token}"), Some(&host));
    assert_eq!(status, 403, "a token for one spec does not build another");
    let (status, _) = build(
        &format!("build/{spec}?build_token={token}"),
        Some("https://evil.example"),
    );
    assert_eq!(status, 403, "nor from another origin");
    let (status, body) = build(&format!("build/{spec}?build_token={token}"), Some(&host));
    assert_eq!(status, 200);
    assert_eq!(last(&events(&body))["phase"], "ready", "{body}");
    // bob is a Hub user without the service's scope.
    let (status, body) = service.stream_raw(&spec, "bob-token");
    assert_eq!(status, 403);
    assert!(body.contains("access:services!service=binder"), "{body}");
}

#[test]
fn sigterm_lets_the_running_build_finish_then_exits() {
    let (sandbox, _hub, mut service) = Service::with_hub("shutdown-grace = 120");
    let spec = repo(&sandbox, "term", "six==1.16.0\n", Some("sleep 5"));
    let client = spawn_stream(service.url(&format!("build/{spec}")), "alice-token");
    let deadline = Instant::now() + Duration::from_secs(60);
    while service.metric("hpcbinder_builds_running") < 1.0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // No new connections once stopping.
    assert!(reqwest::blocking::get(service.url("versions")).is_err());
    let body = client.join().unwrap();
    assert_eq!(last(&events(&body))["phase"], "ready", "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after its build"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn health_is_503_when_the_hub_does_not_answer() {
    let sandbox = Sandbox::new();
    let closed = format!("http://127.0.0.1:{}/hub/api", free_port());
    let service = Service::start(&sandbox, "", &closed);
    let health = reqwest::blocking::get(service.url("health")).unwrap();
    assert_eq!(health.status(), 503);
    let body: Value = serde_json::from_str(&health.text().unwrap()).unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(body["checks"][0]["service"], "JupyterHub API");
    assert_eq!(body["checks"][0]["ok"], false);
    let head = client().head(service.url("health")).send().unwrap();
    assert_eq!(head.status(), 503);
    // Without the Hub nobody can be identified: builds are refused, not run anonymously.
    let (status, body) = service.stream_raw("gh/org/repo/HEAD", "alice-token");
    assert_eq!(status, 503, "{body}");
}
