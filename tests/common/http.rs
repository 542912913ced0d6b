//! A loopback HTTP server for tests that stands in for PyPI (PEP 503 simple pages made
//! from a directory of wheels) and for plain file servers (a conda channel directory).
//! It counts requests per path so tests can tell how often something was downloaded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// What the server answers from.
#[derive(Clone, Default)]
pub struct Routes {
    /// `/simple/<project>/` pages and `/files/<wheel>` from these wheel directories.
    pub wheels: Vec<PathBuf>,
    /// `/static/<path>` from this directory.
    pub static_dir: Option<PathBuf>,
}

/// A running server; stops accepting when dropped (the port is closed).
pub struct Server {
    pub port: u16,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
    _stop: std::sync::mpsc::Sender<()>,
}

impl Server {
    pub fn start(routes: Routes) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if matches!(
                    stopped.try_recv(),
                    Err(std::sync::mpsc::TryRecvError::Disconnected)
                ) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let routes = routes.clone();
                let counter = counter.clone();
                std::thread::spawn(move || handle(stream, &routes, &counter));
            }
        });
        Self {
            port,
            hits,
            _stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How many GETs `path` got.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Wake the accept loop so it sees the closed channel and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn handle(stream: TcpStream, routes: &Routes, hits: &Mutex<BTreeMap<String, usize>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split(['?', '#'])
        .next()
        .unwrap_or("/")
        .to_string();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let (status, content_type, body) = answer(&path, routes);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !request_line.starts_with("HEAD ") {
        let _ = stream.write_all(&body);
    }
}

fn normalize(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

fn answer(path: &str, routes: &Routes) -> (&'static str, &'static str, Vec<u8>) {
    let not_found = ("404 Not Found", "text/plain", b"not found".to_vec());
    if let Some(project) = path
        .strip_prefix("/simple/")
        .map(|p| p.trim_end_matches('/'))
    {
        let mut links = String::new();
        for dir in &routes.wheels {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some(dist) = file.split('-').next() else {
                    continue;
                };
                if normalize(dist) != normalize(project) {
                    continue;
                }
                let digest = hex::encode(Sha256::digest(std::fs::read(entry.path()).unwrap()));
                links.push_str(&format!(
                    "<a href=\"/files/{file}#sha256={digest}\">{file}</a><br>\n"
                ));
            }
        }
        if links.is_empty() {
            return not_found;
        }
        let page = format!("<!DOCTYPE html><html><body>\n{links}</body></html>\n");
        return ("200 OK", "text/html", page.into_bytes());
    }
    if let Some(file) = path.strip_prefix("/files/") {
        if file.contains('/') || file.contains("..") {
            return not_found;
        }
        for dir in &routes.wheels {
            if let Ok(bytes) = std::fs::read(dir.join(file)) {
                return ("200 OK", "application/octet-stream", bytes);
            }
        }
        return not_found;
    }
    if let (Some(rest), Some(dir)) = (path.strip_prefix("/static/"), &routes.static_dir) {
        if rest.split('/').any(|part| part == "..") {
            return not_found;
        }
        if let Ok(bytes) = std::fs::read(Path::new(dir).join(rest)) {
            return ("200 OK", "application/octet-stream", bytes);
        }
    }
    not_found
}
