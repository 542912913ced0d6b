//! Start-up benchmarks for the spine's commands, printed as a table.
//!
//! `cargo bench --bench commands` times `detect`, `key` and `build --dry-run` on the demo
//! repository (as a plain folder, as a git work tree, and as a cached `file://` clone at a
//! full commit id), next to `python3 -c pass` as the yardstick of process start-up.
//! Targets: each command on a local repository under 50 ms (issue 2); the same command on a
//! git work tree ≤ 1.5× a plain folder (issue 8). Runs are interleaved (every command once
//! per round) so drift on a shared machine hits all rows alike.

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
        // Sealed like the tests: nothing from the developer's environment or config.
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", work.path().join("home"))
            .env("XDG_CONFIG_HOME", work.path().join("config"))
            .env("XDG_CACHE_HOME", work.path().join("cache"))
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

    let commands: Vec<(&str, Vec<&str>)> = vec![
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
    ];
    let reference = || {
        let mut c = Command::new("python3");
        c.args(["-c", "pass"]);
        c
    };
    // One untimed warm-up of each, then RUNS rounds.
    let _ = reference().output();
    for (_, args) in &commands {
        let _ = sealed(args).output();
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); commands.len() + 1];
    for _ in 0..RUNS {
        samples[0].push(time_one(reference()));
        for (index, (_, args)) in commands.iter().enumerate() {
            samples[index + 1].push(time_one(sealed(args)));
        }
    }
    let labels: Vec<&str> = std::iter::once("python3 -c pass (reference)")
        .chain(commands.iter().map(|(label, _)| *label))
        .collect();
    let medians: Vec<Duration> = samples
        .iter_mut()
        .map(|s| {
            s.sort();
            s[s.len() / 2]
        })
        .collect();

    println!(
        "| command ({RUNS} interleaved runs) | min ms | median ms | p95 ms | against target |"
    );
    println!("|---|---:|---:|---:|---|");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (index, label) in labels.iter().enumerate() {
        let sorted = &samples[index];
        // A git work tree row is held to the same command on the plain folder.
        let target = match label.strip_suffix("<git work tree>") {
            Some(command) => {
                let plain = labels
                    .iter()
                    .position(|l| *l == format!("{command}<plain dir>"))
                    .expect("a plain row for each git row");
                format!(
                    "{:.2}× plain (≤ 1.5×)",
                    medians[index].as_secs_f64() / medians[plain].as_secs_f64()
                )
            }
            None if index == 0 => String::new(),
            None => "< 50 ms".to_string(),
        };
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {target} |",
            ms(sorted[0]),
            ms(medians[index]),
            ms(sorted[sorted.len() * 95 / 100])
        );
    }
}

fn time_one(mut command: Command) -> Duration {
    let start = Instant::now();
    let output = command.output().expect("run");
    let elapsed = start.elapsed();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
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
