//! Kernel verification: start a kernelspec's argv exactly as Jupyter would (a connection
//! file substituted for `{connection_file}`), speak the Jupyter messaging protocol (v5.3,
//! HMAC-SHA256 signed, over ZeroMQ) to it, execute one cell, and check what it printed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

const DELIMITER: &[u8] = b"<IDS|MSG>";

/// Why a kernel failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The kernelspec cannot be read or its command cannot be started.
    #[error("could not start the kernel `{command}`")]
    Start {
        /// argv[0].
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel process ended before answering.
    #[error("the kernel exited ({status}) before answering; its output ends with:\n{log}")]
    Exited {
        /// Exit status.
        status: String,
        /// The end of its stdout/stderr.
        log: String,
    },
    /// No answer in time.
    #[error("the kernel did not answer {what} within {seconds} s; its output ends with:\n{log}")]
    Timeout {
        /// What we waited for.
        what: &'static str,
        /// The limit.
        seconds: u64,
        /// The end of its stdout/stderr.
        log: String,
    },
    /// The cell raised.
    #[error("the test cell failed: {ename}: {evalue}")]
    Cell {
        /// Exception name.
        ename: String,
        /// Exception value.
        evalue: String,
    },
    /// The cell printed something else.
    #[error("the test cell printed `{got}`, expected `{expected}`")]
    Unexpected {
        /// What we wanted.
        expected: String,
        /// What came.
        got: String,
    },
    /// Protocol trouble (bad signature, malformed message, socket error).
    #[error("Jupyter protocol error: {0}")]
    Protocol(String),
}

/// A passed verification.
#[derive(Debug, Clone)]
pub struct Verified {
    /// What the cell printed (trimmed).
    pub output: String,
    /// Wall time from launch to the cell's answer.
    pub elapsed: Duration,
}

/// Start the kernel in `kernel_dir`, run `code`, and require its stdout to equal `expected`.
pub fn verify(
    kernel_dir: &Path,
    code: &str,
    expected: &str,
    timeout: Duration,
) -> Result<Verified, VerifyError> {
    verify_in(kernel_dir, code, expected, timeout, None)
}

/// How to start the kernel's command: wrapped (in a sandbox), given the directory of its
/// connection file, which it must be able to read.
pub type Wrap<'a> = &'a (dyn Fn(&std::process::Command, &Path) -> std::process::Command + Sync);

/// [`verify`], the kernel's command wrapped by `wrap` when given (a sandbox: it runs the
/// repository's `start` and whatever the environment's packages run at startup).
pub fn verify_in(
    kernel_dir: &Path,
    code: &str,
    expected: &str,
    timeout: Duration,
    wrap: Option<Wrap<'_>>,
) -> Result<Verified, VerifyError> {
    // The five ports are free when chosen, but another process may bind one before the
    // kernel does (many builds verify at once): then the kernel exits saying so, and a
    // new set of ports is tried.
    let mut attempt = 0;
    loop {
        let result = crate::blocking::block_on(run(kernel_dir, code, expected, timeout, wrap))
            .map_err(|e| VerifyError::Protocol(e.to_string()))?;
        match result {
            Err(VerifyError::Exited { log, .. })
                if attempt < 3 && log.contains("Address already in use") =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

struct Connection {
    key: String,
    shell: u16,
    iopub: u16,
    stdin: u16,
    control: u16,
    hb: u16,
}

fn free_ports() -> std::io::Result<Connection> {
    // Hold all five listeners at once so the kernel gets five distinct free ports.
    let listeners: Vec<std::net::TcpListener> = (0..5)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    Ok(Connection {
        key: uuid::Uuid::new_v4().simple().to_string(),
        shell: ports[0],
        iopub: ports[1],
        stdin: ports[2],
        control: ports[3],
        hb: ports[4],
    })
}

async fn run(
    kernel_dir: &Path,
    code: &str,
    expected: &str,
    timeout: Duration,
    wrap: Option<Wrap<'_>>,
) -> Result<Verified, VerifyError> {
    let started = Instant::now();
    let argv = super::read_argv(kernel_dir).map_err(|source| VerifyError::Start {
        command: kernel_dir.join("kernel.json").display().to_string(),
        source,
    })?;
    let scratch = tempfile::tempdir().map_err(|source| VerifyError::Start {
        command: "a temporary directory".into(),
        source,
    })?;
    let connection = free_ports().map_err(|source| VerifyError::Start {
        command: "a TCP port on 127.0.0.1".into(),
        source,
    })?;
    let connection_file = scratch.path().join("kernel-hpcbinder-verify.json");
    let info = json!({
        "shell_port": connection.shell, "iopub_port": connection.iopub, "stdin_port": connection.stdin,
        "control_port": connection.control, "hb_port": connection.hb, "ip": "127.0.0.1",
        "key": connection.key, "transport": "tcp", "signature_scheme": "hmac-sha256", "kernel_name": "",
    });
    // 0600 in a 0700 directory, as Jupyter writes it (it holds the HMAC key): a kernel
    // inside a container must run as the user to read it.
    let written = fs_err::write(&connection_file, info.to_string()).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(&connection_file, std::fs::Permissions::from_mode(0o600))
    });
    written.map_err(|source| VerifyError::Start {
        command: connection_file.display().to_string(),
        source,
    })?;
    let argv: Vec<String> = argv
        .iter()
        .map(|a| {
            a.replace("{connection_file}", &connection_file.display().to_string())
                .replace("{resource_dir}", &kernel_dir.display().to_string())
        })
        .collect();
    let Some((program, args)) = argv.split_first() else {
        return Err(VerifyError::Protocol(
            "kernel.json has an empty argv".into(),
        ));
    };
    let log_path = scratch.path().join("kernel.log");
    let log = fs_err::File::create(&log_path).map_err(|source| VerifyError::Start {
        command: log_path.display().to_string(),
        source,
    })?;
    let log_err = log
        .file()
        .try_clone()
        .map_err(|source| VerifyError::Start {
            command: log_path.display().to_string(),
            source,
        })?;
    let mut command = std::process::Command::new(program);
    command.args(args);
    if let Some(wrap) = wrap {
        command = wrap(&command, scratch.path());
    }
    let mut child = tokio::process::Command::from(command)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.into_file()))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| VerifyError::Start {
            command: program.clone(),
            source,
        })?;

    let session = Session {
        key: connection.key.clone().into_bytes(),
        id: uuid::Uuid::new_v4().to_string(),
    };
    let deadline = started + timeout;
    let conversation = converse(&session, &connection, code, deadline);
    let result = tokio::select! {
        result = conversation => result,
        status = child.wait() => Err(VerifyError::Exited {
            status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            log: tail(&log_path),
        }),
    };
    stop(&mut child, &session, &connection).await;
    let output = match result {
        Ok(output) => output,
        Err(VerifyError::Timeout { what, seconds, .. }) => {
            return Err(VerifyError::Timeout {
                what,
                seconds,
                log: tail(&log_path),
            })
        }
        Err(e) => return Err(e),
    };
    if output.trim() != expected.trim() {
        return Err(VerifyError::Unexpected {
            expected: expected.trim().to_string(),
            got: output.trim().to_string(),
        });
    }
    Ok(Verified {
        output: output.trim().to_string(),
        elapsed: started.elapsed(),
    })
}

fn tail(path: &PathBuf) -> String {
    let text = fs_err::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    lines[start..].join("\n")
}

struct Session {
    key: Vec<u8>,
    id: String,
}

impl Session {
    fn sign(&self, parts: &[&[u8]]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// A signed request; returns the message and its id.
    fn request(&self, msg_type: &str, content: Value) -> (ZmqMessage, String) {
        let msg_id = uuid::Uuid::new_v4().to_string();
        let header = json!({
            "msg_id": msg_id, "session": self.id, "username": "hpcbinder",
            "date": "1970-01-01T00:00:00.000000Z", "msg_type": msg_type, "version": "5.3",
        })
        .to_string();
        let (parent, metadata, content) = ("{}".to_string(), "{}".to_string(), content.to_string());
        let signature = self.sign(&[
            header.as_bytes(),
            parent.as_bytes(),
            metadata.as_bytes(),
            content.as_bytes(),
        ]);
        let frames: Vec<Bytes> = vec![
            Bytes::from_static(DELIMITER),
            Bytes::from(signature),
            Bytes::from(header),
            Bytes::from(parent),
            Bytes::from(metadata),
            Bytes::from(content),
        ];
        (ZmqMessage::try_from(frames).expect("non-empty"), msg_id)
    }

    /// Check the signature and split a received message.
    fn parse(&self, message: ZmqMessage) -> Result<Received, VerifyError> {
        let frames = message.into_vec();
        let at = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or_else(|| VerifyError::Protocol("message without delimiter".into()))?;
        let part = |i: usize| frames.get(at + i).map(|b| b.as_ref()).unwrap_or_default();
        let expected = self.sign(&[part(2), part(3), part(4), part(5)]);
        if part(1) != expected.as_bytes() {
            return Err(VerifyError::Protocol(
                "a message with a bad signature".into(),
            ));
        }
        let json = |i: usize| {
            serde_json::from_slice::<Value>(part(i))
                .map_err(|e| VerifyError::Protocol(e.to_string()))
        };
        Ok(Received {
            header: json(2)?,
            parent: json(3)?,
            content: json(5)?,
        })
    }
}

struct Received {
    header: Value,
    parent: Value,
    content: Value,
}

impl Received {
    fn msg_type(&self) -> &str {
        self.header["msg_type"].as_str().unwrap_or("")
    }
    fn answers(&self, msg_id: &str) -> bool {
        self.parent["msg_id"].as_str() == Some(msg_id)
    }
}

fn protocol(error: zeromq::ZmqError) -> VerifyError {
    VerifyError::Protocol(error.to_string())
}

async fn until<T>(
    deadline: Instant,
    what: &'static str,
    future: impl std::future::Future<Output = Result<T, VerifyError>>,
) -> Result<T, VerifyError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, future).await {
        Ok(result) => result,
        Err(_) => Err(VerifyError::Timeout {
            what,
            seconds: left.as_secs().max(1),
            log: String::new(),
        }),
    }
}

/// Stop the kernel as Jupyter does: a `shutdown_request` on the control channel, then
/// SIGTERM, then SIGKILL. A kernel inside a container must exit by itself: killing the
/// engine's client (`podman run`) would leave the container running.
async fn stop(child: &mut tokio::process::Child, session: &Session, connection: &Connection) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        request_shutdown(session, connection),
    )
    .await;
    if exited(child, 10).await {
        return;
    }
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if exited(child, 5).await {
            return;
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

async fn exited(child: &mut tokio::process::Child, seconds: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(seconds), child.wait())
        .await
        .is_ok()
}

async fn request_shutdown(session: &Session, connection: &Connection) -> Result<(), VerifyError> {
    let mut control = DealerSocket::new();
    control
        .connect(&format!("tcp://127.0.0.1:{}", connection.control))
        .await
        .map_err(protocol)?;
    let (request, _) = session.request("shutdown_request", json!({"restart": false}));
    control.send(request).await.map_err(protocol)?;
    let _ = control.recv().await;
    Ok(())
}

/// Connect, wait until shell and iopub both work, execute `code`, return its stdout.
async fn converse(
    session: &Session,
    connection: &Connection,
    code: &str,
    deadline: Instant,
) -> Result<String, VerifyError> {
    let mut shell = DealerSocket::new();
    let mut iopub = SubSocket::new();
    until(deadline, "a connection", async {
        shell
            .connect(&format!("tcp://127.0.0.1:{}", connection.shell))
            .await
            .map_err(protocol)?;
        iopub
            .connect(&format!("tcp://127.0.0.1:{}", connection.iopub))
            .await
            .map_err(protocol)?;
        iopub.subscribe("").await.map_err(protocol)
    })
    .await?;

    // A SUB socket misses what is published before its subscription reaches the kernel, so
    // repeat kernel_info until its `status` messages show up on iopub as well.
    until(deadline, "kernel_info_request", async {
        loop {
            let (request, msg_id) = session.request("kernel_info_request", json!({}));
            shell.send(request).await.map_err(protocol)?;
            loop {
                let reply = session.parse(shell.recv().await.map_err(protocol)?)?;
                if reply.answers(&msg_id) && reply.msg_type() == "kernel_info_reply" {
                    break;
                }
            }
            let seen = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    let message = session.parse(iopub.recv().await.map_err(protocol)?)?;
                    if message.answers(&msg_id) {
                        return Ok::<(), VerifyError>(());
                    }
                }
            })
            .await;
            if let Ok(result) = seen {
                return result;
            }
        }
    })
    .await?;

    let (request, msg_id) = session.request(
        "execute_request",
        json!({"code": code, "silent": false, "store_history": false, "user_expressions": {},
               "allow_stdin": false, "stop_on_error": true}),
    );
    shell.send(request).await.map_err(protocol)?;
    until(deadline, "the test cell", async {
        let mut stdout = String::new();
        loop {
            let message = session.parse(iopub.recv().await.map_err(protocol)?)?;
            if !message.answers(&msg_id) {
                continue;
            }
            match message.msg_type() {
                "stream" if message.content["name"] == "stdout" => {
                    stdout.push_str(message.content["text"].as_str().unwrap_or(""));
                }
                "error" => {
                    return Err(VerifyError::Cell {
                        ename: message.content["ename"].as_str().unwrap_or("").to_string(),
                        evalue: message.content["evalue"].as_str().unwrap_or("").to_string(),
                    })
                }
                "status" if message.content["execution_state"] == "idle" => return Ok(stdout),
                _ => {}
            }
        }
    })
    .await
}
