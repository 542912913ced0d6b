//! Container build benchmarks (issue 4), printed as a table. `cargo bench --bench containers`.
//!
//! 1. hpcbinder's overhead over a raw `podman build` of the same context, both without
//!    the layer cache (`--no-cache`): hpcbinder resolves the lock, assembles the context,
//!    builds, records the image; raw podman only builds the context hpcbinder wrote.
//!    The same for an environment.yml, whose conda packages hpcbinder links on the host.
//! 2. Rebuild after a notebook-only change: a cache hit (registers the kernel).
//! 3. Image size against a hand-written naive Containerfile for the same spec.

#![allow(clippy::print_stdout)] // the table is this program's output

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::channel::{Channel, Package};
use common::{base_image, Sandbox, CONTAINERS_CONF};

fn timed(mut command: Command) -> Duration {
    let start = Instant::now();
    let output = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    start.elapsed()
}

/// Median over three runs of a full `hpcbinder build --target podman` (new key each run)
/// and of a raw `podman build --no-cache` of the context hpcbinder writes for it; also the
/// last image built.
fn overhead(
    sandbox: &Sandbox,
    name: &str,
    repo_for_run: impl Fn(usize) -> String,
) -> (Duration, Duration, String) {
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    let mut reference = String::new();
    for run in 0..3 {
        let repo = repo_for_run(run);
        ours.push(timed({
            let mut c = sandbox.command();
            c.args(["build", &repo, "--target", "podman", "--no-kernel"]);
            c
        }));
        let context = sandbox.path().join(format!("context-{name}-{run}"));
        sandbox.ok(&[
            "build",
            &repo,
            "--target",
            "podman",
            "--containerfile-only",
            context.to_str().unwrap(),
        ]);
        raw.push(timed({
            let mut c = podman();
            c.args([
                "build",
                "--no-cache",
                "--isolation=chroot",
                "--tag",
                &format!("localhost/hpcbinder-bench/raw-{name}:1"),
            ])
            .arg(&context);
            c
        }));
        reference = sandbox.build_ready(&[&repo, "--target", "podman", "--no-kernel"])["image"]
            .as_str()
            .unwrap()
            .to_string();
    }
    ours.sort();
    raw.sort();
    (ours[1], raw[1], reference)
}

fn podman() -> Command {
    let mut command = Command::new("podman");
    command.env("CONTAINERS_CONF", CONTAINERS_CONF);
    command
}

fn image_size(reference: &str) -> u64 {
    let output = podman()
        .args(["image", "inspect", "--format", "{{.Size}}", reference])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

fn main() {
    let sandbox = Sandbox::new();
    sandbox.container_site_config("podman-build-args = [\"--no-cache\"]\n");
    let files = [
        ("requirements.txt", "six==1.16.0\nipykernel==7.4.0\n"),
        ("apt.txt", "jq\n"),
        ("notebook.ipynb", "{}"),
    ];
    let mut rows = Vec::new();

    // 1. Overhead, three runs each (new keys through a comment line).
    let (ours, raw, reference) = overhead(&sandbox, "python", |run| {
        let repo = sandbox.repo(&format!("bench-{run}"), &[files[0], files[1], files[2]]);
        let requirements = format!("six==1.16.0\nipykernel==7.4.0\n# run {run}\n");
        std::fs::write(format!("{repo}/requirements.txt"), requirements).unwrap();
        repo
    });
    rows.push((
        "hpcbinder build --target podman (no layer cache)".to_string(),
        format!("{:.1} s", ours.as_secs_f64()),
        format!(
            "{:.2}× raw (≤ 1.1×)",
            ours.as_secs_f64() / raw.as_secs_f64()
        ),
    ));
    rows.push((
        "raw podman build of the same context".to_string(),
        format!("{:.1} s", raw.as_secs_f64()),
        String::new(),
    ));

    // 1b. The same for an environment.yml: hpcbinder also solves and links the conda
    // packages for /opt/env on the host before podman copies them in.
    let mut channel = Channel::new(&sandbox.path().join("channel"));
    let python = channel.add_python_stub_of("/usr/bin/python3");
    for n in 0..20 {
        let mut package = Package::noarch_python(&format!("hpcb-bench-{n}"), "1.0");
        package.files.push((
            format!("site-packages/hpcb_bench_{n}/__init__.py"),
            "X = 1\n".repeat(2000),
            false,
        ));
        channel.add(&package);
    }
    let dependencies: String = (0..20).map(|n| format!("  - hpcb-bench-{n}\n")).collect();
    let (ours, raw, _) = overhead(&sandbox, "conda", |run| {
        let env = format!(
            "# run {run}\nchannels:\n  - {}\n  - nodefaults\ndependencies:\n  - python={python}\n{dependencies}  - pip:\n    - six==1.16.0\n",
            channel.url()
        );
        sandbox.repo(
            &format!("bench-conda-{run}"),
            &[("environment.yml", &env), files[2]],
        )
    });
    rows.push((
        "the same for environment.yml (21 conda packages + pip)".to_string(),
        format!("{:.1} s", ours.as_secs_f64()),
        format!(
            "{:.2}× raw podman build of its context ({:.1} s)",
            ours.as_secs_f64() / raw.as_secs_f64(),
            raw.as_secs_f64()
        ),
    ));

    // 2. Notebook-only change: a cache hit.
    let repo = sandbox.repo("bench-0", &[]);
    std::fs::write(format!("{repo}/notebook.ipynb"), "{\"cells\": [1]}").unwrap();
    let mut hits: Vec<Duration> = (0..20)
        .map(|_| {
            timed({
                let mut c = sandbox.command();
                c.args(["build", &repo, "--target", "podman"]);
                c
            })
        })
        .collect();
    hits.sort();
    rows.push((
        "rebuild after a notebook-only change (cache hit)".to_string(),
        format!("{:.1} ms", hits[10].as_secs_f64() * 1000.0),
        "≤ 50 ms".to_string(),
    ));

    // 3. Image size vs a naive Containerfile (pip in the image, no cleanup, repo copied first).
    let naive = sandbox.path().join("naive");
    std::fs::create_dir_all(naive.join("wheels")).unwrap();
    for entry in std::fs::read_dir(&common::test_deps().wheelhouse).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), naive.join("wheels").join(entry.file_name())).unwrap();
    }
    std::fs::write(naive.join("requirements.txt"), files[0].1).unwrap();
    std::fs::write(
        naive.join("Containerfile"),
        format!(
            "FROM {}\nCOPY . /home/jovyan\nRUN apt-get update && apt-get install -y python3-venv jq\nRUN python3 -m venv /opt/env && /opt/env/bin/pip install --no-index --find-links /home/jovyan/wheels -r /home/jovyan/requirements.txt\n",
            base_image()
        ),
    )
    .unwrap();
    timed({
        let mut c = podman();
        c.args([
            "build",
            "--isolation=chroot",
            "--tag",
            "localhost/hpcbinder-bench/naive:1",
        ])
        .arg(&naive);
        c
    });
    let (ours, naive) = (
        image_size(&reference),
        image_size("localhost/hpcbinder-bench/naive:1"),
    );
    rows.push((
        "image size, hpcbinder".to_string(),
        format!("{:.0} MB", ours as f64 / 1e6),
        format!("{:.2}× the naive image", ours as f64 / naive as f64),
    ));
    rows.push((
        "image size, naive Containerfile".to_string(),
        format!("{:.0} MB", naive as f64 / 1e6),
        String::new(),
    ));

    println!("| benchmark (median) | value | against target |");
    println!("|---|---:|---|");
    for (what, value, note) in rows {
        println!("| {what} | {value} | {note} |");
    }
}
