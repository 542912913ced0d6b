//! What the service benchmarks share: a service on loopback in front of a Hub API
//! stand-in, clients timing event streams to `ready`, percentiles and memory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::hubapi::HubApi;
use super::Sandbox;

/// `hpcbinder serve` on loopback; killed when dropped.
pub struct Service {
    pub child: Child,
    pub port: u16,
}

impl Service {
    /// Start the sandbox's service against `hub`, with `env` added, and wait until it
    /// answers.
    pub fn start(sandbox: &Sandbox, hub: &HubApi, env: &[(&str, &Path)]) -> Self {
        let port = super::sse::free_port();
        let mut command = sandbox.command();
        command
            .args(["serve", "--port", &port.to_string()])
            .env("JUPYTERHUB_API_URL", hub.api_url())
            .env("JUPYTERHUB_API_TOKEN", "service-secret")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let service = Self {
            child: command.spawn().unwrap(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::blocking::get(format!("{}/versions", service.base())).is_err() {
            assert!(Instant::now() < deadline, "serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS:`, `VmHWM:`).
pub fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Stream one build; the time to its last event, which must be `ready`.
pub async fn time_to_ready(client: &reqwest::Client, url: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let response = client
        .get(url)
        .header("Accept", "text/event-stream")
        .header("Authorization", "token alice-token")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body = response.text().await.map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    let last = body
        .split("\n\n")
        .filter(|b| b.starts_with("data:"))
        .last()
        .unwrap_or_default();
    if last.contains("\"phase\":\"ready\"") {
        Ok(elapsed)
    } else {
        Err(format!("not ready: {last}"))
    }
}

/// Time `urls` streamed at once: each one's time to `ready` (errors panic).
pub fn concurrent(runtime: &tokio::runtime::Runtime, urls: &[String]) -> Vec<Duration> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1800))
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = urls
            .iter()
            .map(|url| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move { time_to_ready(&client, &url).await })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap().expect("ready"));
        }
        times
    })
}

/// The `p` quantile (0..=1) of `samples` (sorted in place).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

/// Run `command` (its output discarded), require success, and return how long it took.
pub fn time(mut command: Command) -> Duration {
    let start = Instant::now();
    let output = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let elapsed = start.elapsed();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

/// The median of `samples`.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
