//! A loopback server that answers like doi.org's handle API and Zenodo's (InvenioRDM)
//! records API, with the shapes repo2docker's Zenodo provider reads: the DOI's handle
//! (`/api/handles/<doi>` → `values[type=URL].data.value`), the record
//! (`/api/records/<id>` → `links.files`), its file list (`entries[]` with `key`,
//! `checksum` `md5:<hex>`, `size`, `links.content`) and each file's content; and like
//! Figshare's (`/articles/<id>/versions` and `/articles/<id>/versions/<n>` with `files[]`
//! holding `name`, `size`, `is_link_only`, `download_url`, `computed_md5`). Tests publish
//! records, tamper with files and take the server down.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use md5::Digest as _;

/// One answer of a route: status, content type, body and an optional `Location`.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub location: Option<String>,
}

impl Answer {
    /// `200 OK` with `body`.
    pub fn ok(content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type: content_type.to_string(),
            body,
            location: None,
        }
    }

    /// `200 OK` with a JSON document.
    pub fn json(value: &serde_json::Value) -> Self {
        Self::ok("application/json", value.to_string().into_bytes())
    }

    /// Another status with a JSON document.
    pub fn status(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            ..Self::json(value)
        }
    }

    /// `302 Found` to `location`.
    pub fn redirect(location: &str) -> Self {
        Self {
            status: 302,
            content_type: "text/plain".into(),
            body: Vec::new(),
            location: Some(location.to_string()),
        }
    }
}

/// A route's answers, given in turn; the last one repeats.
type Routes = Arc<Mutex<BTreeMap<String, (Vec<Answer>, usize)>>>;

/// The running server (doi.org and Zenodo on one loopback port).
pub struct RecordServer {
    pub port: u16,
    routes: Routes,
    down: Arc<AtomicBool>,
    slow: Arc<AtomicBool>,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl RecordServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let routes: Routes = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let slow = Arc::new(AtomicBool::new(false));
        let hits: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let (r, d, s, h) = (routes.clone(), down.clone(), slow.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, d, s, h) = (r.clone(), d.clone(), s.clone(), h.clone());
                std::thread::spawn(move || serve(stream, &r, &d, &s, &h));
            }
        });
        Self {
            port,
            routes,
            down,
            slow,
            hits,
        }
    }

    /// `http://127.0.0.1:<port>`: the base of both the DOI resolver and Zenodo.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The site config's `[records]` table pointing at this server.
    pub fn config(&self) -> String {
        format!(
            "[records]\ndoi-resolver = \"{0}\"\nzenodo = \"{0}\"\nfigshare = \"{0}\"\nfigshare-api = \"{0}\"\nfigshare-downloads = [\"{0}\"]\ndataverse = [\"{0}\"]\nhydroshare = \"{0}\"\nckan = [\"{0}\"]\nsoftware-heritage = \"{0}/api/1\"\nprepare-timeout = 60\n",
            self.base()
        )
    }

    /// Publish version `version` of Figshare article `id` with `files` (one link-only
    /// entry too, which is not downloaded), and point `doi` at the article's page.
    pub fn publish_figshare(&self, doi: &str, id: u64, version: u64, files: &[(&str, Vec<u8>)]) {
        let base = self.base();
        let mut listed: Vec<serde_json::Value> = files
            .iter()
            .enumerate()
            .map(|(index, (name, bytes))| {
                let file_id = id * 100 + version * 10 + index as u64;
                let path = format!("/files/{file_id}");
                self.route(&path, "application/octet-stream", bytes.clone());
                let md5 = hex::encode(md5::Md5::digest(bytes));
                serde_json::json!({
                    "id": file_id, "name": name, "size": bytes.len(), "is_link_only": false,
                    "download_url": format!("{base}{path}"), "supplied_md5": md5, "computed_md5": md5,
                    "mimetype": "application/zip",
                })
            })
            .collect();
        listed.push(serde_json::json!({
            "id": 1, "name": "elsewhere", "size": 0, "is_link_only": true,
            "download_url": "https://elsewhere.example.org/file", "supplied_md5": "", "computed_md5": "",
        }));
        self.route(
            &format!("/articles/{id}/versions/{version}"),
            "application/json",
            serde_json::json!({
                "id": id, "version": version, "title": "binder demo", "files": listed,
                "figshare_url": format!("{base}/articles/software/binder_demo/{id}"),
            })
            .to_string()
            .into_bytes(),
        );
        let versions: Vec<serde_json::Value> = (1..=version)
            .map(|v| serde_json::json!({"version": v, "url": format!("{base}/articles/{id}/versions/{v}")}))
            .collect();
        self.route(
            &format!("/articles/{id}/versions"),
            "application/json",
            serde_json::Value::from(versions).to_string().into_bytes(),
        );
        self.point(doi, &format!("{base}/articles/software/binder_demo/{id}"));
    }

    /// Answer GET (or any method) `path` with `body`. A `path` with a query string
    /// matches only that query; one without matches any.
    pub fn route(&self, path: &str, content_type: &str, body: Vec<u8>) {
        self.answers(path, vec![Answer::ok(content_type, body)]);
    }

    /// Answer `path` with `answers` in turn, the last one repeating.
    pub fn answers(&self, path: &str, answers: Vec<Answer>) {
        assert!(!answers.is_empty());
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), (answers, 0));
    }

    /// Publish Zenodo record `id` with `files`, and point `doi` at it.
    pub fn publish(&self, doi: &str, id: u64, files: &[(&str, Vec<u8>)]) {
        let base = self.base();
        let entries: Vec<serde_json::Value> = files
            .iter()
            .map(|(name, bytes)| {
                let path = format!("/api/records/{id}/files/{name}/content");
                self.route(&path, "application/octet-stream", bytes.clone());
                serde_json::json!({
                    "key": name,
                    "checksum": format!("md5:{}", hex::encode(md5::Md5::digest(bytes))),
                    "size": bytes.len(),
                    "mimetype": "application/octet-stream",
                    "links": {"content": format!("{base}{path}"), "self": format!("{base}/api/records/{id}/files/{name}")},
                })
            })
            .collect();
        self.route(
            &format!("/api/records/{id}/files"),
            "application/json",
            serde_json::json!({"enabled": true, "entries": entries, "links": {"self": format!("{base}/api/records/{id}/files")}})
                .to_string()
                .into_bytes(),
        );
        self.route(
            &format!("/api/records/{id}"),
            "application/json",
            serde_json::json!({
                "id": id.to_string(),
                "doi": doi,
                "metadata": {"title": "a test record", "resource_type": {"id": "software"}, "upload_type": "software"},
                "links": {"files": format!("{base}/api/records/{id}/files"), "self_html": format!("{base}/records/{id}")},
            })
            .to_string()
            .into_bytes(),
        );
        self.point(doi, &format!("{base}/records/{id}"));
    }

    /// The DOI's handle names `url`.
    pub fn point(&self, doi: &str, url: &str) {
        self.route(
            &format!("/api/handles/{doi}"),
            "application/json",
            serde_json::json!({
                "responseCode": 1,
                "handle": doi,
                "values": [
                    {"index": 1, "type": "URL", "data": {"format": "string", "value": url}, "ttl": 86400},
                    {"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value": {}}},
                ],
            })
            .to_string()
            .into_bytes(),
        );
    }

    /// Serve other bytes at `path` than its checksum says.
    pub fn tamper_path(&self, path: &str, bytes: Vec<u8>) {
        self.route(path, "application/octet-stream", bytes);
    }

    /// Serve other bytes for record `id`'s `name` than its checksum says.
    pub fn tamper(&self, id: u64, name: &str, bytes: Vec<u8>) {
        self.route(
            &format!("/api/records/{id}/files/{name}/content"),
            "application/octet-stream",
            bytes,
        );
    }

    /// Answer every request with 503 (a provider that is down).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Send bodies in 64 KiB pieces, 50 ms apart (a download long enough to show progress).
    pub fn set_slow(&self, slow: bool) {
        self.slow.store(slow, Ordering::SeqCst);
    }

    /// Requests for `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn serve(
    stream: TcpStream,
    routes: &Routes,
    down: &AtomicBool,
    slow: &AtomicBool,
    hits: &Mutex<BTreeMap<String, usize>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let answer = if down.load(Ordering::SeqCst) {
        None
    } else {
        let mut routes = routes.lock().unwrap();
        let key = if routes.contains_key(target) {
            target.to_string()
        } else {
            path
        };
        routes.get_mut(&key).map(|(answers, served)| {
            let answer = answers[(*served).min(answers.len() - 1)].clone();
            *served += 1;
            answer
        })
    };
    let answer = match answer {
        Some(answer) => answer,
        None if down.load(Ordering::SeqCst) => Answer {
            status: 503,
            content_type: "text/plain".into(),
            body: b"down".to_vec(),
            location: None,
        },
        None => Answer::status(
            404,
            &serde_json::json!({"status": 404, "message": "not found"}),
        ),
    };
    let reason = match answer.status {
        200 => "OK",
        202 => "Accepted",
        302 => "Found",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let location = answer
        .location
        .map(|l| format!("Location: {l}\r\n"))
        .unwrap_or_default();
    let (status, content_type, body) = (answer.status, answer.content_type, answer.body);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\n{location}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if slow.load(Ordering::SeqCst) {
        for piece in body.chunks(64 << 10) {
            if stream
                .write_all(piece)
                .and_then(|()| stream.flush())
                .is_err()
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    } else {
        let _ = stream.write_all(&body);
    }
    let _ = stream.flush();
    let _ = reader.read(&mut [0u8; 0]);
}

/// A zip archive of `files` (path, contents), as a Zenodo record of a repository is.
pub fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, contents) in files {
        zip.start_file(*path, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(contents.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}
