//! `launch = "kernel"`: after a build, the user's own server, started through the Hub's
//! REST API when it is not running, with the environment's kernel in the shared kernels
//! directory its `JUPYTER_PATH` includes (BinderHub's `launcher.py`, for any hub).
//!
//! The service's Hub token needs `admin:servers` (or `servers`) and `read:users` (see the
//! README's Hub configuration). The Hub's spawn progress is relayed as `launching`
//! events; the `ready` event's `url` is the user's server, to which the launch page
//! appends BinderHub's `urlpath` / `labpath` / `filepath`.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use super::builds::{event, EventObject};
use super::config::ServeConfig;

/// How long a server may take to start.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(600);

/// Which server a launch starts.
pub enum Server {
    /// The user's default server (`launch = "kernel"`).
    Default,
    /// A new named server with these `user_options` (`launch = "server"`).
    Named { name: String, options: Value },
}

/// Start (or find) `user`'s server; relays progress to `events`. Returns the server's
/// URL path (`/user/<name>/`, or `/user/<name>/<server>/`).
pub async fn launch(
    config: &ServeConfig,
    user: &str,
    server: &Server,
    events: &mpsc::Sender<EventObject>,
) -> Result<String, String> {
    let api = config
        .hub_api
        .as_deref()
        .ok_or("JUPYTERHUB_API_URL is not set; the service cannot start servers")?;
    let token = config.hub_token.as_deref().unwrap_or_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(LAUNCH_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let encode = |text: &str| {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let name = encode(user);
    let hub = |method: reqwest::Method, path: String| {
        http.request(method, format!("{api}{path}"))
            .header("Authorization", format!("token {token}"))
    };
    let model = hub(reqwest::Method::GET, format!("/users/{name}"))
        .send()
        .await
        .map_err(|e| format!("the Hub API did not answer: {e}"))?;
    if !model.status().is_success() {
        return Err(format!(
            "the Hub refused to describe {user} ({}): the service's token needs read:users",
            model.status()
        ));
    }
    let model: Value = serde_json::from_slice(&model.bytes().await.map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let (server_name, options) = match server {
        Server::Default => (String::new(), serde_json::json!({})),
        Server::Named { name, options } => (name.clone(), options.clone()),
    };
    let (start_path, progress_path) = if server_name.is_empty() {
        (
            format!("/users/{name}/server"),
            format!("/users/{name}/server/progress"),
        )
    } else {
        let limit = config.named_server_limit;
        let named = model["servers"].as_object().map_or(0, |servers| {
            servers.keys().filter(|k| !k.is_empty()).count()
        });
        if limit > 0 && named >= limit {
            // BinderHub's words (launcher.py).
            return Err(format!(
                "User {user} already has the maximum of {limit} named servers. One must be \
                 deleted before a new server can be created"
            ));
        }
        let server = encode(&server_name);
        (
            format!("/users/{name}/servers/{server}"),
            format!("/users/{name}/servers/{server}/progress"),
        )
    };
    let current = &model["servers"][server_name.as_str()];
    if server_name.is_empty() && current["ready"].as_bool() == Some(true) {
        let _ = events
            .send(event("launching", "Your server is already running"))
            .await;
        return Ok(server_url(&model, user, &server_name));
    }
    let _ = events.send(event("launching", "Launching server...")).await;
    if current["pending"].is_null() {
        let started = hub(reqwest::Method::POST, start_path)
            .header("Content-Type", "application/json")
            .body(options.to_string())
            .send()
            .await
            .map_err(|e| format!("the Hub API did not answer: {e}"))?;
        let status = started.status().as_u16();
        // 400 for the default server: it is already starting.
        let accepted = matches!(status, 201 | 202) || (status == 400 && server_name.is_empty());
        if !accepted {
            let body = started.text().await.unwrap_or_default();
            return Err(format!(
                "the Hub did not start {user}'s server ({status}): {}",
                crate::printer::sanitize_line(&body)
            ));
        }
    }
    follow_progress(&hub, progress_path, events).await?;
    Ok(server_url(&model, user, &server_name))
}

/// BinderHub's name for a launch's named server (`unique_name_from_repo`): the
/// repository's path as `a-b-c` (at most 15 + 15 characters), a dash and 8 random
/// lowercase letters and digits.
pub fn server_name(repo_url: &str) -> String {
    let path = url::Url::parse(repo_url)
        .map(|u| u.path().to_string())
        .unwrap_or_else(|_| repo_url.to_string());
    let path = path
        .trim_matches('/')
        .trim_end_matches(".git")
        .to_ascii_lowercase();
    let mut prefix = String::new();
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            prefix.push(c);
        } else if !prefix.ends_with('-') {
            prefix.push('-');
        }
    }
    let prefix = prefix.trim_matches('-');
    let prefix = if prefix.len() > 30 {
        format!("{}{}", &prefix[..15], &prefix[prefix.len() - 15..])
    } else {
        prefix.to_string()
    };
    let random = uuid::Uuid::new_v4().simple().to_string();
    // A uuid's hex digits: lowercase letters and digits, as BinderHub's suffix.
    format!("{prefix}-{}", &random[..8])
}

fn server_url(model: &Value, user: &str, server: &str) -> String {
    model["servers"][server]["url"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            if server.is_empty() {
                format!("/user/{user}/")
            } else {
                format!("/user/{user}/{server}/")
            }
        })
}

/// Relay the Hub's spawn progress (`GET /users/<name>/server[s/<server>]/progress`, an
/// event stream)
/// until the server is ready or has failed.
async fn follow_progress(
    hub: &impl Fn(reqwest::Method, String) -> reqwest::RequestBuilder,
    path: String,
    events: &mpsc::Sender<EventObject>,
) -> Result<(), String> {
    let deadline = Instant::now() + LAUNCH_TIMEOUT;
    let mut response = hub(reqwest::Method::GET, path)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| format!("the Hub's progress stream: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "the Hub's progress stream answered {}",
            response.status()
        ));
    }
    let mut stream = DataEvents::default();
    while Instant::now() < deadline {
        let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? else {
            break;
        };
        stream.push(&chunk);
        while let Some(progress) = stream.next_event() {
            if let Some(message) = progress["message"].as_str() {
                let _ = events
                    .send(event("launching", crate::printer::sanitize_line(message)))
                    .await;
            }
            if progress["failed"].as_bool() == Some(true) {
                return Err(format!(
                    "the server failed to start: {}",
                    progress["message"].as_str().unwrap_or("no reason given")
                ));
            }
            if progress["ready"].as_bool() == Some(true) {
                return Ok(());
            }
        }
    }
    Err("the server did not become ready".into())
}

/// A finished build, to launch for a user.
pub struct AfterBuild<'a> {
    /// The user.
    pub user: &'a str,
    /// The repository's URL.
    pub repo_url: &'a str,
    /// The build's `ready` event (key, prefix, kernel, BinderHub's fields).
    pub ready: &'a EventObject,
    /// BinderHub's launch path ([`urlpath`]).
    pub urlpath: &'a str,
    /// `content = "nbgitpuller"`: what to pull.
    pub content: Option<&'a super::content::Content>,
    /// The origin (scheme, host) the browser sees.
    pub origin: &'a str,
}

/// What follows a build: the user's server (the default one, or a new named one running
/// inside the environment), the content, and the URL the browser opens. Returns the
/// server's URL and that URL.
pub async fn after_build(
    config: &ServeConfig,
    build: AfterBuild<'_>,
    events: &mpsc::Sender<EventObject>,
) -> Result<(String, String), String> {
    let origin = build.origin;
    if config.launch == super::config::Launch::Server {
        let server = Server::Named {
            name: server_name(build.repo_url),
            options: server_options(build.ready),
        };
        let url = format!(
            "{origin}{}",
            launch(config, build.user, &server, events).await?
        );
        // The named server starts in the repository's checkout: BinderHub's paths are
        // relative to it already.
        let target = open_url(&url, build.urlpath, None);
        return Ok((url, target));
    }
    let url = format!(
        "{origin}{}",
        launch(config, build.user, &Server::Default, events).await?
    );
    let kernel = super::content::KernelRef::from_ready(build.ready);
    if build.content.is_none() {
        // Say where the repository is, and which kernel is its environment.
        let commit = build
            .ready
            .get("ref")
            .and_then(Value::as_str)
            .unwrap_or("HEAD");
        let choose = super::content::KernelRef::choose(kernel.as_ref());
        let _ = events
            .send(event(
                "launching",
                format!(
                    "This site does not copy the repository into your server: it is {} at \
                     commit {commit} (git clone it there){choose}\n",
                    crate::source::redact(build.repo_url)
                ),
            ))
            .await;
    }
    let target = deliver(
        config,
        &url,
        build.urlpath,
        build.content,
        kernel.as_ref(),
        events,
    )
    .await?;
    Ok((url, target))
}

/// A named server's `user_options` (`launch = "server"`): BinderHub's fields, and what
/// contrib/jupyterhub_config.py needs to start the server inside the environment, in
/// the repository at the built commit.
fn server_options(ready: &EventObject) -> Value {
    let field = |name: &str| ready.get(name).cloned().unwrap_or(Value::Null);
    serde_json::json!({
        "hpcbinder": {
            "key": field("key"),
            "prefix": field("prefix"),
            "kernel": field("kernel"),
            "repo_url": field("repo_url"),
            "ref": field("ref"),
        },
        "image": field("imageName"),
        "repo_url": field("repo_url"),
        "binder_ref_url": field("binder_ref_url"),
        "binder_launch_host": field("binder_launch_host"),
        "binder_request": field("binder_request"),
        "binder_persistent_request": field("binder_persistent_request"),
    })
}

/// After the server is up: the repository's content (`content = "nbgitpuller"`), and
/// the URL the browser opens.
pub async fn deliver(
    config: &ServeConfig,
    server: &str,
    urlpath: &str,
    content: Option<&super::content::Content>,
    kernel: Option<&super::content::KernelRef>,
    events: &mpsc::Sender<EventObject>,
) -> Result<String, String> {
    let Some(content) = content else {
        return Ok(open_url(server, urlpath, None));
    };
    let token = config.hub_token.as_deref().unwrap_or_default();
    let server = with_slash(server);
    match super::content::deliver(&server, token, content, kernel, events).await? {
        super::content::Delivered::Pulled => Ok(open_url(&server, urlpath, Some(&content.folder))),
        super::content::Delivered::ByBrowser => {
            let choose = super::content::KernelRef::choose(kernel);
            let _ = events
                .send(event(
                    "launching",
                    format!(
                        "The service may not use your server's API (its token lacks \
                         access:servers): your browser pulls the repository{choose}\n"
                    ),
                ))
                .await;
            Ok(git_pull_url(&server, urlpath, content))
        }
    }
}

/// The JSON `data:` of an event stream read in chunks (the Hub's spawn progress,
/// nbgitpuller's pull): blocks without JSON data are skipped.
#[derive(Default)]
pub struct DataEvents {
    buffer: String,
}

impl DataEvents {
    /// Add a chunk as it came.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.push_str(&String::from_utf8_lossy(chunk));
    }

    /// The next complete block's data, if one has arrived.
    pub fn next_event(&mut self) -> Option<Value> {
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let data = block.lines().find_map(|l| l.strip_prefix("data:"));
            if let Some(value) = data.and_then(|d| serde_json::from_str(d.trim()).ok()) {
                return Some(value);
            }
        }
        None
    }
}

/// BinderHub's launch parameters as one path inside the server (binderhub-client's
/// `LaunchSpec.fromSearchParams`): `labpath` beats `filepath` beats `urlpath`.
pub fn urlpath(query: &std::collections::HashMap<String, String>) -> String {
    let encode = |path: &str| {
        const PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'%')
            .add(b'<')
            .add(b'>')
            .add(b'`')
            .add(b'?')
            .add(b'#')
            .add(b'{')
            .add(b'}');
        percent_encoding::utf8_percent_encode(path.trim_end_matches('/'), PATH).to_string()
    };
    if let Some(labpath) = query.get("labpath").filter(|p| !p.is_empty()) {
        return format!("doc/tree/{}", encode(labpath));
    }
    if let Some(filepath) = query.get("filepath").filter(|p| !p.is_empty()) {
        return format!("tree/{}", encode(filepath));
    }
    query
        .get("urlpath")
        .map(|p| p.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

/// `urlpath` with the repository's paths moved under `folder/` (where nbgitpuller put
/// them); an empty one opens the folder in JupyterLab.
fn inside_folder(urlpath: &str, folder: &str) -> String {
    [
        "lab/tree/",
        "doc/tree/",
        "tree/",
        "notebooks/",
        "edit/",
        "files/",
    ]
    .iter()
    .find_map(|prefix| {
        urlpath
            .strip_prefix(prefix)
            .map(|rest| format!("{prefix}{folder}/{rest}"))
    })
    .unwrap_or_else(|| {
        if urlpath.is_empty() || urlpath == "lab" {
            format!("lab/tree/{folder}")
        } else {
            urlpath.to_string()
        }
    })
}

fn with_slash(server: &str) -> String {
    if server.ends_with('/') {
        server.to_string()
    } else {
        format!("{server}/")
    }
}

/// Where the browser goes after a launch: the server's `urlpath`, inside the content
/// folder when the service pulled the repository there.
pub fn open_url(server: &str, urlpath: &str, folder: Option<&str>) -> String {
    let urlpath = match folder {
        Some(folder) => inside_folder(urlpath, folder),
        None => urlpath.to_string(),
    };
    format!("{}{urlpath}", with_slash(server))
}

/// When the service cannot pull for the user: nbgitpuller's `git-pull` URL, which pulls
/// in the browser and then opens `urlpath` inside the content folder.
pub fn git_pull_url(server: &str, urlpath: &str, content: &super::content::Content) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("repo", &content.repo);
    if let Some(branch) = &content.branch {
        query.append_pair("branch", branch);
    }
    query
        .append_pair("targetpath", &content.folder)
        .append_pair("urlpath", &inside_folder(urlpath, &content.folder));
    format!("{}git-pull?{}", with_slash(server), query.finish())
}

/// The folder nbgitpuller puts a repository in: the site's, else the repository's
/// short name made safe for a path.
pub fn content_folder(configured: Option<&str>, slug: &str) -> String {
    if let Some(folder) = configured {
        return folder.to_string();
    }
    let safe: String = slug
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let safe = safe.trim_matches(|c| c == '.' || c == '-').to_string();
    if safe.is_empty() {
        "repository".into()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn event_stream_data_arrives_whole_across_chunks() {
        let mut stream = DataEvents::default();
        stream.push(b":keepalive\n\ndata: {\"progress\": 5");
        assert_eq!(stream.next_event(), None, "half a block");
        stream.push(b"0}\n\ndata: not json\n\ndata: {\"ready\": true}\n\n");
        assert_eq!(stream.next_event().unwrap()["progress"], 50);
        assert_eq!(stream.next_event().unwrap()["ready"], true);
        assert_eq!(stream.next_event(), None);
    }

    #[test]
    fn binderhubs_launch_parameters() {
        assert_eq!(
            urlpath(&query(&[("urlpath", "/lab/tree/a.ipynb")])),
            "lab/tree/a.ipynb"
        );
        assert_eq!(
            urlpath(&query(&[("filepath", "dir/a b.ipynb")])),
            "tree/dir/a%20b.ipynb"
        );
        assert_eq!(
            urlpath(&query(&[
                ("labpath", "x.ipynb"),
                ("filepath", "y"),
                ("urlpath", "z")
            ])),
            "doc/tree/x.ipynb"
        );
        assert_eq!(urlpath(&query(&[])), "");
    }

    #[test]
    fn nbgitpuller_urls_open_the_path_inside_the_pulled_folder() {
        assert_eq!(
            open_url("http://hub/user/alice", "lab/tree/a.ipynb", None),
            "http://hub/user/alice/lab/tree/a.ipynb"
        );
        assert_eq!(
            open_url("http://hub/user/alice/", "lab/tree/a.ipynb", Some("f")),
            "http://hub/user/alice/lab/tree/f/a.ipynb"
        );
        assert_eq!(open_url("/user/a/", "", Some("f")), "/user/a/lab/tree/f");
        let content = |branch: Option<&str>, folder: &str| super::super::content::Content {
            repo: "https://github.com/org/repo".into(),
            branch: branch.map(str::to_string),
            folder: folder.into(),
        };
        assert_eq!(
            git_pull_url("http://hub/user/alice/", "lab/tree/a.ipynb", &content(Some("main"), "org-repo")),
            "http://hub/user/alice/git-pull?repo=https%3A%2F%2Fgithub.com%2Forg%2Frepo&branch=main&targetpath=org-repo&urlpath=lab%2Ftree%2Forg-repo%2Fa.ipynb"
        );
        let url = git_pull_url("/user/a/", "", &content(None, "r"));
        assert!(
            url.ends_with("targetpath=r&urlpath=lab%2Ftree%2Fr"),
            "{url}"
        );
        assert_eq!(content_folder(None, "org/re po"), "org-re-po");
        assert_eq!(content_folder(None, "../.."), "repository");
        assert_eq!(content_folder(Some("binder"), "x"), "binder");
    }
}
