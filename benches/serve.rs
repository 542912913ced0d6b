//! Launch service benchmarks (issue 13), printed as a table. `cargo bench --bench serve`.
//!
//! The service runs on loopback (not behind the Hub's proxy), with a loopback stand-in
//! for the Hub API that resolves users' tokens (tests/common/hubapi.rs; the service
//! caches a token's user for 60 s, so the Hub is asked once per client token here). The
//! repositories are git repositories served over `file://`, as a local clone is.
//!
//! 1. 500 concurrent `build_only` event streams for an already-built key: p50/p99 time to
//!    the `ready` event (target p99 ≤ 100 ms), the service's peak RSS (target ≤ 150 MB),
//!    errors (target 0). Five rounds; the table shows the median round.
//! 2. 50 concurrent requests for one new key: exactly one build, and each client's time to
//!    `ready` ≤ 1.1× a single build's through the service. Three interleaved rounds
//!    (a single build of a new commit, then 50 clients of another new commit).

#![allow(clippy::print_stdout)] // the table is this program's output

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::bench::{concurrent, percentile, rss_kb, time_to_ready, Service};
use common::hubapi::{HubApi, HubUsers};
use common::{GitRepo, Sandbox};

fn metric(port: u16, name: &str) -> f64 {
    common::sse::metric(&format!("http://127.0.0.1:{port}/metrics"), name)
}

fn main() {
    let sandbox = Sandbox::new();
    sandbox.native_site_config(
        "local-sources = true\n[serve]\nmax-builds = 2\nmax-builds-per-user = 100\n",
    );
    let hub = HubApi::start(HubUsers::standard());
    let service = Service::start(&sandbox, &hub, &[]);
    let (pid, port, base) = (service.child.id(), service.port, service.base());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(600)
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();

    // 1. 500 concurrent streams of a built key.
    let built = sandbox.path().join("built");
    let git = GitRepo::init(&built);
    git.write("requirements.txt", "six==1.16.0\n");
    git.commit("built");
    let url = format!(
        "{base}/build/{}?build_only=true",
        common::sse::spec_of(&built)
    );
    runtime
        .block_on(time_to_ready(&client, &url))
        .expect("the first build");
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let (mut times, errors) = runtime.block_on(async {
            let tasks: Vec<_> = (0..500)
                .map(|_| {
                    let (client, url) = (client.clone(), url.clone());
                    tokio::spawn(async move { time_to_ready(&client, &url).await })
                })
                .collect();
            let mut times = Vec::new();
            let mut errors = 0;
            for task in tasks {
                match task.await {
                    Ok(Ok(t)) => times.push(t),
                    _ => errors += 1,
                }
            }
            (times, errors)
        });
        let p50 = percentile(&mut times, 0.5);
        let p99 = percentile(&mut times, 0.99);
        rounds.push((p99, p50, errors, rss_kb(pid, "VmRSS:")));
    }
    rounds.sort();
    let (p99, p50, _, rss) = rounds[rounds.len() / 2];
    let errors: usize = rounds.iter().map(|r| r.2).sum();
    let peak = rss_kb(pid, "VmHWM:");

    // 2. 50 concurrent requests for one new key, against one build alone.
    let fresh = sandbox.path().join("fresh");
    let git = GitRepo::init(&fresh);
    let fresh_url = format!(
        "{base}/build/{}?build_only=true",
        common::sse::spec_of(&fresh)
    );
    let mut ratios = Vec::new();
    let mut singles = Vec::new();
    let mut builds_per_round = Vec::new();
    for round in 0..3 {
        git.write(
            "requirements.txt",
            &format!("six==1.16.0\n# single {round}\n"),
        );
        git.commit("single");
        std::thread::sleep(Duration::from_secs(4)); // past the resolver's cache
        let single = runtime
            .block_on(time_to_ready(&client, &fresh_url))
            .expect("a single build");
        git.write(
            "requirements.txt",
            &format!("six==1.16.0\n# fifty {round}\n"),
        );
        git.commit("fifty");
        std::thread::sleep(Duration::from_secs(4));
        let before = metric(port, "hpcbinder_builds_total{outcome=\"ready\"}");
        let times = concurrent(&runtime, &vec![fresh_url.clone(); 50]);
        let after = metric(port, "hpcbinder_builds_total{outcome=\"ready\"}");
        builds_per_round.push(after - before);
        let slowest = times.iter().max().copied().unwrap_or_default();
        ratios.push(slowest.as_secs_f64() / single.as_secs_f64());
        singles.push(single);
    }
    ratios.sort_by(f64::total_cmp);
    singles.sort();
    let ratio = ratios[1];
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    println!("| benchmark | value | against target |");
    println!("|---|---:|---|");
    println!(
        "| 500 concurrent build_only streams, built key: p50 to ready | {} ms |  |",
        ms(p50)
    );
    println!(
        "| the same: p99 to ready (median of 5 rounds) | {} ms | {} (≤ 100 ms) |",
        ms(p99),
        if p99 <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "| service RSS under that load (peak) | {:.1} MB ({:.1} MB) | {} (≤ 150 MB) |",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        if peak <= 150 * 1024 { "met" } else { "NOT met" }
    );
    println!(
        "| errors in 2500 streams | {errors} | {} (0) |",
        if errors == 0 { "met" } else { "NOT met" }
    );
    println!(
        "| one build of a new key through the service (median) | {} ms |  |",
        ms(singles[1])
    );
    println!(
        "| 50 concurrent clients of one new key: slowest / one build (median of 3) | {ratio:.2}× | {} (≤ 1.1×) |",
        if ratio <= 1.1 { "met" } else { "NOT met" }
    );
    println!(
        "| builds per 50-client round | {:?} | {} (exactly 1) |",
        builds_per_round,
        if builds_per_round.iter().all(|b| *b == 1.0) {
            "met"
        } else {
            "NOT met"
        }
    );
}
