//! Helpers shared by the launch service's tests and benchmark: repositories as `git/...`
//! provider specs, Server-Sent Events read as an EventSource reads them, Prometheus lines.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{GitRepo, Sandbox};

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Server-Sent Events as an EventSource reads them: blocks split by a blank line, `data:`
/// fields joined, `:` comments skipped.
pub fn events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|block| {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                .collect();
            (!data.is_empty()).then(|| serde_json::from_str(&data.join("\n")).unwrap())
        })
        .collect()
}

/// BinderHub's `git/<encodeURIComponent(file:// URL)>/HEAD` spec of a local repository.
pub fn spec_of(path: &Path) -> String {
    let url = format!("file://{}", path.display());
    let escaped: String = url
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("git/{escaped}/HEAD")
}

/// A git repository under the sandbox with requirements and an optional postBuild;
/// returns its spec.
pub fn repo(sandbox: &Sandbox, name: &str, requirements: &str, post_build: Option<&str>) -> String {
    let path = sandbox.path().join("repos").join(name);
    let git = GitRepo::init(&path);
    git.write("requirements.txt", requirements);
    if let Some(script) = post_build {
        git.write("postBuild", &format!("#!/bin/sh\n{script}\n"));
        std::fs::set_permissions(
            path.join("postBuild"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    git.commit("init");
    spec_of(&path)
}

/// A blocking client that does not follow redirects.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// Stream `url` in a thread as an API client with `token`; the thread returns the body.
pub fn spawn_stream(url: String, token: &str) -> std::thread::JoinHandle<String> {
    let token = token.to_string();
    std::thread::spawn(move || {
        client()
            .get(url)
            .header("Accept", "text/event-stream")
            .header("Authorization", format!("token {token}"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    })
}

/// The value of a Prometheus line starting with `name` in `/metrics` at `url`.
pub fn metric(url: &str, name: &str) -> f64 {
    let text = client().get(url).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// The build token a launch page carries for its event stream.
pub fn page_build_token(html: &str) -> String {
    html.split("\"buildToken\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a build token in the page")
        .to_string()
}
