//! A loopback stand-in for the three JupyterHub REST endpoints the launch service calls
//! (`GET /hub/api/`, `GET /hub/api/user`, `POST /hub/api/oauth2/token`), answering with
//! JupyterHub's JSON shapes. For tests of the service's own behaviour (timeouts, queue,
//! shutdown, build tokens) that need a Hub only to say who a token belongs to; the tests
//! of the service inside a real JupyterHub are in tests/serve_hub.rs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

/// Tokens the stand-in knows: token → (user, scopes). OAuth codes: code → token.
#[derive(Clone, Default)]
pub struct HubUsers {
    pub tokens: HashMap<String, (String, Vec<String>)>,
    pub codes: HashMap<String, String>,
}

impl HubUsers {
    /// `alice-token` (alice, with access to the `binder` service), `bob-token` (bob,
    /// without), and the OAuth code `alice-code` that gives alice's token.
    pub fn standard() -> Self {
        let mut users = Self::default();
        users.tokens.insert(
            "alice-token".into(),
            (
                "alice".into(),
                vec!["access:services!service=binder".into()],
            ),
        );
        users.tokens.insert(
            "carol-token".into(),
            (
                "carol".into(),
                vec!["access:services!service=binder".into()],
            ),
        );
        users
            .tokens
            .insert("bob-token".into(), ("bob".into(), vec!["self".into()]));
        users
            .codes
            .insert("alice-code".into(), "alice-token".into());
        users
    }
}

/// The running stand-in; its port closes with the process.
pub struct HubApi {
    pub port: u16,
}

impl HubApi {
    pub fn start(users: HubUsers) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let users = Arc::new(users);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let users = users.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).is_err() {
                        return;
                    }
                    let mut headers = HashMap::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.trim_end().split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let length: usize = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let mut parts = request_line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let (status, json) = answer(&users, method, path, &headers, &body);
                    let mut stream = stream;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                        json.len()
                    );
                });
            }
        });
        Self { port }
    }

    /// `JUPYTERHUB_API_URL` for the service.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/hub/api", self.port)
    }
}

fn answer(
    users: &HubUsers,
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> (u16, String) {
    let user_json = |token: &str| {
        users.tokens.get(token).map(|(name, scopes)| {
            serde_json::json!({"kind": "user", "name": name, "admin": false, "groups": [], "scopes": scopes})
                .to_string()
        })
    };
    match (method, path) {
        ("GET", "/hub/api/" | "/hub/api") => (200, r#"{"version": "5.4.0"}"#.into()),
        ("GET", "/hub/api/user") => {
            let token = headers
                .get("authorization")
                .and_then(|a| a.strip_prefix("token "))
                .unwrap_or("");
            match user_json(token) {
                Some(json) => (200, json),
                None => (403, r#"{"status": 403, "message": "Forbidden"}"#.into()),
            }
        }
        ("POST", "/hub/api/oauth2/token") => {
            let form: HashMap<String, String> = url_form(body);
            match form.get("code").and_then(|c| users.codes.get(c)) {
                Some(token)
                    if form.get("grant_type").map(String::as_str) == Some("authorization_code") =>
                {
                    (
                        200,
                        serde_json::json!({"access_token": token, "token_type": "Bearer"})
                            .to_string(),
                    )
                }
                _ => (400, r#"{"error": "invalid_grant"}"#.into()),
            }
        }
        _ => (404, r#"{"status": 404}"#.into()),
    }
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Some((decode(k), decode(v)))
        })
        .collect()
}
