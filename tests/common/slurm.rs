//! The tests' one real Slurm (munge, slurmctld, slurmd on this machine), started by the
//! project's script `scripts/slurm start` (idempotent: test binaries share the cluster;
//! `scripts/test` stops it at the end), and what tests ask it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cluster's slurm.conf, for SLURM_CONF (starting the cluster the first time).
pub fn conf() -> &'static Path {
    static CONF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CONF.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm");
        let output = Command::new(&script)
            .arg("start")
            .output()
            .expect("run scripts/slurm start");
        assert!(
            output.status.success(),
            "scripts/slurm start failed (it installs Debian's slurm packages the first time):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

/// A Slurm client command with the cluster's config.
pub fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("SLURM_CONF", conf());
    command
}

/// `squeue --states=all` of one job: its state (`COMPLETED`, `CANCELLED`, `TIMEOUT`, ...)
/// and its name, or `None` when Slurm does not know it.
pub fn job(id: &str) -> Option<(String, String)> {
    let output = command("squeue")
        .args(["--noheader", "--states=all", "--format=%T|%j", "--jobs", id])
        .output()
        .expect("run squeue");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next()?.trim().to_string();
    let (state, name) = line.split_once('|')?;
    Some((state.to_string(), name.to_string()))
}

/// Wait until the job has ended (up to `seconds`); its final state.
pub fn wait_ended(id: &str, seconds: u64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let state = job(id).map(|(state, _)| state).unwrap_or_default();
        if !matches!(
            state.as_str(),
            "PENDING" | "RUNNING" | "COMPLETING" | "CONFIGURING"
        ) {
            return state;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Slurm job {id} still {state} after {seconds} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}
