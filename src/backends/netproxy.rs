//! The sandbox's only way out to the network: package downloads.
//!
//! With `sandbox-network = "packages"` (the default) repository code runs in its own
//! network namespace, which has nothing but a loopback interface. Inside, a relay
//! (`hpcbinder __sandbox-relay`, the step's parent) listens on `127.0.0.1` and passes each
//! connection through a Unix socket in the sandbox's private directory to [`Proxy`], an
//! HTTP proxy in hpcbinder that connects only to the hosts of the site's package sources
//! (and those a local repository names itself). The step finds the relay through the
//! usual `HTTP(S)_PROXY` variables, which pip, uv, conda, git and curl all honour; TLS
//! passes through `CONNECT` untouched (the certificates are checked end to end). Anything
//! else (a metadata service, the hub's API, another host on the site network) is refused
//! with 403, and hpcbinder reports each refused host.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The argument that makes `hpcbinder` the relay inside the sandbox.
pub const RELAY_ARG: &str = "__sandbox-relay";

/// A request head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;

/// The proxy outside the sandbox: a Unix socket and the thread that serves it.
#[derive(Debug)]
pub struct Proxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    refused: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Serve at `socket`, connecting only to `allowed` (`host:port`, lower case).
    pub fn start(socket: &Path, allowed: Vec<String>) -> std::io::Result<Self> {
        let listener = UnixListener::bind(socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let allowed = Arc::new(allowed);
        let thread = {
            let (stop, refused) = (stop.clone(), refused.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (allowed, refused) = (allowed.clone(), refused.clone());
                    std::thread::spawn(move || {
                        let _ = serve(stream, &allowed, &refused);
                    });
                }
            })
        };
        Ok(Self {
            socket: socket.to_path_buf(),
            stop,
            refused,
            thread: Some(thread),
        })
    }

    /// The socket the relay connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The hosts refused so far (each once), emptied.
    pub fn take_refused(&self) -> Vec<String> {
        let mut refused = self
            .refused
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        refused.sort();
        refused.dedup();
        refused
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One client: read its request head, check the destination, connect, then pass bytes
/// both ways until either side closes.
fn serve(
    mut client: UnixStream,
    allowed: &[String],
    refused: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(&head, b"\r\n\r\n") {
            break end + 4;
        }
        if head.len() > MAX_HEAD {
            return respond(&mut client, "431 Request Header Fields Too Large", "");
        }
        let read = client.read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    };
    let text = String::from_utf8_lossy(&head[..end]).to_string();
    let first = text.lines().next().unwrap_or_default();
    let mut words = first.split_whitespace();
    let (method, target, version) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
        words.next().unwrap_or("HTTP/1.1"),
    );
    let (destination, forward) = if method.eq_ignore_ascii_case("CONNECT") {
        (target.to_ascii_lowercase(), head[end..].to_vec())
    } else {
        // A plain-HTTP request in absolute form: sent on in origin form.
        let Ok(url) = url::Url::parse(target) else {
            return respond(
                &mut client,
                "400 Bad Request",
                "an absolute http:// URL is needed\n",
            );
        };
        let Some(destination) =
            crate::sources::host_port(target).filter(|_| url.scheme() == "http")
        else {
            return respond(
                &mut client,
                "400 Bad Request",
                "only http:// and CONNECT are proxied\n",
            );
        };
        let path = &url[url::Position::BeforePath..];
        let rest = &text[first.len()..];
        let mut forward = format!("{method} {path} {version}").into_bytes();
        forward.extend_from_slice(rest.as_bytes());
        forward.extend_from_slice(&head[end..]);
        (destination, forward)
    };
    let host = destination
        .rsplit_once(':')
        .map_or(destination.as_str(), |(h, _)| h);
    if !allowed.contains(&destination) {
        if let Ok(mut refused) = refused.lock() {
            refused.push(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            );
        }
        return respond(
            &mut client,
            "403 Forbidden",
            &format!("hpcbinder's sandbox reaches only the site's package sources; {destination} is not one\n"),
        );
    }
    let upstream = destination.to_socket_addrs().ok().and_then(|mut addrs| {
        addrs.find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(30)).ok())
    });
    let Some(mut upstream) = upstream else {
        return respond(
            &mut client,
            "502 Bad Gateway",
            &format!("could not connect to {destination}\n"),
        );
    };
    client.set_read_timeout(None)?;
    if method.eq_ignore_ascii_case("CONNECT") {
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    }
    upstream.write_all(&forward)?;
    splice_unix_tcp(client, upstream);
    Ok(())
}

fn respond(client: &mut UnixStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Pass bytes both ways; each direction's end shuts the other side's writing.
fn splice_unix_tcp(unix: UnixStream, tcp: TcpStream) {
    let (Ok(mut unix_read), Ok(mut tcp_read)) = (unix.try_clone(), tcp.try_clone()) else {
        return;
    };
    let (mut unix_write, mut tcp_write) = (unix, tcp);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut unix_read, &mut tcp_write);
        let _ = tcp_write.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut tcp_read, &mut unix_write);
    let _ = unix_write.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// `hpcbinder __sandbox-relay <socket> -- <program> [args...]`, run inside the sandbox:
/// listen on loopback, relay each connection to the proxy's socket, run the program with
/// the proxy variables pointing here, and exit as it did.
pub fn relay_main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    let (Some(socket), Some(separator)) = (args.first(), args.get(1)) else {
        return std::process::ExitCode::from(2);
    };
    if separator != "--" || args.len() < 3 {
        return std::process::ExitCode::from(2);
    }
    let socket = PathBuf::from(socket);
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "hpcbinder sandbox relay: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let socket = socket.clone();
            std::thread::spawn(move || {
                if let Ok(unix) = UnixStream::connect(&socket) {
                    splice_unix_tcp(unix, stream);
                }
            });
        }
    });
    let proxy = format!("http://127.0.0.1:{port}");
    let mut command = std::process::Command::new(&args[2]);
    command.args(&args[3..]);
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env(name, &proxy);
    }
    command.env_remove("NO_PROXY").env_remove("no_proxy");
    match command.status() {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1);
            std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "hpcbinder sandbox relay: {}: {error}",
                args[2].to_string_lossy()
            );
            std::process::ExitCode::from(127)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_default_by_scheme() {
        use crate::sources::host_port;
        assert_eq!(
            host_port("https://PyPI.org/simple").as_deref(),
            Some("pypi.org:443")
        );
        assert_eq!(
            host_port("http://127.0.0.1:8080/x").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(host_port("/srv/wheels"), None);
    }

    /// A real loopback server behind the proxy: an allowed destination answers, another
    /// gets 403 and is recorded.
    #[test]
    fn only_allowed_destinations_are_reached() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let allowed_port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut stream in server.incoming().flatten() {
                let mut buffer = [0u8; 1024];
                let read = stream.read(&mut buffer).unwrap_or(0);
                let request = String::from_utf8_lossy(&buffer[..read]).to_string();
                let line = request.lines().next().unwrap_or_default().to_string();
                let _ = write!(stream, "HTTP/1.0 200 OK\r\n\r\n{line}");
            }
        });
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let other_port = other.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start(
            &dir.path().join("proxy.sock"),
            vec![format!("127.0.0.1:{allowed_port}")],
        )
        .unwrap();
        let ask = |request: String| {
            let mut stream = UnixStream::connect(proxy.socket()).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        };
        let answer = ask(format!(
            "GET http://127.0.0.1:{allowed_port}/simple/six/ HTTP/1.1\r\nHost: x\r\n\r\n"
        ));
        assert!(answer.ends_with("GET /simple/six/ HTTP/1.1"), "{answer}");
        let answer = ask(format!("CONNECT 127.0.0.1:{other_port} HTTP/1.1\r\n\r\n"));
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert_eq!(proxy.take_refused(), ["127.0.0.1"]);
        drop(other);
    }
}
