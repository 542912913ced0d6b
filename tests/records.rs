//! Archived records as sources, against a loopback server that answers like doi.org's
//! handle API and Zenodo's records API (tests/common/records.rs): a record becomes a real
//! venv whose kernel answers; a new version is a new identity; a tampered file is a
//! checksum error naming it; a provider that is down is a clear error naming it.

mod common;

#[path = "records/ckan.rs"]
mod ckan;
#[path = "records/dataverse.rs"]
mod dataverse;
#[path = "records/hydroshare.rs"]
mod hydroshare;
#[path = "records/swh.rs"]
mod swh;

use std::path::{Path, PathBuf};

use common::records::{zip_of, RecordServer};
use common::Sandbox;

const DOI: &str = "10.5281/zenodo.3242074";

fn sandbox(server: &RecordServer) -> Sandbox {
    let sandbox = Sandbox::new();
    sandbox.native_site_config(&server.config());
    sandbox
}

/// A record of a repository as Zenodo's GitHub integration makes them: one zip holding
/// one top-level folder.
fn repository_zip(requirements: &str) -> Vec<u8> {
    zip_of(&[
        ("binder-demo-1.0/requirements.txt", requirements),
        ("binder-demo-1.0/index.ipynb", "{}"),
    ])
}

/// The `key:` line of a `build --dry-run` plan.
fn key_line(plan: &str) -> String {
    plan.lines()
        .find(|l| l.starts_with("key:"))
        .unwrap_or_else(|| panic!("no key line in {plan}"))
        .to_string()
}

/// `folder` (`downloads`, `records`) of the sandbox user's cache in the store.
fn user_cache(sandbox: &Sandbox, folder: &str) -> PathBuf {
    sandbox.store().join("cache").join("u0").join(folder)
}

/// The names in `dir`, sorted; none when it does not exist.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The assembled tree of the record whose cache folder starts with `prefix`
/// (`zenodo-3242074-`).
fn record_tree(sandbox: &Sandbox, prefix: &str) -> PathBuf {
    let records = user_cache(sandbox, "records");
    names_in(&records)
        .into_iter()
        .find(|name| name.starts_with(prefix))
        .map(|name| records.join(name).join("tree"))
        .unwrap_or_else(|| panic!("no tree {prefix}* in {}", records.display()))
}

/// The launch service's build events for `<provider>/<spec>` (`build_only`, as alice).
fn service_build(service: &common::bench::Service, spec: &str) -> Vec<serde_json::Value> {
    let body = common::sse::spawn_stream(
        format!("{}/build/{spec}?build_only=true", service.base()),
        "alice-token",
    )
    .join()
    .unwrap();
    common::sse::events(&body)
}

/// Build `spec` (a record of a repository needing six) and check its kernel imports it.
fn build_with_six(sandbox: &Sandbox, spec: &str) -> serde_json::Value {
    let ready = sandbox.build_ready(&[spec]);
    let kernel_dir = Path::new(ready["kernel_dir"].as_str().unwrap());
    common::run_cell(
        kernel_dir,
        "import six; print(six.__version__)",
        "1.16.0",
        60,
    );
    ready
}

#[test]
fn a_zenodo_record_from_a_loopback_zenodo_api_builds_a_venv_whose_kernel_answers() {
    let server = RecordServer::start();
    server.publish(
        DOI,
        3242074,
        &[("binder-demo-1.0.zip", repository_zip("six==1.16.0\n"))],
    );
    let sandbox = sandbox(&server);
    let spec = format!("zenodo/{DOI}");
    let detected = sandbox.ok(&["detect", &spec]);
    assert!(detected.contains("requirements.txt"), "{detected}");
    let ready = build_with_six(&sandbox, &spec);
    // Unpacked one level: the folder's files are the repository's root.
    let plan = sandbox.ok(&["build", "--dry-run", &spec]);
    assert!(plan.contains("source:    http://127.0.0.1:"), "{plan}");
    assert!(plan.contains("/records/3242074"), "{plan}");
    // The download is cached by its checksum: the second build reuses it.
    let content = "/api/records/3242074/files/binder-demo-1.0.zip/content";
    assert_eq!(server.hits(content), 1);
    let again = sandbox.build_ready(&[&format!("doi:{DOI}")]);
    assert_eq!(again["prefix"], ready["prefix"]);
    assert_eq!(server.hits(content), 1);
}

#[test]
fn a_new_version_of_the_record_is_a_new_identity() {
    let server = RecordServer::start();
    server.publish(
        DOI,
        3242074,
        &[("repo.zip", repository_zip("six==1.16.0\n"))],
    );
    let sandbox = sandbox(&server);
    let spec = format!("zenodo/{DOI}");
    let first = sandbox.ok(&["build", "--dry-run", &spec]);
    // The concept DOI now resolves to a new version: another record id.
    server.publish(
        DOI,
        3242099,
        &[("repo.zip", repository_zip("six==1.16.0\n# v2\n"))],
    );
    let second = sandbox.ok(&["build", "--dry-run", &spec]);
    assert!(first.contains("/records/3242074"), "{first}");
    assert!(second.contains("/records/3242099"), "{second}");
    assert_ne!(key_line(&first), key_line(&second));
}

#[test]
fn a_tampered_file_is_a_checksum_error_naming_it_and_nothing_is_kept() {
    let server = RecordServer::start();
    server.publish(
        DOI,
        3242074,
        &[("repo.zip", repository_zip("six==1.16.0\n"))],
    );
    server.tamper(3242074, "repo.zip", repository_zip("evil==6.6.6\n"));
    let sandbox = sandbox(&server);
    let output = sandbox.run(&["build", &format!("zenodo/{DOI}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("repo.zip does not match its published checksum (md5:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: the download was damaged"),
        "{stderr}"
    );
    let kept = names_in(&user_cache(&sandbox, "downloads"));
    assert!(kept.is_empty(), "{kept:?}");
}

#[test]
fn a_provider_that_is_down_is_a_clear_error_naming_it() {
    let resolver = RecordServer::start();
    let zenodo = RecordServer::start();
    zenodo.publish(
        DOI,
        3242074,
        &[("repo.zip", repository_zip("six==1.16.0\n"))],
    );
    resolver.point(DOI, &format!("{}/records/3242074", zenodo.base()));
    let sandbox = Sandbox::new();
    sandbox.native_site_config(&format!(
        "[records]\ndoi-resolver = \"{}\"\nzenodo = \"{}\"\n",
        resolver.base(),
        zenodo.base()
    ));
    zenodo.set_down(true);
    let output = sandbox.run(&["build", &format!("zenodo/{DOI}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("error: could not get zenodo/"), "{stderr}");
    assert!(stderr.contains("Zenodo did not answer"), "{stderr}");
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    // Retried with backoff before giving up.
    assert_eq!(zenodo.hits("/api/records/3242074"), 4);
    resolver.set_down(true);
    let output = sandbox.run(&["build", &format!("doi:{DOI}")]);
    assert!(common::stderr(&output).contains("the DOI resolver did not answer"));
}

#[test]
fn dois_that_do_not_exist_or_lead_elsewhere_say_so() {
    let server = RecordServer::start();
    server.point(
        "10.1234/elsewhere",
        "https://figshare.example.org/articles/1",
    );
    let sandbox = sandbox(&server);
    let output = sandbox.run(&["build", "doi:10.1234/missing"]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the DOI 10.1234/missing does not exist"),
        "{stderr}"
    );
    let output = sandbox.run(&["build", "https://doi.org/10.1234/elsewhere"]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("figshare.example.org"), "{stderr}");
    assert!(stderr.contains("not supported yet"), "{stderr}");
    let output = sandbox.run(&["build", "zenodo/not-a-doi"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(common::stderr(&output).contains("expected a DOI"));
    let output = sandbox.run(&["build", "doi:10.1/../../etc"]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn a_record_of_several_files_is_the_repository_as_it_is() {
    let server = RecordServer::start();
    server.publish(
        DOI,
        3242074,
        &[
            ("requirements.txt", b"six==1.16.0\n".to_vec()),
            ("notebooks/index.ipynb", b"{}".to_vec()),
        ],
    );
    let sandbox = sandbox(&server);
    let ready = sandbox.build_ready(&[&format!("zenodo/{DOI}"), "--no-verify"]);
    assert_eq!(ready["phase"], "ready");
    let plan = sandbox.ok(&["build", "--dry-run", &format!("zenodo/{DOI}")]);
    assert!(plan.contains("buildpack: python"), "{plan}");
    assert!(plan.contains("(ready)"), "{plan}");
}

#[test]
fn the_launch_service_builds_a_zenodo_doi_from_a_loopback_zenodo_and_names_its_version() {
    let server = RecordServer::start();
    // A concept DOI resolves to the newest version's record.
    let concept = "10.5281/zenodo.1000";
    server.publish(
        concept,
        3242074,
        &[("repo.zip", repository_zip("six==1.16.0\n"))],
    );
    let sandbox = Sandbox::new();
    sandbox.native_site_config(&format!(
        "local-sources = true\n{}[serve]\nproviders = [\"gh\", \"zenodo\", \"figshare\"]\n",
        server.config()
    ));
    let hub = common::hubapi::HubApi::start(common::hubapi::HubUsers::standard());
    let service = common::bench::Service::start(&sandbox, &hub, &[]);
    let providers: serde_json::Value =
        reqwest::blocking::get(format!("{}/api/repoproviders", service.base()))
            .unwrap()
            .json()
            .unwrap();
    assert!(providers
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "zenodo"));
    let events = service_build(&service, &format!("zenodo/{concept}"));
    let ready = events.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{events:?}");
    assert_eq!(ready["binder_request"], format!("v2/zenodo/{concept}"));
    assert_eq!(
        ready["binder_persistent_request"],
        "v2/zenodo/10.5281/zenodo.3242074"
    );
    // A Figshare DOI without a version names the newest; its persistent request adds it.
    server.publish_figshare(
        FIGSHARE_DOI,
        9782777,
        2,
        &[("demo.zip", repository_zip("six==1.16.0\n"))],
    );
    let events = service_build(&service, &format!("figshare/{FIGSHARE_DOI}"));
    let ready = events.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{events:?}");
    assert_eq!(
        ready["binder_persistent_request"],
        format!("v2/figshare/{FIGSHARE_DOI}.v2")
    );
    // A DOI that does not exist is BinderHub's unresolved-ref failure.
    let events = service_build(&service, "zenodo/10.5281/zenodo.999");
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "failed");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("Could not resolve ref"),
        "{last}"
    );
}

const FIGSHARE_DOI: &str = "10.6084/m9.figshare.9782777";

#[test]
fn a_figshare_article_from_a_loopback_figshare_api_builds_and_each_version_is_an_identity() {
    let server = RecordServer::start();
    server.publish_figshare(
        FIGSHARE_DOI,
        9782777,
        1,
        &[("demo.zip", repository_zip("six==1.16.0\n"))],
    );
    let sandbox = sandbox(&server);
    let spec = format!("figshare/{FIGSHARE_DOI}");
    build_with_six(&sandbox, &spec);
    let first = sandbox.ok(&["build", "--dry-run", &spec]);
    assert!(first.contains("/articles/9782777/1"), "{first}");
    // A new version: the DOI without `.vN` now means version 2, another identity.
    server.publish_figshare(
        FIGSHARE_DOI,
        9782777,
        2,
        &[("demo.zip", repository_zip("six==1.16.0\n# v2\n"))],
    );
    let second = sandbox.ok(&["build", "--dry-run", &spec]);
    assert!(second.contains("/articles/9782777/2"), "{second}");
    // Only the link-only entry is never fetched.
    assert_eq!(server.hits("/files/978277710"), 1);
    // A tampered file is refused by its published md5 (a version not downloaded yet:
    // what is in the cache was verified when it came).
    server.publish_figshare(
        FIGSHARE_DOI,
        9782777,
        3,
        &[("demo.zip", repository_zip("six==1.16.0\n# v3\n"))],
    );
    server.tamper_path("/files/978277730", b"not the zip".to_vec());
    let output = sandbox.run(&["build", &spec]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("demo.zip does not match its published checksum"),
        "{stderr}"
    );
    // Figshare down (its DOI still resolving): a clear error naming it.
    let resolver = RecordServer::start();
    resolver.point(
        FIGSHARE_DOI,
        &format!("{}/articles/software/binder_demo/9782777", server.base()),
    );
    let elsewhere = Sandbox::new();
    elsewhere.native_site_config(&format!(
        "[records]\ndoi-resolver = \"{}\"\nfigshare = \"{1}\"\nfigshare-api = \"{1}\"\n",
        resolver.base(),
        server.base()
    ));
    server.set_down(true);
    let output = elsewhere.run(&["build", &format!("doi:{FIGSHARE_DOI}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Figshare did not answer"), "{stderr}");
    assert!(stderr.contains("HTTP 503"), "{stderr}");
}

#[test]
fn a_download_on_a_terminal_draws_a_bar_of_its_bytes_from_a_loopback_zenodo() {
    let server = RecordServer::start();
    // 2 MiB sent in 64 KiB pieces 50 ms apart: about 1.6 s, several progress events.
    let mut data: Vec<u8> = Vec::new();
    let mut seed = 1u32;
    while data.len() < 2 << 20 {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        data.extend_from_slice(&seed.to_le_bytes());
    }
    server.publish(
        DOI,
        3242074,
        &[
            ("requirements.txt", b"six==1.16.0\n".to_vec()),
            ("data.bin", data),
        ],
    );
    server.set_slow(true);
    let sandbox = sandbox(&server);
    // The real binary under a pseudo-terminal (util-linux `script`), with the sandbox's
    // environment.
    let binary = sandbox.command();
    let mut command = std::process::Command::new("script");
    command.env_clear();
    for (key, value) in binary.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    let output = command
        .env("TERM", "xterm")
        .current_dir(binary.get_current_dir().unwrap())
        .args(["-qefc"])
        .arg(format!(
            "{} build --dry-run zenodo/{DOI}",
            env!("CARGO_BIN_EXE_hpcbinder")
        ))
        .arg("/dev/null")
        .output()
        .expect("run script");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    // A bar of bytes done out of the published size, with the file's name.
    assert!(
        screen.contains("fetching Downloading data.bin ["),
        "{screen}"
    );
    assert!(screen.contains("/2.00 MiB"), "{screen}");
}

#[test]
fn a_record_over_the_sites_archive_limits_is_refused_and_nothing_is_kept() {
    let server = RecordServer::start();
    let big = "x".repeat(2 << 20);
    server.publish(
        DOI,
        3242074,
        &[(
            "repo.zip",
            zip_of(&[
                ("repo/requirements.txt", "six==1.16.0\n"),
                ("repo/big.dat", &big),
            ]),
        )],
    );
    let sandbox = Sandbox::new();
    sandbox.native_site_config(&format!(
        "{}[archives]\nmax-bytes = 1048576\n",
        server.config()
    ));
    let output = sandbox.run(&["build", &format!("zenodo/{DOI}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("repo.zip: "), "{stderr}");
    assert!(stderr.contains("big.dat"), "{stderr}");
    let kept = names_in(&user_cache(&sandbox, "records"));
    assert!(kept.is_empty(), "{kept:?}");
    // The site's default limits take it.
    let roomy = self::sandbox(&server);
    let plan = roomy.ok(&["build", "--dry-run", &format!("zenodo/{DOI}")]);
    assert!(plan.contains("buildpack: python"), "{plan}");
}
