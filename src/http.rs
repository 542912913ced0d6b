//! hpcbinder's own HTTP requests (the uv bootstrap, `doctor`'s reachability checks):
//! reqwest with rustls, the site's CA bundle (sites behind TLS-intercepting proxies), the
//! usual proxy variables, and timeouts.
//!
//! Callers are blocking code; each request runs through [`crate::blocking::block_on`].

use std::time::Duration;

use crate::settings::Settings;

/// A request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer (DNS, connection, TLS, timeout).
    #[error("{url} could not be reached: {message}")]
    Unreachable {
        /// The URL, credentials redacted.
        url: String,
        /// reqwest's error chain.
        message: String,
    },
    /// An answer other than 2xx.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL, credentials redacted.
        url: String,
        /// The status code.
        status: u16,
    },
}

impl HttpError {
    /// Worth trying again: no answer, or the server said so (5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
        }
    }
}

/// Tries for a request that fails transiently, with backoff (0.5 s, 1 s, 2 s between).
const ATTEMPTS: u32 = 4;

/// Run `attempt` until it succeeds, fails for good, or has been tried [`ATTEMPTS`] times.
pub fn retry<T, E>(
    mut attempt: impl FnMut() -> Result<T, E>,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let mut delay = Duration::from_millis(500);
    let mut tries = 1;
    loop {
        match attempt() {
            Err(e) if tries < ATTEMPTS && transient(&e) => {
                std::thread::sleep(delay);
                delay *= 2;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Response {
    /// The URL after redirects.
    pub url: url::Url,
    /// `Content-Type`, when given.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// GET `url` (with `accept` as the `Accept` header), following redirects, within `timeout`.
pub fn get(
    settings: &Settings,
    url: &str,
    accept: Option<&str>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    send(settings, reqwest::Method::GET, url, accept, timeout, None)
}

/// HEAD `url`: whether it answers 2xx within `timeout` (the body is not fetched).
pub fn head(settings: &Settings, url: &str, timeout: Duration) -> Result<(), HttpError> {
    send(settings, reqwest::Method::HEAD, url, None, timeout, None).map(|_| ())
}

/// GET `url` and hand its body to `sink` chunk by chunk as it arrives (never all in
/// memory); `timeout` bounds each read, not the whole transfer. The bytes received.
pub fn download(
    settings: &Settings,
    url: &str,
    timeout: Duration,
    sink: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
) -> Result<u64, HttpError> {
    let redacted = crate::source::redact(url);
    let unreachable = |message: String| HttpError::Unreachable {
        url: redacted.clone(),
        message,
    };
    let client = client(settings, None, timeout).map_err(unreachable)?;
    let url = url.to_string();
    let work = async move {
        let mut response = client.get(&url).send().await.map_err(|e| chain(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Ok(Err(status.as_u16()));
        }
        let mut bytes = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| chain(&e))? {
            sink(&chunk).map_err(|e| format!("cannot write what it sent: {e}"))?;
            bytes += chunk.len() as u64;
        }
        Ok::<_, String>(Ok(bytes))
    };
    let outcome = crate::blocking::block_on(work)
        .map_err(|e| e.to_string())
        .and_then(|result| result);
    match outcome.map_err(unreachable)? {
        Ok(bytes) => Ok(bytes),
        Err(status) => Err(HttpError::Status {
            url: redacted,
            status,
        }),
    }
}

/// A client with the site's CA bundle; `total` bounds whole requests, `read` each read.
fn client(
    settings: &Settings,
    total: Option<Duration>,
    read: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .read_timeout(read)
        .connect_timeout(read.min(Duration::from_secs(10)))
        .user_agent(concat!("hpcbinder/", env!("CARGO_PKG_VERSION")));
    if let Some(total) = total {
        builder = builder.timeout(total);
    }
    if let Some(bundle) = settings.ca_bundle() {
        let pem = fs_err::read(&bundle).map_err(|e| e.to_string())?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("the CA bundle {}: {e}", bundle.display()))?;
        builder = builder.tls_certs_only(certificates);
    }
    builder.build().map_err(|e| chain(&e))
}

/// `method` (GET, or POST with an empty body asking a service to prepare something)
/// `url` as [`get`] does, sending `token`, when given, as `Authorization: Bearer <token>`
/// (a service's API token). Errors name the URL only, never the header.
pub fn send(
    settings: &Settings,
    method: reqwest::Method,
    url: &str,
    accept: Option<&str>,
    timeout: Duration,
    token: Option<&str>,
) -> Result<Response, HttpError> {
    let redacted = crate::source::redact(url);
    let unreachable = |message: String| HttpError::Unreachable {
        url: redacted.clone(),
        message,
    };
    let client = client(settings, Some(timeout), timeout).map_err(unreachable)?;
    let url = url.to_string();
    let accept = accept.map(str::to_string);
    let token = token.map(str::to_string);
    let work = async move {
        let mut request = client.request(method, &url);
        if let Some(accept) = accept {
            request = request.header(reqwest::header::ACCEPT, accept);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let final_url = response.url().clone();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, final_url, content_type, body.to_vec()))
    };
    let outcome = crate::blocking::block_on(work)
        .map_err(|e| e.to_string())
        .and_then(|result| result.map_err(|e| chain(&e)));
    let (status, url, content_type, body) = outcome.map_err(unreachable)?;
    if !status.is_success() {
        return Err(HttpError::Status {
            url: redacted,
            status: status.as_u16(),
        });
    }
    Ok(Response {
        url,
        content_type,
        body,
    })
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    crate::source::redact(&message)
}
