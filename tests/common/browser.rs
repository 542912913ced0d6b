//! A real browser for the launch service's tests: Debian's headless Chromium driven by
//! its ChromeDriver over the W3C WebDriver protocol (plain HTTP and JSON), installed by
//! scripts/browser-deps. Screenshots go where the test asks (test artifacts).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::sse::free_port;

/// One browser session; dropping it ends the session and the driver.
pub struct Browser {
    driver: Child,
    base: String,
    client: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

/// Install Chromium and ChromeDriver once (scripts/browser-deps).
fn install() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        super::install_script("browser-deps", "Debian's packages");
    });
}

impl Browser {
    pub fn start() -> Self {
        install();
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{root}/status")).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The flags this machine's closed network needs (no background connections).
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let session: Value = serde_json::from_str(
            &client
                .post(format!("{root}/session"))
                .json_body(&json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
                }}}))
                .send()
                .unwrap()
                .text()
                .unwrap(),
        )
        .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_string();
        Self {
            driver,
            base: format!("{root}/session/{id}"),
            client,
            _profile: profile,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json_body(&body);
        }
        let text = request.send().unwrap().text().unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        value["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})));
    }

    pub fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Option<String> {
        let found = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    pub fn type_into(&self, element: &str, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        );
    }

    pub fn click(&self, element: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Press keys together, as a user would (WebDriver key actions): e.g. Shift (`\u{E008}`)
    /// with Enter (`\u{E007}`), into whatever has the focus.
    pub fn chord(&self, keys: &[&str]) {
        let mut actions: Vec<Value> = keys
            .iter()
            .map(|k| json!({"type": "keyDown", "value": k}))
            .collect();
        actions.extend(
            keys.iter()
                .rev()
                .map(|k| json!({"type": "keyUp", "value": k})),
        );
        self.call(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    /// The visible text of the first element matching `css` ("" when there is none).
    pub fn text(&self, css: &str) -> String {
        self.find(css)
            .map(|e| {
                self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    }

    /// Wait up to `seconds` for `ready`; panics with `what` and the page's URL.
    pub fn wait_for(&self, what: &str, seconds: u64, ready: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !ready(self) {
            assert!(
                Instant::now() < deadline,
                "waited {seconds} s for {what}; the browser is at {}: {}",
                self.url(),
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Save a PNG screenshot of the page.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let data = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.client.delete(&self.base).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A JSON body on a blocking request (the crate's reqwest has no `json` feature).
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::blocking::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(body.to_string())
    }
}
