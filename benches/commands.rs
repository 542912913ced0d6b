//! Start-up benchmarks for the spine's commands, printed as a table.
//!
//! `cargo bench --bench commands` times `detect`, `key` and `build --dry-run` on the demo
//! repository (as a plain folder, as a git work tree, and as a cached `file://` clone at a
//! full commit id), next to `python3 -c pass` as the yardstick of process start-up.
//! Targets (issue 2): each command on a local repository under 50 ms.

#![allow(clippy::print_stdout)] // the table is this program's output

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 40;

fn main() {
    let binary = env!("CARGO_BIN_EXE_hpcbinder");
    let work = tempfile::tempdir().expect("tempdir");
    let plain = work.path().join("demo-plain");
    let git = work.path().join("demo-git");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo");
    copy(&fixture, &plain);
    copy(&fixture, &git);
    let commit = git_init(&git);
    let url = format!("file://{}", git.display());

    let sealed = |args: &[&str]| {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("HOME", work.path().join("home"))
            .env("HPCBINDER_STORE", work.path().join("store"))
            .env("HPCBINDER_SITE_CONFIG", work.path().join("site.toml"))
            .env("JUPYTER_DATA_DIR", work.path().join("jupyter"));
        command
    };
    let plain = plain.to_str().unwrap();
    let git = git.to_str().unwrap();
    // Warm the clone cache once: later runs at a full commit id need no fetch.
    assert!(sealed(&["key", &url, "--ref", &commit])
        .output()
        .unwrap()
        .status
        .success());

    let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();
    rows.push((
        "python3 -c pass (reference)".into(),
        time(|| {
            let mut c = Command::new("python3");
            c.args(["-c", "pass"]);
            c
        }),
    ));
    for (label, args) in [
        ("detect <plain dir>", vec!["detect", plain]),
        ("key <plain dir>", vec!["key", plain]),
        (
            "build --dry-run <plain dir>",
            vec!["build", "--dry-run", plain],
        ),
        ("detect <git work tree>", vec!["detect", git]),
        ("key <git work tree>", vec!["key", git]),
        (
            "build --dry-run <git work tree>",
            vec!["build", "--dry-run", git],
        ),
        (
            "key file:// clone @ full sha (cached)",
            vec!["key", url.as_str(), "--ref", commit.as_str()],
        ),
        (
            "key file:// clone @ HEAD (fetch)",
            vec!["key", url.as_str()],
        ),
    ] {
        rows.push((label.into(), time(|| sealed(&args))));
    }

    println!("| command ({RUNS} runs) | min ms | median ms | p95 ms |");
    println!("|---|---:|---:|---:|");
    for (label, mut samples) in rows {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            ms(samples[0]),
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() * 95 / 100])
        );
    }
}

fn time(make: impl Fn() -> Command) -> Vec<Duration> {
    // One warm-up run, untimed.
    let _ = make().output();
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let output = make().output().expect("run");
            let elapsed = start.elapsed();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            elapsed
        })
        .collect()
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn git_init(path: &Path) -> String {
    let repo = git2::Repository::init(path).unwrap();
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let signature = git2::Signature::now("bench", "bench@example.org").unwrap();
    repo.commit(Some("HEAD"), &signature, &signature, "demo", &tree, &[])
        .unwrap()
        .to_string()
}
