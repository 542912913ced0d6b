//! `hpcbinder serve` inside a real JupyterHub, through the Hub's real proxy
//! (tests/common/hub.rs): Hub tokens and scopes, BinderHub's answers, one build for
//! concurrent clients, and a browser-style login through the Hub's OAuth.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::hub::{Hub, HubOptions};
use common::sse::{client, events, repo, spawn_stream};
use common::{GitRepo, Sandbox};
use serde_json::Value;

fn service_environment(sandbox: &Sandbox) -> Vec<(String, String)> {
    let p = |name: &str| sandbox.path().join(name).display().to_string();
    [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", p("home")),
        ("XDG_DATA_HOME", p("data")),
        ("XDG_CONFIG_HOME", p("config")),
        ("JUPYTER_DATA_DIR", p("jupyter")),
        ("HPCBINDER_SITE_CONFIG", p("site.toml")),
        ("HPCBINDER_STORE", sandbox.store().display().to_string()),
        ("NO_COLOR", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn start(sandbox: &Sandbox) -> Hub {
    sandbox.native_site_config(
        "local-sources = true\n[serve]\nbanned-specs = [\"^.*banned.*\"]\nshutdown-grace = 5\n",
    );
    Hub::start(HubOptions {
        service_environment: service_environment(sandbox),
        allowed_users: vec!["alice".into(), "carol".into()],
        other_users: vec!["bob".into()],
        extra_config: String::new(),
    })
}

/// `build/<spec>` through the Hub's proxy: status and body.
fn stream(hub: &Hub, spec: &str, token: Option<&str>, accept: bool) -> (u16, String) {
    let mut request = client().get(hub.url(&format!("/services/binder/build/{spec}")));
    if accept {
        request = request.header("Accept", "text/event-stream");
    }
    if let Some(token) = token {
        request = request.header("Authorization", format!("token {token}"));
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn ready_count(hub: &Hub) -> f64 {
    common::sse::metric(
        &hub.url("/services/binder/metrics"),
        "hpcbinder_builds_total{outcome=\"ready\"}",
    )
}

#[test]
fn api_clients_build_through_the_hubs_proxy_and_get_binderhubs_answers() {
    let sandbox = Sandbox::new();
    let hub = start(&sandbox);
    let alice = hub.user_token("alice");
    let carol = hub.user_token("carol");
    let bob = hub.user_token("bob");
    let spec = repo(&sandbox, "shared", "six==1.16.0\n", Some("sleep 2"));
    let head = GitRepo::init(&sandbox.path().join("repos/shared"))
        .repo
        .head()
        .unwrap()
        .peel_to_commit()
        .unwrap()
        .id()
        .to_string();

    // Two clients of one new spec at once: one build, both ready with the same key.
    let before = ready_count(&hub);
    let threads: Vec<_> = [alice.clone(), carol.clone()]
        .into_iter()
        .map(|token| {
            spawn_stream(
                hub.url(&format!("/services/binder/build/{spec}?build_only=true")),
                &token,
            )
        })
        .collect();
    let bodies: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let readies: Vec<Value> = bodies
        .iter()
        .map(|b| events(b).last().cloned().unwrap())
        .collect();
    for (ready, body) in readies.iter().zip(&bodies) {
        assert_eq!(ready["phase"], "ready", "{body}\n{}", hub.log());
        assert_eq!(ready["binder_request"], format!("v2/{spec}"));
        assert!(
            ready["binder_persistent_request"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{head}")),
            "{ready}"
        );
        assert!(std::path::Path::new(ready["prefix"].as_str().unwrap()).is_dir());
    }
    assert_eq!(readies[0]["key"], readies[1]["key"]);
    assert_eq!(ready_count(&hub) - before, 1.0, "exactly one build");

    // Who may ask.
    let (status, body) = stream(&hub, &spec, None, true);
    assert_eq!(status, 403, "no token: {body}");
    let (status, body) = stream(&hub, &spec, Some(&bob), true);
    assert_eq!(
        status, 403,
        "bob lacks access:services!service=binder: {body}"
    );
    let (status, body) = stream(&hub, &spec, Some("not-a-token"), true);
    assert_eq!(status, 403, "{body}");

    // BinderHub's answers.
    let (status, body) = stream(&hub, &spec, Some(&alice), false);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Missing Accept header: text/event-stream"),
        "{body}"
    );
    let failed = |spec: &str| {
        let (status, body) = stream(&hub, spec, Some(&alice), true);
        assert_eq!(status, 200, "{body}");
        let last = events(&body).last().cloned().unwrap();
        assert_eq!(last["phase"], "failed", "{body}");
        last["message"].as_str().unwrap().to_string()
    };
    assert!(failed("nope/a/b/HEAD").contains("No provider found for prefix nope"));
    assert!(failed("gh/only-one-part").contains("expected gh/<org>/<repo>/<ref>"));
    assert_eq!(
        failed("gh/org/banned-repo/HEAD"),
        "Sorry, org/banned-repo/HEAD is not allowed to launch. Please contact admins for more info!\n"
    );
    let broken = repo(&sandbox, "broken", "no-such-package-hpcb==1.0\n", None);
    assert!(failed(&broken).contains("no-such-package-hpcb"));
    let missing = spec.replace("/HEAD", "/no-such-branch");
    assert!(failed(&missing).contains("Could not resolve ref"));
}

fn form_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in:\n{html}"));
    let rest = &html[at..];
    let value = rest.split("value=\"").nth(1).unwrap();
    value.split('"').next().unwrap().to_string()
}

#[test]
fn a_browser_logs_in_through_the_hubs_oauth_and_builds_from_the_launch_page() {
    let sandbox = Sandbox::new();
    let hub = start(&sandbox);
    let spec = repo(&sandbox, "browser", "six==1.16.0\n", None);
    // A browser: cookies kept, redirects followed.
    let browser = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let launch = hub.url(&format!("/services/binder/v2/{spec}"));
    let login = browser.get(&launch).send().unwrap();
    let login_url = login.url().clone();
    assert_eq!(
        login_url.path(),
        "/hub/login",
        "the service sends the browser to the Hub"
    );
    let html = login.text().unwrap();
    let xsrf = form_value(&html, "_xsrf");
    let form = format!("username=alice&password=anything&_xsrf={xsrf}");
    let page = browser
        .post(login_url.as_str())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200, "{}", hub.log());
    assert_eq!(
        page.url().as_str(),
        launch,
        "back on the launch page after the OAuth dance"
    );
    let html = page.text().unwrap();
    assert!(html.contains("Signed in as alice"), "{html}");
    assert!(html.contains(&spec), "{html}");
    let token = common::sse::page_build_token(&html);
    // The page's EventSource: the session cookie and the page's build token.
    let build = |query: &str| {
        let response = browser
            .get(hub.url(&format!("/services/binder/build/{spec}{query}")))
            .header("Accept", "text/event-stream")
            .send()
            .unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };
    let (status, body) = build("");
    assert_eq!(status, 403, "the cookie alone starts no build: {body}");
    let (status, body) = build(&format!("?build_token={token}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(events(&body).last().unwrap()["phase"], "ready", "{body}");
}

/// A Hub whose service launches (`launch = "kernel"`, nbgitpuller) into servers that
/// see the store's kernels.
fn start_launching(sandbox: &Sandbox) -> Hub {
    sandbox.native_site_config(
        "local-sources = true\n[serve]\nlaunch = \"kernel\"\ncontent = \"nbgitpuller\"\nshutdown-grace = 5\n",
    );
    // The users' servers look in the store for kernels, as a site's spawner environment
    // does (`hpcbinder jupyter-path`).
    Hub::start(HubOptions {
        service_environment: service_environment(sandbox),
        allowed_users: vec!["alice".into()],
        other_users: Vec::new(),
        extra_config: format!(
            "c.JupyterHub.spawner_class = \"simple\"\nc.Spawner.args = [\"--allow-root\"]\nc.Spawner.environment = {{\"JUPYTER_PATH\": \"{}\"}}\nc.Spawner.start_timeout = 120\nc.SimpleLocalProcessSpawner.home_dir_template = \"{}/homes/{{username}}\"\n",
            sandbox.store().display(),
            sandbox.path().display(),
        ),
    })
}

/// A repository with a requirement and a file to open, as a `git/...` spec.
fn launched_repo(sandbox: &Sandbox, post_build: Option<&str>) -> String {
    let spec = repo(sandbox, "launched", "six==1.16.0\n", post_build);
    let git = GitRepo::init(&sandbox.path().join("repos/launched"));
    git.write("notebooks/hello.txt", "hello from the repository\n");
    git.commit("content");
    spec
}

#[test]
fn kernel_mode_starts_the_users_server_with_the_environments_kernel() {
    let sandbox = Sandbox::new();
    let hub = start_launching(&sandbox);
    let alice = hub.user_token("alice");
    let spec = launched_repo(&sandbox, None);
    let (status, body) = stream(
        &hub,
        &format!("{spec}?urlpath=tree/notebooks/hello.txt"),
        Some(&alice),
        true,
    );
    assert_eq!(status, 200, "{body}");
    let all = events(&body);
    let ready = all.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{body}\n{}", hub.log());
    assert!(all.iter().any(|e| e["phase"] == "built"), "{body}");
    assert!(all.iter().any(|e| e["phase"] == "launching"), "{body}");
    let url = ready["url"].as_str().unwrap().to_string();
    assert!(url.ends_with("/user/alice/"), "{url}");
    // The environment's kernel is in the shared kernels directory, and alice's server,
    // started by the service through the Hub, lists it and starts it.
    let kernel = ready["kernel"].as_str().unwrap();
    assert!(sandbox
        .store()
        .join("kernels")
        .join(kernel)
        .join("kernel.json")
        .is_file());
    let api = |path: &str| format!("{url}api/{path}");
    let specs: Value = serde_json::from_str(
        &client()
            .get(api("kernelspecs"))
            .header("Authorization", format!("token {alice}"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    assert!(specs["kernelspecs"].get(kernel).is_some(), "{specs}");
    let started: Value = serde_json::from_str(
        &client()
            .post(api("kernels"))
            .header("Authorization", format!("token {alice}"))
            .header("Content-Type", "application/json")
            .body(serde_json::json!({"name": kernel}).to_string())
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    let id = started["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"));
    // The kernel process runs the environment's Python with the server's connection file
    // (the REST state stays "starting" until a client connects its websocket).
    let prefix = ready["prefix"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = std::process::Command::new("pgrep")
            .args(["-af", &format!("kernel-{id}.json")])
            .output()
            .unwrap();
        let lines = String::from_utf8_lossy(&found.stdout).to_string();
        if lines.lines().any(|l| l.contains(prefix)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel process from {prefix} for kernel {id}: {lines}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The launch goes through nbgitpuller's git-pull URL, into a folder named after the
    // repository, then opens the requested path inside it. Its API (what the git-pull
    // page's script calls) pulls the repository into alice's home.
    let launch_url = ready["launch_url"].as_str().unwrap();
    assert!(
        launch_url.starts_with(&format!("{url}git-pull?repo=file"))
            && launch_url.contains("targetpath=repos-launched")
            && launch_url.contains("urlpath=tree%2Frepos-launched%2Fnotebooks%2Fhello.txt"),
        "{launch_url}"
    );
    let pulled = client()
        .get(launch_url.replacen("git-pull?", "git-pull/api?", 1))
        .header("Accept", "text/event-stream")
        .header("Authorization", format!("token {alice}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(pulled.contains("\"finished\""), "{pulled}");
    let file = sandbox
        .path()
        .join("homes/alice/repos-launched/notebooks/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}\n{pulled}", file.display())),
        "hello from the repository\n"
    );
    // A second launch finds the server running.
    let (_, again) = stream(&hub, &spec, Some(&alice), true);
    assert!(again.contains("already running"), "{again}");
    assert_eq!(events(&again).last().unwrap()["url"], url);
}

#[test]
fn a_browser_follows_a_launch_link_into_the_pulled_repository() {
    let sandbox = Sandbox::new();
    let hub = start_launching(&sandbox);
    let spec = launched_repo(&sandbox, Some("sleep 4"));
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let browser = Browser::start();
    browser.goto(&hub.url(&format!(
        "/services/binder/v2/{spec}?urlpath=files/notebooks/hello.txt"
    )));
    // The Hub's login page (through the service's OAuth redirect).
    browser.wait_for("the Hub's login form", 60, |b| {
        b.find("input[name=username]").is_some()
    });
    let username = browser.find("input[name=username]").unwrap();
    browser.type_into(&username, "alice");
    let password = browser.find("input[name=password]").unwrap();
    browser.type_into(&password, "anything");
    browser.click(&browser.find("#login_submit").unwrap());
    // The launch page streams the build log with its phases.
    browser.wait_for("build log lines on the launch page", 120, |b| {
        b.url().contains("/services/binder/v2/") && b.text("#log").contains("Building a venv")
    });
    browser.screenshot(&shots.join("launch-page.png"));
    assert!(
        browser.text("h1").contains("Launching"),
        "{}",
        browser.text("body")
    );
    // Then it goes through nbgitpuller into alice's server, at the requested file.
    browser.wait_for("the launched server", 180, |b| {
        b.url()
            .contains("/user/alice/files/repos-launched/notebooks/hello.txt")
    });
    browser.wait_for("the repository's file", 30, |b| {
        b.text("body").contains("hello from the repository")
    });
    browser.screenshot(&shots.join("launched.png"));
}
