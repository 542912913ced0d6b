//! `content = "nbgitpuller"`: the repository's files in the user's server, and its
//! notebooks pointed at the built kernel.
//!
//! After the server is up, the service itself calls the server's nbgitpuller API
//! (`git-pull/api`, the event stream nbgitpuller's own `git-pull` page reads) through the
//! Hub's proxy, relaying its output as `launching` events; then, through the server's
//! contents API, it sets each pulled notebook's `metadata.kernelspec` to the built
//! kernel (notebooks of another language are left alone). Opening a notebook then starts
//! the environment, not `python3`. nbgitpuller treats those edits as the user's own
//! changes, which its merge keeps on later pulls.
//!
//! Both calls use the service's Hub token, which needs `access:servers` (README). Without
//! it the browser goes through the `git-pull` URL instead and the notebooks keep their
//! kernel; the launch says which kernel to choose.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::builds::{event, EventObject};

/// How long a pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// At most this many notebooks are repointed (a repository of thousands is left as is
/// past that; the launch says so).
const MAX_NOTEBOOKS: usize = 200;
/// Folders deeper than this are not searched for notebooks.
const MAX_DEPTH: usize = 6;

/// What to pull and where.
#[derive(Debug, Clone)]
pub struct Content {
    /// The repository's URL.
    pub repo: String,
    /// The requested branch or tag (nbgitpuller cannot pull a commit id).
    pub branch: Option<String>,
    /// The folder in the user's home.
    pub folder: String,
}

/// The built kernel, as a notebook's `metadata.kernelspec` names it.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRef {
    pub name: String,
    pub display_name: String,
    pub language: String,
}

impl KernelRef {
    /// From the `ready` event: its `kernel` name and the `kernel.json` in `kernel_dir`.
    pub fn from_ready(ready: &EventObject) -> Option<Self> {
        let name = ready.get("kernel")?.as_str()?.to_string();
        let json = ready
            .get("kernel_dir")
            .and_then(Value::as_str)
            .and_then(|dir| {
                std::fs::read_to_string(std::path::Path::new(dir).join("kernel.json")).ok()
            })
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .unwrap_or_default();
        Some(Self {
            display_name: json["display_name"].as_str().unwrap_or(&name).to_string(),
            language: json["language"].as_str().unwrap_or("python").to_string(),
            name,
        })
    }
}

impl KernelRef {
    /// "; choose the kernel "<display name>" in your notebooks", or nothing.
    pub fn choose(kernel: Option<&Self>) -> String {
        kernel
            .map(|k| {
                format!(
                    "; choose the kernel \"{}\" in your notebooks",
                    k.display_name
                )
            })
            .unwrap_or_default()
    }
}

/// How the delivery went.
#[derive(Debug, PartialEq)]
pub enum Delivered {
    /// Pulled by the service; the notebooks name the kernel.
    Pulled,
    /// The service may not call the server's API: the browser pulls via `git-pull`.
    ByBrowser,
}

/// Pull `content` into the server at `server` (an absolute URL ending in `/`) and point
/// its notebooks at `kernel`.
pub async fn deliver(
    server: &str,
    token: &str,
    content: &Content,
    kernel: Option<&KernelRef>,
    events: &mpsc::Sender<EventObject>,
) -> Result<Delivered, String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(PULL_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let query = {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("repo", &content.repo);
        if let Some(branch) = &content.branch {
            query.append_pair("branch", branch);
        }
        query.append_pair("targetpath", &content.folder);
        query.finish()
    };
    let say = |message: String| event("launching", format!("{message}\n"));
    let _ = events
        .send(say(format!(
            "Pulling {} into ~/{}",
            crate::source::redact(&content.repo),
            content.folder
        )))
        .await;
    let mut response = http
        .get(format!("{server}git-pull/api?{query}"))
        .header("Authorization", format!("token {token}"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| format!("your server's nbgitpuller did not answer: {e}"))?;
    match response.status().as_u16() {
        200 => {}
        401 | 403 => return Ok(Delivered::ByBrowser),
        404 => {
            return Err(
                "your server has no nbgitpuller (git-pull/api is 404): the site's single-user \
                 environment needs the nbgitpuller package"
                    .into(),
            )
        }
        status => return Err(format!("your server's nbgitpuller answered {status}")),
    }
    // nbgitpuller's stream: {"phase": "syncing", "output": ...}, then "finished" or
    // {"phase": "error", "message": ..., "output": ...}.
    let mut stream = super::launch::DataEvents::default();
    let mut finished = false;
    'stream: while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        stream.push(&chunk);
        while let Some(update) = stream.next_event() {
            match update["phase"].as_str() {
                Some("finished") => {
                    finished = true;
                    break 'stream;
                }
                Some("error") => {
                    return Err(format!(
                        "nbgitpuller could not pull the repository: {}",
                        crate::printer::sanitize_line(
                            update["message"].as_str().unwrap_or("no reason given")
                        )
                    ))
                }
                _ => {
                    if let Some(output) = update["output"].as_str() {
                        let line = crate::printer::sanitize_line(output.trim_end());
                        if !line.is_empty() {
                            let _ = events.send(event("launching", format!("{line}\n"))).await;
                        }
                    }
                }
            }
        }
    }
    if !finished {
        return Err("nbgitpuller's stream ended before the pull finished".into());
    }
    if let Some(kernel) = kernel {
        let notebooks = Notebooks {
            http: &http,
            server,
            token,
        };
        let (changed, skipped) = notebooks.point_at(&content.folder, kernel).await?;
        let mut message = format!(
            "{changed} notebook(s) in ~/{} now use the kernel \"{}\"",
            content.folder, kernel.display_name
        );
        if skipped > 0 {
            message.push_str(&format!(
                "; {skipped} left as they are (another language, or past {MAX_NOTEBOOKS})"
            ));
        }
        let _ = events.send(say(message)).await;
    }
    Ok(Delivered::Pulled)
}

/// The server's contents API.
struct Notebooks<'a> {
    http: &'a reqwest::Client,
    server: &'a str,
    token: &'a str,
}

impl Notebooks<'_> {
    fn url(&self, path: &str) -> String {
        const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        let encoded: Vec<String> = path
            .split('/')
            .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        format!("{}api/contents/{}", self.server, encoded.join("/"))
    }

    async fn get(&self, path: &str, query: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(format!("{}?{query}", self.url(path)))
            .header("Authorization", format!("token {}", self.token))
            .send()
            .await
            .map_err(|e| format!("your server's contents API: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "your server's contents API answered {} for {path}",
                response.status()
            ));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// Point every notebook under `folder` of `kernel`'s language (or none) at `kernel`.
    /// Returns (changed, skipped).
    async fn point_at(&self, folder: &str, kernel: &KernelRef) -> Result<(usize, usize), String> {
        let mut notebooks = Vec::new();
        let mut folders = vec![(folder.to_string(), 0)];
        while let Some((dir, depth)) = folders.pop() {
            let listing = self.get(&dir, "content=1").await?;
            for entry in listing["content"].as_array().into_iter().flatten() {
                let Some(path) = entry["path"].as_str() else {
                    continue;
                };
                match entry["type"].as_str() {
                    Some("notebook") => notebooks.push(path.to_string()),
                    Some("directory")
                        if depth < MAX_DEPTH
                            && !entry["name"].as_str().unwrap_or(".").starts_with('.') =>
                    {
                        folders.push((path.to_string(), depth + 1));
                    }
                    _ => {}
                }
            }
        }
        notebooks.sort();
        let skipped_past_limit = notebooks.len().saturating_sub(MAX_NOTEBOOKS);
        let (mut changed, mut skipped) = (0, skipped_past_limit);
        for path in notebooks.iter().take(MAX_NOTEBOOKS) {
            let model = self.get(path, "content=1&type=notebook").await?;
            let mut notebook = model["content"].clone();
            let Some(updated) = repoint(&mut notebook, kernel) else {
                skipped += usize::from(notebook.is_object());
                continue;
            };
            if !updated {
                continue;
            }
            let response = self
                .http
                .put(self.url(path))
                .header("Authorization", format!("token {}", self.token))
                .json(
                    &serde_json::json!({"type": "notebook", "format": "json", "content": notebook}),
                )
                .send()
                .await
                .map_err(|e| format!("your server's contents API: {e}"))?;
            if !response.status().is_success() {
                return Err(format!(
                    "your server refused to save {path} ({})",
                    response.status()
                ));
            }
            changed += 1;
        }
        Ok((changed, skipped))
    }
}

/// Set `notebook`'s kernelspec to `kernel`. `None` when the notebook is in another
/// language (left alone); `Some(false)` when it already names the kernel.
fn repoint(notebook: &mut Value, kernel: &KernelRef) -> Option<bool> {
    let metadata = notebook
        .as_object_mut()?
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    let metadata = metadata.as_object_mut()?;
    let language = metadata
        .get("kernelspec")
        .and_then(|k| k["language"].as_str())
        .or_else(|| {
            metadata
                .get("language_info")
                .and_then(|l| l["name"].as_str())
        })
        .map(str::to_ascii_lowercase);
    if language.is_some_and(|l| l != kernel.language.to_ascii_lowercase()) {
        return None;
    }
    if metadata.get("kernelspec").and_then(|k| k["name"].as_str()) == Some(kernel.name.as_str()) {
        return Some(false);
    }
    metadata.insert(
        "kernelspec".into(),
        serde_json::json!({
            "name": kernel.name,
            "display_name": kernel.display_name,
            "language": kernel.language,
        }),
    );
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> KernelRef {
        KernelRef {
            name: "demo-1a2b3c4".into(),
            display_name: "demo (git:demo @ 1a2b3c4)".into(),
            language: "python".into(),
        }
    }

    #[test]
    fn notebooks_of_the_kernels_language_are_repointed_others_left_alone() {
        let mut python = serde_json::json!({"cells": [], "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}});
        assert_eq!(repoint(&mut python, &kernel()), Some(true));
        assert_eq!(python["metadata"]["kernelspec"]["name"], "demo-1a2b3c4");
        assert_eq!(repoint(&mut python, &kernel()), Some(false), "already");
        let mut bare = serde_json::json!({"cells": []});
        assert_eq!(repoint(&mut bare, &kernel()), Some(true), "no kernelspec");
        let mut r =
            serde_json::json!({"metadata": {"kernelspec": {"name": "ir", "language": "R"}}});
        assert_eq!(repoint(&mut r, &kernel()), None);
        assert_eq!(r["metadata"]["kernelspec"]["name"], "ir");
        let mut by_info = serde_json::json!({"metadata": {"language_info": {"name": "julia"}}});
        assert_eq!(repoint(&mut by_info, &kernel()), None);
        assert_eq!(repoint(&mut serde_json::json!("junk"), &kernel()), None);
    }
}
