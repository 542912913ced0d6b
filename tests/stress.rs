//! Many users at once (issue 11): 16 processes × 3 rounds build and register 4 different
//! keys into one store and one kernel directory, a third of them killed with SIGKILL at a
//! random moment. Afterwards every surviving kernel answers a cell, every ready marker
//! has a complete environment, nothing the builds started is still running, and no
//! temporary directory is left. Ignored by default (minutes on 2 cores); `scripts/test`
//! runs it with `--ignored`.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, Sandbox};

/// A small deterministic generator: the test is reproducible from its seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn descendants_of_store(store: &std::path::Path) -> Vec<String> {
    // Any process whose command line names the store: uv, python, kernels, postBuild.
    let needle = store.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&needle))
        .collect()
}

#[test]
#[ignore = "minutes long: scripts/test runs it with --ignored"]
fn sixteen_processes_three_rounds_four_keys_with_kills() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let repos: Vec<String> = (0..4)
        .map(|i| {
            sandbox.repo(
                &format!("stress-{i}"),
                &[("requirements.txt", &format!("six==1.16.0\n# variant {i}\n"))],
            )
        })
        .collect();
    let mut random = Random(0x5eed_1234_abcd_0001);
    let (mut succeeded, mut killed) = (0, 0);
    let mut failures = Vec::new();
    let started = Instant::now();
    for round in 0..3 {
        let mut children: Vec<(Child, bool)> = (0..16)
            .map(|i| {
                let repo = &repos[(i + round) % repos.len()];
                let child = sandbox
                    .command()
                    .args(["build", "--json", repo])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (child, random.next().is_multiple_of(3))
            })
            .collect();
        for (child, kill) in children.iter_mut() {
            if *kill {
                std::thread::sleep(Duration::from_millis(random.next() % 1500));
                let _ = child.kill();
            }
        }
        for (child, kill) in children {
            let output = child.wait_with_output().unwrap();
            if kill && !output.status.success() {
                killed += 1;
            } else if output.status.success() {
                succeeded += 1;
            } else {
                failures.push(stderr(&output));
            }
        }
    }
    // Nothing they started is running once they are gone (give the reaper a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running = descendants_of_store(&sandbox.store());
        if running.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {running:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every ready marker has a complete environment; every kernel answers a cell.
    let e = sandbox.store().join("e");
    let mut markers = 0;
    for entry in std::fs::read_dir(&e).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(slot) = name.strip_suffix(".toml") {
            markers += 1;
            let python = e.join(slot).join("bin/python");
            let output = std::process::Command::new(&python)
                .args(["-c", "import six, ipykernel; print(six.__version__)"])
                .output()
                .unwrap();
            assert!(output.status.success(), "{slot}: {}", stderr(&output));
        }
    }
    let kernels = sandbox.path().join("jupyter/kernels");
    let mut answered = 0;
    for entry in std::fs::read_dir(&kernels).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains('+') || !entry.path().is_dir(),
            "temporary directory left: {name}"
        );
        if entry.path().join("kernel.json").is_file() {
            common::run_cell(
                &entry.path(),
                "import six; print(six.__version__)",
                "1.16.0",
                60,
            );
            answered += 1;
        }
    }
    let temps: Vec<_> = walkdir::WalkDir::new(&e)
        .max_depth(1)
        .into_iter()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().contains(".tmp-"))
        .map(|entry| entry.path().to_path_buf())
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    // The counts, for the log (`--nocapture`).
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout(),
        "stress: {succeeded} succeeded, {killed} killed, {} failed; {markers} ready environments, {answered} kernels answered; {:.1} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "only killed builds may fail: {failures:#?}"
    );
    assert_eq!(markers, 4, "each key ready once");
    assert_eq!(answered, 4, "one kernel per key, each answering");
}
