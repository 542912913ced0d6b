//! Slurm builds (issue 15), printed as a table. `cargo bench --bench slurm`.
//!
//! Against the real single-node Slurm of `scripts/slurm start` (the node declares 8
//! CPUs on this 2-core machine, so up to 8 build jobs run at once).
//!
//! 1. The overhead of `build --submit` over a local build of the same key, job start
//!    included: each round commits a new key to a git repository (a local clone, as
//!    users have), builds it here (`--local`), removes it (`rm --force`), and builds it
//!    again with `--submit`; the order alternates between rounds. Five rounds, medians.
//! 2. 20 concurrent new keys through the launch service (`/build/...?build_only=true`,
//!    one user): `builder = "slurm"` against `builder = "local"` with `max-builds = 2`,
//!    interleaved, three rounds each: total time (the slowest client) and p99 time to
//!    `ready`, medians of the rounds.

#![allow(clippy::print_stdout)] // the table is this program's output

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::bench::{concurrent, median, percentile, time, Service};
use common::hubapi::{HubApi, HubUsers};
use common::{slurm, GitRepo, Sandbox};

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One round of 20 new keys through a service; (slowest, p99).
fn service_round(
    sandbox: &Sandbox,
    service: &Service,
    runtime: &tokio::runtime::Runtime,
    round: &str,
) -> (Duration, Duration) {
    let urls: Vec<String> = (0..20)
        .map(|i| {
            let path = sandbox.path().join(format!("{round}-{i}"));
            let git = GitRepo::init(&path);
            git.write("requirements.txt", &format!("six==1.16.0\n# {round} {i}\n"));
            git.commit("new key");
            format!(
                "{}/build/{}?build_only=true",
                service.base(),
                common::sse::spec_of(&path)
            )
        })
        .collect();
    let mut times = concurrent(runtime, &urls);
    let slowest = *times.iter().max().unwrap();
    (slowest, percentile(&mut times, 0.99))
}

fn main() {
    let conf = slurm::conf();
    let sandbox = Sandbox::new();
    sandbox.native_site_config("");
    let command = |args: &[&str]| {
        let mut command = sandbox.command();
        command.env("SLURM_CONF", conf).args(args);
        command
    };

    // 1. --submit against a local build of the same key.
    let path = sandbox.path().join("repo");
    let git = GitRepo::init(&path);
    let repo = path.to_str().unwrap();
    let (mut local, mut submitted) = (Vec::new(), Vec::new());
    for round in 0..6 {
        git.write(
            "requirements.txt",
            &format!("six==1.16.0\n# round {round}\n"),
        );
        git.commit("round");
        let key = sandbox.key(&[repo]);
        let mut pair = [("--local", Duration::ZERO), ("--submit", Duration::ZERO)];
        if round % 2 == 1 {
            pair.reverse();
        }
        for (how, elapsed) in &mut pair {
            *elapsed = time(command(&["build", how, "--json", repo]));
            sandbox.ok(&["rm", "--force", &key]);
        }
        if round == 0 {
            continue; // warms the caches
        }
        for (how, elapsed) in pair {
            match how {
                "--local" => local.push(elapsed),
                _ => submitted.push(elapsed),
            }
        }
    }
    let (local, submitted) = (median(local), median(submitted));

    // 2. 20 new keys through the service, Slurm against local.
    let hub = HubApi::start(HubUsers::standard());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let configs = [
        (
            "slurm",
            "builder = \"slurm\"\n[serve]\nmax-builds-per-user = 100\n",
        ),
        (
            "local",
            "[serve]\nmax-builds = 2\nmax-builds-per-user = 100\n",
        ),
    ];
    let mut results: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); 2];
    for round in 0..3 {
        for (index, (name, config)) in configs.iter().enumerate() {
            sandbox.native_site_config(&format!("local-sources = true\n{config}"));
            let service = Service::start(&sandbox, &hub, &[("SLURM_CONF", conf)]);
            let (slowest, p99) =
                service_round(&sandbox, &service, &runtime, &format!("{name}{round}"));
            results[index].0.push(slowest);
            results[index].1.push(p99);
        }
    }
    let [slurm_run, local_run] = [&results[0], &results[1]]
        .map(|(slowest, p99)| (median(slowest.clone()), median(p99.clone())));

    println!("| benchmark | value |");
    println!("|---|---:|");
    println!(
        "| one new key, local build (median of 5) | {} |",
        secs(local)
    );
    println!(
        "| the same key, `build --submit` (job start included; median of 5) | {} |",
        secs(submitted)
    );
    println!(
        "| overhead of --submit | {} ({:.2}×) |",
        secs(submitted.saturating_sub(local)),
        submitted.as_secs_f64() / local.as_secs_f64()
    );
    println!(
        "| 20 concurrent new keys, service builder = \"slurm\" (CPUs=8): total | {} |",
        secs(slurm_run.0)
    );
    println!("| the same: p99 to ready | {} |", secs(slurm_run.1));
    println!(
        "| 20 concurrent new keys, service builder = \"local\", max-builds = 2: total | {} |",
        secs(local_run.0)
    );
    println!("| the same: p99 to ready | {} |", secs(local_run.1));
    println!(
        "| Slurm total / local total | {:.2}× |",
        slurm_run.0.as_secs_f64() / local_run.0.as_secs_f64()
    );
}
