//! `hpcbinder serve` inside a real JupyterHub, through the Hub's real proxy
//! (tests/common/hub.rs): Hub tokens and scopes, BinderHub's answers, one build for
//! concurrent clients, and a browser-style login through the Hub's OAuth.

mod common;

use std::time::Duration;

use common::hub::{Hub, HubOptions};
use common::launch::{
    open_notebook_launch_link, run_first_cell, service_environment, trust_repositories,
    wait_for_named_server_lab, write_package_and_notebook,
};
use common::sse::{client, events, repo, spawn_stream};
use common::users::{processes_of, users, ALICE, CAROL};
use common::{GitRepo, Sandbox};
use serde_json::Value;

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

/// Ready builds counted since `before`, once at least one is: the service counts a build
/// when its process has exited, which can be just after the streams' ready events.
fn builds_since(hub: &Hub, before: f64) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ready_count(hub) - before < 1.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    ready_count(hub) - before
}

#[test]
fn api_clients_build_through_the_hubs_proxy_and_get_binderhubs_answers() {
    let sandbox = Sandbox::new();
    let hub = start(&sandbox);
    let alice = hub.user_token("alice");
    let carol = hub.user_token("carol");
    let bob = hub.user_token("bob");
    let spec = repo(&sandbox, "shared", "six==1.16.0\n", Some("sleep 2"));
    let head = head_of(&sandbox, "shared");

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
    assert_eq!(builds_since(&hub, before), 1.0, "exactly one build");

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

/// A Hub whose service launches (`launch = "kernel"`, nbgitpuller) into the servers of
/// real users (useradd: hpcb-alice, hpcb-carol) started by LocalProcessSpawner as
/// themselves, from the world-readable venv of scripts/hub-deps, with the store's kernels
/// on their `JUPYTER_PATH`. Returns the Hub and the content folder (new per run: the
/// users' homes outlive the test).
fn start_launching(sandbox: &Sandbox) -> (Hub, String) {
    start_launching_in(sandbox, Mode::Kernel)
}

/// The launch mode under test.
#[derive(PartialEq)]
enum Mode {
    Kernel,
    /// `launch = "kernel"` without `content`.
    KernelOnly,
    Server,
    /// Server mode with Charliecloud images (`ch-run`).
    ServerImage,
}

fn start_launching_in(sandbox: &Sandbox, mode: Mode) -> (Hub, String) {
    use std::os::unix::fs::PermissionsExt;
    users();
    // The users reach the store and the repositories through the sandbox.
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let deps = common::test_deps();
    let folder = format!(
        "launched-{}",
        &sandbox.path().file_name().unwrap().to_string_lossy()[4..]
    );
    let folder = folder
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "x");
    // The environments' Python is Debian's, which the users can run (root's is private);
    // server mode's jupyterhub and JupyterLab come from scripts/hub-deps' wheels.
    let hub_deps = common::hub::hub_deps();
    let serve = match mode {
        Mode::Kernel => format!(
            "launch = \"kernel\"\ncontent = \"nbgitpuller\"\ncontent-folder = \"{folder}\"\n"
        ),
        Mode::KernelOnly => "launch = \"kernel\"\n".to_string(),
        Mode::Server | Mode::ServerImage => {
            "launch = \"server\"\nnamed-server-limit = 1\n".to_string()
        }
    };
    let image = if mode == Mode::ServerImage {
        format!(
            "target = \"charliecloud\"\nbase-image = \"{}\"\npodman-isolation = \"chroot\"\n\
             containers-conf = \"{}\"\n",
            common::base_image(),
            common::CONTAINERS_CONF
        )
    } else {
        String::new()
    };
    std::fs::write(
        sandbox.path().join("site.toml"),
        format!(
            "python = \"/usr/bin/python3\"\nuv = \"{}\"\npip-find-links = [\"{}\", \"{}\"]\n\
             pip-no-index = true\nkernel-package = \"pip\"\nlocal-sources = true\n{image}[serve]\n\
             {serve}shutdown-grace = 5\n",
            deps.uv.display(),
            deps.wheelhouse.display(),
            hub_deps.join("wheels").display(),
        ),
    )
    .unwrap();
    let venv = hub_deps.join("venv/bin");
    // Server mode: the spawner snippet shipped in contrib/, pointed at the test's store.
    let snippet = if matches!(mode, Mode::Server | Mode::ServerImage) {
        format!(
            "c.JupyterHub.allow_named_servers = True\n\
             exec(open(\"{}\").read())\nHPCBINDER_STORE = \"{store}\"\n\
             HPCBINDER_KERNELS = \"{store}/kernels\"\nHPCBINDER_FOLDER = \"{folder}\"\n",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("contrib/jupyterhub_config.py")
                .display(),
            store = sandbox.store().display(),
        )
    } else {
        String::new()
    };
    for user in [ALICE, CAROL] {
        trust_repositories(user);
    }
    let hub = Hub::start(HubOptions {
        service_environment: service_environment(sandbox),
        allowed_users: vec![ALICE.into(), CAROL.into()],
        other_users: Vec::new(),
        extra_config: format!(
            "c.JupyterHub.spawner_class = \"localprocess\"\n\
             c.Spawner.cmd = [\"{}\"]\n\
             c.Spawner.environment = {{\"JUPYTER_PATH\": \"{}\", \"PATH\": \"{}:/usr/bin:/bin\"}}\n\
             c.Spawner.start_timeout = 180\nc.Spawner.http_timeout = 180\n{snippet}",
            venv.join("jupyterhub-singleuser").display(),
            sandbox.store().display(),
            venv.display(),
        ),
    });
    (hub, folder)
}

/// A repository whose requirements include a package only it has (`./localpkg`), a
/// notebook naming the default `python3` kernel, and a text file; as a `git/...` spec.
fn launched_repo(sandbox: &Sandbox, post_build: Option<&str>) -> String {
    let spec = repo(sandbox, "launched", "six==1.16.0\n./localpkg\n", post_build);
    let git = GitRepo::init(&sandbox.path().join("repos/launched"));
    git.write("notebooks/hello.txt", "hello from the repository\n");
    write_package_and_notebook(
        &git,
        &[
            "import localpkg, sys\n",
            "print(localpkg.VALUE, sys.prefix)",
        ],
    );
    git.commit("content");
    spec
}

/// The commit a test repository's HEAD points at.
fn head_of(sandbox: &Sandbox, name: &str) -> String {
    GitRepo::init(&sandbox.path().join("repos").join(name))
        .repo
        .head()
        .unwrap()
        .peel_to_commit()
        .unwrap()
        .id()
        .to_string()
}

#[test]
fn two_users_launching_one_link_get_one_build_and_their_own_servers_with_the_kernel() {
    let sandbox = Sandbox::new();
    let (hub, folder) = start_launching(&sandbox);
    let spec = launched_repo(&sandbox, None);
    let before = ready_count(&hub);
    let tokens: Vec<(String, String)> = [ALICE, CAROL]
        .iter()
        .map(|u| (u.to_string(), hub.user_token(u)))
        .collect();
    let threads: Vec<_> = tokens
        .iter()
        .map(|(_, token)| {
            spawn_stream(
                hub.url(&format!(
                    "/services/binder/build/{spec}?urlpath=lab/tree/notebooks/index.ipynb"
                )),
                token,
            )
        })
        .collect();
    let bodies: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(builds_since(&hub, before), 1.0, "one build for both");
    let mut keys = Vec::new();
    for ((user, token), body) in tokens.iter().zip(&bodies) {
        let all = events(body);
        let ready = all.last().unwrap();
        assert_eq!(ready["phase"], "ready", "{user}: {body}\n{}", hub.log());
        keys.push(ready["key"].clone());
        assert!(all.iter().any(|e| e["phase"] == "launching"), "{body}");
        let url = ready["url"].as_str().unwrap().to_string();
        assert!(url.ends_with(&format!("/user/{user}/")), "{url}");
        // The browser opens the notebook inside the pulled folder directly: the service
        // pulled through the server's nbgitpuller and repointed the notebook.
        assert_eq!(
            ready["launch_url"],
            format!("{url}lab/tree/{folder}/notebooks/index.ipynb"),
            "{body}"
        );
        assert!(body.contains("now use the kernel"), "{body}");
        // The server runs as the user.
        assert!(
            !processes_of(user, "jupyterhub-singleuser").is_empty(),
            "no jupyterhub-singleuser of {user}"
        );
        // The files are the user's, and the notebook names the environment's kernel.
        let home = std::path::PathBuf::from(format!("/home/{user}/{folder}"));
        let text = std::fs::read_to_string(home.join("notebooks/hello.txt")).unwrap();
        assert_eq!(text, "hello from the repository\n");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(home.join("notebooks/index.ipynb"))
                .unwrap()
                .uid(),
            common::users::uid(user)
        );
        let notebook: Value = serde_json::from_str(
            &std::fs::read_to_string(home.join("notebooks/index.ipynb")).unwrap(),
        )
        .unwrap();
        let kernel = ready["kernel"].as_str().unwrap();
        assert_eq!(
            notebook["metadata"]["kernelspec"]["name"], kernel,
            "{notebook}"
        );
        // The user's server lists the kernel and starts it as the user, from the
        // environment.
        let api = |path: &str| format!("{url}api/{path}");
        let specs: Value = client()
            .get(api("kernelspecs"))
            .header("Authorization", format!("token {token}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert!(specs["kernelspecs"].get(kernel).is_some(), "{specs}");
        let started: Value = client()
            .post(api("kernels"))
            .header("Authorization", format!("token {token}"))
            .json(&serde_json::json!({"name": kernel}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let id = started["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{started}"));
        let prefix = ready["prefix"].as_str().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !processes_of(user, &format!("kernel-{id}.json"))
            .iter()
            .any(|l| l.contains(prefix))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no kernel process of {user} from {prefix}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert_eq!(keys[0], keys[1]);
    // A second launch finds the server running.
    let (_, again) = stream(&hub, &spec, Some(&tokens[0].1), true);
    assert!(again.contains("already running"), "{again}");
    for user in [ALICE, CAROL] {
        let _ = std::fs::remove_dir_all(format!("/home/{user}/{folder}"));
    }
}

#[test]
fn a_browser_follows_a_launch_link_into_jupyterlab_and_runs_the_notebook_in_the_environment() {
    let sandbox = Sandbox::new();
    let (hub, folder) = start_launching(&sandbox);
    let spec = launched_repo(&sandbox, Some("sleep 4"));
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let browser = open_notebook_launch_link(&hub, &spec, ALICE);
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
    // Then JupyterLab, in alice's server, with the pulled notebook open on the
    // environment's kernel.
    let notebook = format!("/user/{ALICE}/lab/tree/{folder}/notebooks/index.ipynb");
    browser.wait_for("JupyterLab with the notebook", 240, |b| {
        b.url().contains(&notebook) && b.find(".jp-Notebook .jp-Cell .cm-content").is_some()
    });
    browser.wait_for("the environment's kernel, idle", 120, |b| {
        b.text(".jp-Toolbar-kernelName").contains("launched")
            && b.find(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                .is_some()
    });
    run_first_cell(&browser, "only-in-the-repository");
    let output = browser.text(".jp-OutputArea-output");
    assert!(
        output.contains(&sandbox.store().display().to_string()),
        "the kernel runs the environment's Python: {output}"
    );
    browser.screenshot(&shots.join("launched-lab.png"));

    // A failure on the launch page: the error and its hint, and no redirect.
    let broken = repo(&sandbox, "broken", "no-such-package-hpcb==1.0\n", None);
    browser.goto(&hub.url(&format!("/services/binder/v2/{broken}")));
    browser.wait_for("the failure on the launch page", 120, |b| {
        b.text("#phase") == "failed"
    });
    let error = browser.text("#error");
    assert!(
        error.contains("no-such-package-hpcb") && error.contains("hint:"),
        "{error}"
    );
    assert!(browser.url().contains("/services/binder/v2/"));
    browser.screenshot(&shots.join("launch-failed.png"));
    let _ = std::fs::remove_dir_all(format!("/home/{ALICE}/{folder}"));
}

#[test]
fn server_mode_a_browser_lands_in_a_named_server_running_inside_the_environment() {
    server_mode_in_a_browser(Mode::Server, "server-mode-lab.png");
}

#[test]
fn server_mode_a_browser_lands_in_a_named_server_running_inside_a_charliecloud_image() {
    server_mode_in_a_browser(Mode::ServerImage, "server-mode-charliecloud-lab.png");
}

/// Server mode end to end in a browser: a named server inside the environment (native,
/// or a Charliecloud image under ch-run), in a checkout of the commit.
fn server_mode_in_a_browser(mode: Mode, screenshot: &str) {
    let image = mode == Mode::ServerImage;
    let sandbox = Sandbox::new();
    let (hub, folder) = start_launching_in(&sandbox, mode);
    let spec = launched_repo(&sandbox, None);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let browser = open_notebook_launch_link(&hub, &spec, ALICE);
    // A named server (BinderHub's name: the repository's path and 8 random characters)
    // whose JupyterLab opens the notebook from the repository's checkout.
    let url = wait_for_named_server_lab(&browser, ALICE, 300);
    let prefix = format!("/user/{ALICE}/");
    let server = url
        .split(&prefix)
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    // file:///tmp/.tmpXXXXXX/repos/launched -> tmp-tmpxxxxxx-repos-launched-<8>
    let (name, suffix) = server.rsplit_once('-').unwrap();
    assert!(
        name.ends_with("-repos-launched") && suffix.len() == 8,
        "{server}"
    );
    // The notebook's own `python3` kernel is the environment's Python.
    browser.wait_for("the python3 kernel, idle", 120, |b| {
        b.find(".jp-Notebook-ExecutionIndicator[data-status='idle']")
            .is_some()
    });
    run_first_cell(&browser, "only-in-the-repository");
    let output = browser.text(".jp-OutputArea-output");
    let store = sandbox.store().display().to_string();
    let inside = if image { "/opt/env" } else { store.as_str() };
    assert!(output.contains(inside), "{output}");
    browser.screenshot(&shots.join(screenshot));
    // The server itself runs as alice from the environment, in the checkout of the commit.
    let environment = output.split_whitespace().last().unwrap().to_string();
    let servers = processes_of(ALICE, &format!("{environment}/bin/jupyterhub-singleuser"));
    assert_eq!(servers.len(), 1, "{servers:?}");
    let pid = servers[0].split_whitespace().next().unwrap();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    let checkout = std::path::PathBuf::from(format!("/home/{ALICE}/{folder}/{server}"));
    assert_eq!(cwd, checkout);
    let head = std::process::Command::new("git")
        .args(["-c", "safe.directory=*", "-C"])
        .arg(&checkout)
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    let built = head_of(&sandbox, "launched");
    assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), built);
    // BinderHub's named_server_limit_per_user: a second launch is refused, saying why.
    let token = hub.user_token(ALICE);
    let (_, body) = stream(&hub, &spec, Some(&token), true);
    let last = events(&body).last().cloned().unwrap();
    assert_eq!(last["phase"], "failed", "{body}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("already has the maximum of 1 named servers"),
        "{body}"
    );
    let _ = std::fs::remove_dir_all(format!("/home/{ALICE}/{folder}"));
}

#[test]
fn kernel_mode_without_content_says_where_the_repository_is() {
    let sandbox = Sandbox::new();
    let (hub, _) = start_launching_in(&sandbox, Mode::KernelOnly);
    let spec = launched_repo(&sandbox, None);
    let token = hub.user_token(CAROL);
    let (status, body) = stream(&hub, &format!("{spec}?urlpath=lab"), Some(&token), true);
    assert_eq!(status, 200, "{body}");
    let all = events(&body);
    let ready = all.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{body}\n{}", hub.log());
    let url = ready["url"].as_str().unwrap();
    assert_eq!(ready["launch_url"], format!("{url}lab"));
    let commit = ready["ref"].as_str().unwrap();
    let said = all
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.contains("does not copy the repository"))
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        said.contains("repos/launched")
            && said.contains(commit)
            && said.contains(&format!("choose the kernel \"{}", "repos-launched")),
        "{said}"
    );
}
