//! The service's HTML: the launch page (the repository and a live build log fed by the
//! same event stream API clients use), the home page, message pages and the badge.
//! Every repository-controlled string is HTML-escaped; the page's configuration is JSON
//! with `<`, `>` and `&` escaped, so no spec can close the script element.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::providers::Repo;

/// The "launch binder" badge (`/badge.svg`, `/badge_logo.svg`).
pub const BADGE: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="109" height="20" role="img" aria-label="launch: binder"><title>launch: binder</title><linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient><clipPath id="r"><rect width="109" height="20" rx="3" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="64" height="20" fill="#555"/><rect x="64" width="45" height="20" fill="#579aca"/><rect width="109" height="20" fill="url(#s)"/></g><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11"><text x="32" y="14">launch</text><text x="85.5" y="14">binder</text></g></svg>"##;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem}pre{background:#111;color:#ddd;padding:1rem;max-height:30rem;overflow:auto;white-space:pre-wrap}#phase{font-weight:bold}.error:not(:empty){background:#fdd;border-left:4px solid #c00;padding:.5rem 1rem;white-space:pre-wrap}";

/// HTML-escape text.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside a `<script>` element.
fn script_json(value: &serde_json::Value) -> String {
    value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// A page with a title and one message.
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    html(
        status,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1><p>{m}</p></body></html>",
            t = escape(title),
            m = escape(text)
        ),
    )
}

/// The home page: providers and how a launch link is formed.
pub fn home(prefix: &str, providers: &[String]) -> Response {
    let list: String = providers
        .iter()
        .map(|p| format!("<li><code>{}v2/{}/…</code></li>", escape(prefix), escape(p)))
        .collect();
    html(
        StatusCode::OK,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>hpcbinder</title><style>{STYLE}</style></head><body><h1>hpcbinder</h1><p>Turn a repository into an environment and a Jupyter kernel on this centre's machines. Launch links:</p><ul>{list}</ul><p><img src=\"{p}badge.svg\" alt=\"launch binder\"></p></body></html>",
            p = escape(prefix)
        ),
    )
}

/// The launch page for `audience` (`provider/spec`): the repository, and a build log
/// that follows `/build/...` with the page's build token.
pub fn launch(
    prefix: &str,
    audience: &str,
    repo: Result<&Repo, &str>,
    build_token: &str,
    user: &str,
) -> Response {
    let (title, detail) = match repo {
        Ok(repo) => (
            format!(
                "{} at {}",
                crate::source::redact(&repo.url),
                repo.unresolved_ref
            ),
            String::new(),
        ),
        Err(message) => (audience.to_string(), message.to_string()),
    };
    let config = json!({
        "buildUrl": format!("{prefix}build/{audience}"),
        "buildToken": build_token,
        "spec": audience,
    });
    html(
        StatusCode::OK,
        format!(
            r#"<!doctype html><html><head><meta charset="utf-8"><title>Launching {title}</title>
<meta property="og:title" content="{title}"><style>{STYLE}</style></head><body>
<h1>Launching {title}</h1><p>Signed in as {user}. Spec: <code>{spec}</code></p>
<p class="error" id="error">{detail}</p>
<p>Status: <span id="phase">starting</span></p><pre id="log"></pre>
<script id="hpcbinder-config" type="application/json">{config}</script>
<script>
(function () {{
  var config = JSON.parse(document.getElementById("hpcbinder-config").textContent);
  var log = document.getElementById("log"), phase = document.getElementById("phase");
  // The launch parameters go to the service, which composes the launch URL.
  var params = new URLSearchParams(window.location.search);
  params.set("build_token", config.buildToken);
  var url = config.buildUrl + "?" + params.toString();
  // BinderHub's launch parameters (binderhub-client's LaunchSpec.fromSearchParams).
  function target(serverUrl) {{
    var query = new URLSearchParams(window.location.search);
    var urlpath = (query.get("urlpath") || "").replace(/^\//, "");
    if (query.get("filepath")) {{ urlpath = "tree/" + encodeURI(query.get("filepath").replace(/\/$/, "")); }}
    if (query.get("labpath")) {{ urlpath = "doc/tree/" + encodeURI(query.get("labpath").replace(/\/$/, "")); }}
    return new URL(urlpath, new URL(serverUrl, window.location.href)).href;
  }}
  var source = new EventSource(url);
  source.onmessage = function (e) {{
    var data = JSON.parse(e.data);
    if (data.message) {{ log.textContent += data.message; log.scrollTop = log.scrollHeight; }}
    var p = (data.phase || "").toLowerCase();
    if (p) {{ phase.textContent = p; document.body.dataset.phase = p; }}
    if (p === "ready" || p === "failed") {{ source.close(); }}
    if (p === "failed") {{
      document.getElementById("error").textContent = data.message || "The build failed.";
      document.title = "Failed: " + document.title;
    }}
    if (p === "ready" && (data.launch_url || data.url)) {{
      window.location.href = data.launch_url || target(data.url);
    }}
  }};
  source.onerror = function () {{ if (!document.body.dataset.phase) {{ phase.textContent = "connection failed"; }} source.close(); }};
}})();
</script></body></html>"#,
            title = escape(&title),
            user = escape(user),
            spec = escape(audience),
            detail = escape(&detail),
            config = script_json(&config),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_spec_cannot_leave_the_script_or_the_markup() {
        let hostile = "gh/x/</script><script>alert(1)</script>/HEAD";
        let response = launch("/services/binder/", hostile, Err("bad <b>"), "t", "u<i>");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("</script><script>alert"), "{body}");
        assert!(!body.contains("<b>") && !body.contains("u<i>"), "{body}");
        assert!(body.contains("params.set(\"build_token\""), "{body}");
    }
}
