//! A real JupyterHub (PyPI, hashed: tests/hub.txt) with its real configurable-http-proxy
//! (npm, locked: tests/hub-proxy/), DummyAuthenticator, and `hpcbinder serve` as a
//! Hub-managed service named `binder`; all on loopback, installed by scripts/hub-deps,
//! stopped (with the proxy and the service) when the `Hub` is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sse::free_port;

/// How to configure the Hub.
#[derive(Default)]
pub struct HubOptions {
    /// Extra environment of the service (the Hub passes only these and its own).
    pub service_environment: Vec<(String, String)>,
    /// Users granted `access:services!service=binder`.
    pub allowed_users: Vec<String>,
    /// Users who exist without that scope.
    pub other_users: Vec<String>,
    /// Lines appended to jupyterhub_config.py (a spawner, its environment).
    pub extra_config: String,
}

/// A running Hub; dropping it stops the Hub, its proxy and its service.
pub struct Hub {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    admin_token: String,
}

/// `scripts/hub-deps`' directory (installs on first use).
pub fn hub_deps() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(super::install_script("hub-deps", "PyPI and npm")))
}

fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| serde_json::to_string(i).unwrap())
        .collect();
    format!("[{}]", quoted.join(", "))
}

impl Hub {
    pub fn start(options: HubOptions) -> Self {
        let deps = hub_deps();
        let dir = tempfile::tempdir().unwrap();
        let (port, hub_port, proxy_port, service_port) =
            (free_port(), free_port(), free_port(), free_port());
        let admin_token = uuid_like();
        let environment: serde_json::Map<String, serde_json::Value> = options
            .service_environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let mut users = options.allowed_users.clone();
        users.extend(options.other_users.iter().cloned());
        let config = format!(
            r#"c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.command = [{chp}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_port}"
c.ConfigurableHTTPProxy.pid_file = "{dir}/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.db_url = "sqlite:///{dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{dir}/cookie_secret"
c.JupyterHub.services = [
    {{
        "name": "binder",
        "url": "http://127.0.0.1:{service_port}",
        "command": [{exe}, "serve"],
        "environment": {environment},
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": ["access:services!service=binder"],
    }},
    {{"name": "test-admin", "api_token": "{admin_token}"}},
]
c.JupyterHub.load_roles = [
    {{"name": "binder-users", "scopes": ["access:services!service=binder"], "users": {allowed}}},
    {{"name": "test-admin", "scopes": ["admin:users", "tokens", "read:users"], "services": ["test-admin"]}},
    {{"name": "binder-service", "scopes": ["admin:servers", "access:servers", "read:users"], "services": ["binder"]}},
]
{extra}
"#,
            extra = options.extra_config,
            chp = serde_json::to_string(
                &deps.join("proxy/node_modules/.bin/configurable-http-proxy")
            )
            .unwrap(),
            dir = dir.path().display(),
            exe = serde_json::to_string(env!("CARGO_BIN_EXE_hpcbinder")).unwrap(),
            environment = serde_json::Value::Object(environment),
            allowed = python_list(&options.allowed_users),
        );
        std::fs::write(dir.path().join("jupyterhub_config.py"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("hub.log")).unwrap();
        let path = format!(
            "{}:{}",
            deps.join("venv/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(deps.join("venv/bin/jupyterhub"))
                .args(["-f", "jupyterhub_config.py"])
                .current_dir(dir.path())
                .env("PATH", path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("start jupyterhub")
        };
        let hub = Self {
            child,
            dir,
            port,
            admin_token,
        };
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let hub_up = client
                .get(hub.url("/hub/health"))
                .send()
                .is_ok_and(|r| r.status() == 200);
            let service_up = hub_up
                && client
                    .get(hub.url("/services/binder/health"))
                    .send()
                    .is_ok_and(|r| r.status() == 200);
            if service_up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Hub or its service did not come up:\n{}",
                hub.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for user in &users {
            let response = client
                .post(hub.url(&format!("/hub/api/users/{user}")))
                .header("Authorization", format!("token {}", hub.admin_token))
                .send()
                .unwrap();
            assert!(
                [201, 409].contains(&response.status().as_u16()),
                "create {user}: {}",
                response.text().unwrap_or_default()
            );
        }
        hub
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A new API token of `user`, made by the Hub.
    pub fn user_token(&self, user: &str) -> String {
        let response = reqwest::blocking::Client::new()
            .post(self.url(&format!("/hub/api/users/{user}/tokens")))
            .header("Authorization", format!("token {}", self.admin_token))
            .header("Content-Type", "application/json")
            .body(r#"{"note": "hpcbinder test"}"#)
            .send()
            .unwrap();
        let status = response.status();
        let body: serde_json::Value =
            serde_json::from_str(&response.text().unwrap()).unwrap_or_default();
        assert!(
            status.is_success(),
            "token for {user}: {status} {body}\n{}",
            self.log()
        );
        body["token"].as_str().unwrap().to_string()
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

fn uuid_like() -> String {
    use sha2::{Digest, Sha256};
    let seed = format!("{:?}{}", Instant::now(), std::process::id());
    hex::encode(Sha256::digest(seed.as_bytes()))
}
