//! The service's builds: one child `hpcbinder build --json` per (repository, commit),
//! shared by every request for it, queued behind `max-builds`, killed at its timeout.
//!
//! A build is a task of its own: a client that goes away stops only its own relay. Each
//! build keeps its events in order; a client that joins late gets them all, then the
//! rest. Finished builds are remembered: a ready one answers at once while its
//! environment's marker exists, a failed one is reported again for `failed-build-retry`
//! so a broken repository is not rebuilt in a loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::{mpsc, watch, Semaphore};

use super::config::ServeConfig;
use super::metrics::Metrics;

/// What one build is: the repository URL and the commit.
pub type BuildId = (String, String);

/// One event object (`phase`, `message`, extra fields).
pub type EventObject = Map<String, Value>;

/// A build's events so far, shared by its watchers.
pub struct Build {
    events: Mutex<Vec<Arc<EventObject>>>,
    changed: watch::Sender<(usize, bool)>,
    /// The environment key, once an event named it.
    key: Mutex<Option<String>>,
}

impl Build {
    fn new() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            changed: watch::channel((0, false)).0,
            key: Mutex::new(None),
        }
    }

    fn push(&self, event: EventObject) {
        if let Some(key) = event.get("key").and_then(Value::as_str) {
            *self.key.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.to_string());
        }
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(Arc::new(event));
        let count = events.len();
        drop(events);
        self.changed.send_replace((count, false));
    }

    fn finish(&self) {
        let count = self.events.lock().unwrap_or_else(|e| e.into_inner()).len();
        self.changed.send_replace((count, true));
    }

    fn snapshot(&self) -> Vec<Arc<EventObject>> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The events from the first, then the rest as they come, until the build ends.
    fn watch(self: &Arc<Self>) -> mpsc::Receiver<Arc<EventObject>> {
        let (tx, rx) = mpsc::channel(64);
        let build = self.clone();
        tokio::spawn(async move {
            let mut changes = build.changed.subscribe();
            let mut sent = 0;
            loop {
                let (count, finished) = *changes.borrow_and_update();
                let fresh: Vec<_> = {
                    let events = build.events.lock().unwrap_or_else(|e| e.into_inner());
                    events[sent.min(events.len())..count.min(events.len())].to_vec()
                };
                for event in fresh {
                    sent += 1;
                    if tx.send(event).await.is_err() {
                        return; // the client left; the build goes on
                    }
                }
                if finished && sent >= count {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// How a finished build ended.
#[derive(Clone)]
enum Finished {
    Ready {
        event: Arc<EventObject>,
    },
    Failed {
        log: Vec<Arc<EventObject>>,
        at: Instant,
    },
}

#[derive(Default)]
struct State {
    running: HashMap<BuildId, Arc<Build>>,
    finished: HashMap<BuildId, Finished>,
    per_user: HashMap<String, usize>,
    children: HashMap<u32, BuildId>,
}

/// Every build of the service.
pub struct Builds {
    config: Arc<ServeConfig>,
    executable: PathBuf,
    store: PathBuf,
    /// Where kernels are registered (`launch = "kernel"`: the shared kernels directory).
    kernel_dir: Option<PathBuf>,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    stopping: AtomicBool,
}

/// The answer to a build request.
pub enum Answer {
    /// Events to relay, in order, ending with `ready` or `failed`.
    Events(mpsc::Receiver<Arc<EventObject>>),
    /// The request is refused; one `failed` event with this message and status.
    Refused(String, u16),
}

/// A `phase`/`message` event object.
pub fn event(phase: &str, message: impl Into<String>) -> EventObject {
    let mut message = message.into();
    if !message.ends_with('\n') {
        message.push('\n');
    }
    let mut object = Map::new();
    object.insert("phase".into(), phase.into());
    object.insert("message".into(), message.into());
    object
}

impl Builds {
    /// Builds run `executable build --json` with the service's settings and store.
    pub fn new(
        config: Arc<ServeConfig>,
        executable: PathBuf,
        store: PathBuf,
        kernel_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            kernel_dir,
            slots: Arc::new(Semaphore::new(config.max_builds)),
            config,
            executable,
            store,
            state: Mutex::new(State::default()),
            metrics: Metrics::default(),
            stopping: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds running and waiting for a slot.
    pub fn running(&self) -> usize {
        self.state().running.len()
    }

    /// Builds waiting for a slot.
    pub fn queued(&self) -> usize {
        self.running()
            .saturating_sub(self.config.max_builds - self.slots.available_permits())
    }

    /// Stop taking builds (SIGTERM); running ones go on.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Ask every running build to stop (SIGTERM: a Slurm build cancels its job).
    pub fn terminate_all(&self) {
        let pids: Vec<u32> = self.state().children.keys().copied().collect();
        for pid in pids {
            signal_group(pid, "TERM");
        }
    }

    /// Kill every running build (the shutdown grace ran out).
    pub fn kill_all(&self) {
        let pids: Vec<u32> = self.state().children.keys().copied().collect();
        for pid in pids {
            kill_group(pid);
        }
    }

    /// Follow the build of `url` at `commit` for `user`: a finished one, a running one,
    /// or a new one.
    pub fn request(self: &Arc<Self>, url: &str, commit: &str, user: &str) -> Answer {
        let id: BuildId = (url.to_string(), commit.to_string());
        let mut state = self.state();
        match state.finished.get(&id).cloned() {
            Some(Finished::Ready { event }) if ready_still_there(&event) => {
                self.metrics.count("reused");
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(event);
                return Answer::Events(rx);
            }
            Some(Finished::Failed { log, at }) if at.elapsed() < self.config.failed_build_retry => {
                let wait = self.config.failed_build_retry.saturating_sub(at.elapsed());
                let (tx, rx) = mpsc::channel(log.len() + 1);
                let mut log = log;
                if let Some(last) = log.pop() {
                    for event in log {
                        let _ = tx.try_send(event);
                    }
                    let mut last = (*last).clone();
                    let message = last
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .trim_end()
                        .to_string();
                    last.insert(
                        "message".into(),
                        format!(
                            "{message}\n(this build failed {} s ago; it is tried again in {} s)\n",
                            at.elapsed().as_secs(),
                            wait.as_secs() + 1
                        )
                        .into(),
                    );
                    let _ = tx.try_send(Arc::new(last));
                }
                return Answer::Events(rx);
            }
            Some(_) => {
                state.finished.remove(&id);
            }
            None => {}
        }
        if let Some(build) = state.running.get(&id) {
            return Answer::Events(build.watch());
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Answer::Refused(
                "The service is shutting down; try again in a minute".into(),
                503,
            );
        }
        let mine = state.per_user.get(user).copied().unwrap_or(0);
        if mine >= self.config.max_builds_per_user {
            return Answer::Refused(
                format!(
                    "You have {mine} builds running or queued, the most this service allows; try again when one finishes"
                ),
                429,
            );
        }
        *state.per_user.entry(user.to_string()).or_default() += 1;
        let build = Arc::new(Build::new());
        state.running.insert(id.clone(), build.clone());
        drop(state);
        let watcher = build.watch();
        let builds = self.clone();
        let user = user.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = builds.run(&id, &build).await;
            builds.metrics.finished(outcome, started.elapsed());
            builds.finish(&id, &build, &user);
        });
        Answer::Events(watcher)
    }

    fn finish(&self, id: &BuildId, build: &Arc<Build>, user: &str) {
        let log = build.snapshot();
        let last = log.last().cloned();
        let ready = last
            .as_ref()
            .is_some_and(|e| e.get("phase").and_then(Value::as_str) == Some("ready"));
        self.keep_log(build, &log, ready);
        let mut state = self.state();
        state.running.remove(id);
        if let Some(count) = state.per_user.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_user.remove(user);
            }
        }
        let finished = match last {
            Some(event) if ready => Finished::Ready { event },
            _ => Finished::Failed {
                log,
                at: Instant::now(),
            },
        };
        state.finished.insert(id.clone(), finished);
        drop(state);
        build.finish();
    }

    /// Write the build's log to `<store>/logs/<key16>.log` (not for a reuse, which would
    /// replace the log of the build that made the environment).
    fn keep_log(&self, build: &Build, log: &[Arc<EventObject>], ready: bool) {
        let Some(key) = build.key.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let path = log_path(&self.store, &key[..16.min(key.len())]);
        let reused = log
            .last()
            .and_then(|e| e.get("reused"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if ready && reused && path.exists() {
            return;
        }
        let text: String = log.iter().map(|e| log_line(e)).collect();
        if let Some(dir) = path.parent() {
            let _ = fs_err::create_dir_all(dir);
        }
        let _ = crate::store::write_atomic(&path, text.as_bytes(), 0o644);
    }

    /// The log of the environment whose key starts with `key16`: a running build's so
    /// far, else the one kept in the store.
    pub fn log(&self, key16: &str) -> Option<String> {
        let running: Vec<Arc<Build>> = self.state().running.values().cloned().collect();
        for build in running {
            let key = build.key.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if key.is_some_and(|k| k.starts_with(key16)) {
                return Some(build.snapshot().iter().map(|e| log_line(e)).collect());
            }
        }
        fs_err::read_to_string(log_path(&self.store, key16)).ok()
    }

    /// Run one build to its end; returns the outcome for the metrics.
    async fn run(&self, id: &BuildId, build: &Arc<Build>) -> &'static str {
        build.push(event("waiting", "Waiting for build to start..."));
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                build.push(event(
                    "waiting",
                    format!(
                        "All {} build slots are busy; this build is queued",
                        self.config.max_builds
                    ),
                ));
                match self.slots.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return "failed",
                }
            }
        };
        let outcome = self.run_child(id, build).await;
        drop(permit);
        outcome
    }

    async fn run_child(&self, id: &BuildId, build: &Arc<Build>) -> &'static str {
        let (url, commit) = id;
        let mut command = tokio::process::Command::new(&self.executable);
        command.arg("build");
        if self.config.slurm {
            // A Slurm job; SIGTERM makes the submitting process cancel it.
            command.arg("--submit");
        }
        command
            .args(["--json", "--store"])
            .arg(&self.store)
            .args(["--ref", commit.as_str()]);
        if let Some(dir) = &self.kernel_dir {
            command.arg("--kernel-dir").arg(dir);
        }
        if self.config.launch == super::config::Launch::Server {
            // jupyterhub-singleuser and JupyterLab inside: the server runs from the env.
            command.arg("--with-server");
        }
        command
            .args(["--", url.as_str()])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // The Hub's credentials stay with the service: builds never see them.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("JUPYTERHUB_") {
                command.env_remove(name);
            }
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                build.push(event("failed", format!("Could not start the build: {e}")));
                return "failed";
            }
        };
        let pid = child.id().unwrap_or(0);
        self.state().children.insert(pid, id.clone());
        let mut stderr = child.stderr.take();
        let stderr_task = tokio::spawn(async move {
            let mut text = String::new();
            if let Some(stderr) = stderr.as_mut() {
                let _ = stderr.take(1 << 20).read_to_string(&mut text).await;
            }
            text
        });
        let stdout = child.stdout.take();
        let deadline = tokio::time::Instant::now() + self.config.build_timeout;
        let mut last_phase = String::new();
        let mut timed_out = false;
        if let Some(stdout) = stdout {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            loop {
                match tokio::time::timeout_at(deadline, lines.next_line()).await {
                    Ok(Ok(Some(line))) => {
                        let object = match serde_json::from_str::<Value>(&line) {
                            Ok(Value::Object(object)) => object,
                            // BinderHub's local builder wraps what is not JSON the same way.
                            _ => event("unknown", line),
                        };
                        last_phase = object
                            .get("phase")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        build.push(object);
                    }
                    Ok(_) => break,
                    Err(_) => {
                        timed_out = true;
                        break;
                    }
                }
            }
        }
        if timed_out {
            // SIGTERM first: a submitted build cancels its Slurm job, then exits.
            signal_group(pid, "TERM");
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                kill_group(pid);
            }
        }
        let status = child.wait().await;
        // Whatever the build left in its process group (it crashed, or was killed) goes too.
        kill_group(pid);
        self.state().children.remove(&pid);
        let stderr = stderr_task.await.unwrap_or_default();
        if timed_out {
            build.push(event(
                "failed",
                format!(
                    "The build took longer than the service's limit ({} s) and was stopped",
                    self.config.build_timeout.as_secs()
                ),
            ));
            return "timeout";
        }
        match (last_phase.as_str(), status) {
            ("ready", Ok(status)) if status.success() => "ready",
            ("failed", _) => "failed",
            (_, status) => {
                let how = match status {
                    Ok(s) => s
                        .code()
                        .map_or_else(|| "was killed".to_string(), |c| format!("exited with {c}")),
                    Err(e) => format!("could not be waited for: {e}"),
                };
                let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                build.push(event(
                    "failed",
                    format!(
                        "The build {how} before it was ready\n{}",
                        crate::printer::sanitize(&tail.join("\n"))
                    ),
                ));
                "failed"
            }
        }
    }
}

/// Whether a remembered ready environment is still in the store (its marker exists), with
/// its kernelspec (`gc` removes both; a rebuild registers the kernel again).
fn ready_still_there(event: &EventObject) -> bool {
    let kernel_gone = event
        .get("kernel_dir")
        .and_then(Value::as_str)
        .is_some_and(|dir| !Path::new(dir).join("kernel.json").is_file());
    if kernel_gone {
        return false;
    }
    let Some(prefix) = event.get("prefix").and_then(Value::as_str) else {
        return event.get("image").is_some_and(|i| !i.is_null());
    };
    let prefix = Path::new(prefix);
    let marker = prefix.with_file_name(format!(
        "{}.toml",
        prefix.file_name().unwrap_or_default().to_string_lossy()
    ));
    marker.is_file()
}

fn log_path(store: &Path, key16: &str) -> PathBuf {
    store.join("logs").join(format!("{key16}.log"))
}

fn log_line(event: &EventObject) -> String {
    let phase = event.get("phase").and_then(Value::as_str).unwrap_or("");
    let message = event.get("message").and_then(Value::as_str).unwrap_or("");
    let mut line = format!("[{phase}] {message}");
    if !line.ends_with('\n') {
        line.push('\n');
    }
    line
}

/// How long a timed-out build has after SIGTERM (to cancel its Slurm job) before SIGKILL.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// SIGKILL a build's process group (the child was started as its group's leader).
fn kill_group(pid: u32) {
    signal_group(pid, "KILL");
}

fn signal_group(pid: u32, signal: &str) {
    if pid == 0 {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// Add the request's BinderHub fields to a `ready` event.
pub fn with_request_fields(event: &EventObject, fields: Value) -> EventObject {
    let mut event = event.clone();
    if let Value::Object(fields) = fields {
        event.extend(fields);
    }
    event
}

/// The JSON of an event (never fails for a map of JSON values).
pub fn to_json(event: &EventObject) -> String {
    serde_json::to_string(event).unwrap_or_else(|_| json!({"phase": "failed"}).to_string())
}
