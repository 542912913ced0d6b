//! CKAN datasets against a loopback server that answers like a CKAN 2.10 site's action
//! API (`/api/3/action/status_show`, `package_show?id=<name or id>` and
//! `activity_data_show?id=<activity>&object_type=package`, each `{"help", "success",
//! "result"}`; resources with `url`, `url_type`, `hash`, `size`), with the shapes
//! repo2docker's CKAN provider reads, and the site's upload URLs
//! (`/dataset/<id>/resource/<resource id>/download/<file>`).

use md5::Digest as _;

use crate::common;
use crate::common::records::{Answer, RecordServer};

const DATASET_ID: &str = "5b6f9f7a-3c1e-4b8e-9d6a-0f2f6c1d2e3a";
const NAME: &str = "binder-demo";
/// 1709043354 seconds since the epoch (repo2docker's test date).
const MODIFIED: &str = "2024-02-27T14:15:54.573058";
const ACTIVITY: &str = "1f0c8b3e-9a77-4d2c-8f55-3b1d0e6a7c42";

/// A resource of a dataset: an upload on the site, or a link elsewhere.
struct Resource {
    name: &'static str,
    bytes: Vec<u8>,
    /// The `hash` field as published.
    hash: String,
    /// A link elsewhere instead of an upload.
    link: Option<&'static str>,
}

fn md5_hash(bytes: &[u8]) -> String {
    format!("md5:{}", hex::encode(md5::Md5::digest(bytes)))
}

/// An upload whose `hash` is its md5 (`md5:<hex>`).
fn verified(name: &'static str, bytes: &[u8]) -> Resource {
    Resource {
        name,
        bytes: bytes.to_vec(),
        hash: md5_hash(bytes),
        link: None,
    }
}

/// An upload without a `hash`.
fn unverified(name: &'static str, bytes: &[u8]) -> Resource {
    Resource {
        hash: String::new(),
        ..verified(name, bytes)
    }
}

/// The id of resource `index` in `revision` of the dataset.
fn resource_id(revision: u32, index: usize) -> String {
    format!("{revision:08}-0000-4000-8000-{index:012}")
}

/// CKAN's answer to an action.
fn envelope(server: &RecordServer, action: &str, result: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "help": format!("{}/api/3/action/help_show?name={action}", server.base()),
        "success": true,
        "result": result,
    })
}

/// The site answers `status_show` as CKAN 2.10 does.
fn serve_status(server: &RecordServer) {
    let status = envelope(
        server,
        "status_show",
        serde_json::json!({
            "site_title": "Loopback CKAN", "site_description": "", "site_url": server.base(),
            "ckan_version": "2.10.4", "error_emails_to": null, "locale_default": "en",
            "extensions": ["activity", "datastore"],
        }),
    );
    server.answers("/api/3/action/status_show", vec![Answer::json(&status)]);
}

/// The dataset's package dict in `revision` (last modified `modified`), its uploads
/// served by `server`.
fn package(
    server: &RecordServer,
    revision: u32,
    modified: &str,
    resources: &[Resource],
) -> serde_json::Value {
    let base = server.base();
    let listed: Vec<serde_json::Value> = resources
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let id = resource_id(revision, index);
            let url = match r.link {
                Some(link) => link.to_string(),
                None => {
                    let path = format!("/dataset/{DATASET_ID}/resource/{id}/download/{}", r.name);
                    server.route(&path, "application/octet-stream", r.bytes.clone());
                    format!("{base}{path}")
                }
            };
            serde_json::json!({
                "cache_last_updated": null, "cache_url": null, "created": "2024-01-05T10:00:00.000001",
                "datastore_active": false, "description": "", "format": "", "hash": r.hash, "id": id,
                "last_modified": modified, "metadata_modified": modified, "mimetype": null,
                "mimetype_inner": null, "name": r.name, "package_id": DATASET_ID, "position": index,
                "resource_type": null, "size": if r.link.is_some() { None } else { Some(r.bytes.len()) },
                "state": "active", "url": url, "url_type": if r.link.is_some() { "" } else { "upload" },
            })
        })
        .collect();
    serde_json::json!({
        "author": null, "author_email": null, "creator_user_id": "9e7d1c2b-0000-4000-8000-000000000001",
        "id": DATASET_ID, "isopen": true, "license_id": "cc-by", "license_title": "Creative Commons Attribution",
        "maintainer": null, "maintainer_email": null, "metadata_created": "2024-01-05T10:00:00.000001",
        "metadata_modified": modified, "name": NAME, "notes": "A binder demo.", "num_resources": listed.len(),
        "num_tags": 0, "owner_org": null, "private": false, "state": "active", "title": "Binder demo",
        "type": "dataset", "url": "", "version": null, "resources": listed, "tags": [], "groups": [],
        "relationships_as_object": [], "relationships_as_subject": [],
    })
}

/// Publish the dataset's current state: `package_show` by name and by id.
fn publish(server: &RecordServer, revision: u32, modified: &str, resources: &[Resource]) {
    serve_status(server);
    let result = envelope(
        server,
        "package_show",
        package(server, revision, modified, resources),
    );
    for id in [NAME, DATASET_ID] {
        server.answers(
            &format!("/api/3/action/package_show?id={id}"),
            vec![Answer::json(&result)],
        );
    }
}

/// Publish the dataset as activity [`ACTIVITY`] recorded it.
fn publish_activity(server: &RecordServer, revision: u32, modified: &str, resources: &[Resource]) {
    let result = envelope(
        server,
        "activity_data_show",
        package(server, revision, modified, resources),
    );
    server.answers(
        &format!("/api/3/action/activity_data_show?id={ACTIVITY}&object_type=package"),
        vec![Answer::json(&result)],
    );
}

/// `ckan/<url-escaped dataset URL>` for `<site>/dataset/<rest>`.
fn spec(site: &str, rest: &str) -> String {
    let url = format!("{site}/dataset/{rest}");
    let mut escaped = String::new();
    for c in url.chars() {
        match c {
            ':' => escaped.push_str("%3A"),
            '/' => escaped.push_str("%2F"),
            '?' => escaped.push_str("%3F"),
            '=' => escaped.push_str("%3D"),
            '&' => escaped.push_str("%26"),
            c => escaped.push(c),
        }
    }
    format!("ckan/{escaped}")
}

fn repository() -> Vec<Resource> {
    vec![
        verified("requirements.txt", b"six==1.16.0\n"),
        unverified("index.ipynb", b"{}"),
    ]
}

#[test]
fn a_ckan_dataset_from_a_loopback_ckan_api_builds_a_venv_whose_kernel_answers() {
    let server = RecordServer::start();
    publish(&server, 1, MODIFIED, &repository());
    let sandbox = super::sandbox(&server);
    let spec = spec(&server.base(), NAME);
    let detected = sandbox.ok(&["detect", &spec]);
    assert!(detected.contains("requirements.txt"), "{detected}");
    let ready = super::build_with_six(&sandbox, &spec);
    let tree = super::record_tree(&sandbox, "ckan-binder-demo.v1709043354-");
    assert_eq!(super::names_in(&tree), ["index.ipynb", "requirements.txt"]);
    assert_eq!(
        std::fs::read_to_string(tree.join("index.ipynb")).unwrap(),
        "{}"
    );
    // The verified resource is cached by its hash; the unverified one only in the tree.
    let downloads = super::user_cache(&sandbox, "downloads");
    assert_eq!(
        super::names_in(&downloads),
        [md5_hash(b"six==1.16.0\n").replace(':', "-")]
    );
    // The tree is kept for this version of the dataset: nothing is downloaded again, and
    // the dataset's id names the same dataset.
    let notebook = format!(
        "/dataset/{DATASET_ID}/resource/{}/download/index.ipynb",
        resource_id(1, 1)
    );
    assert_eq!(server.hits(&notebook), 1);
    let again = sandbox.build_ready(&[&self::spec(&server.base(), DATASET_ID)]);
    assert_eq!(again["prefix"], ready["prefix"]);
    assert_eq!(server.hits(&notebook), 1);
    let plan = sandbox.ok(&["build", "--dry-run", &spec]);
    assert!(
        plan.contains(&format!("{}/dataset/{NAME}", server.base())),
        "{plan}"
    );
}

#[test]
fn a_new_metadata_modified_is_a_new_identity_and_a_pinned_build_refuses_it() {
    let server = RecordServer::start();
    publish(&server, 1, MODIFIED, &repository());
    let sandbox = super::sandbox(&server);
    let spec = spec(&server.base(), NAME);
    let first = sandbox.ok(&["build", "--dry-run", &spec]);
    // A second later, another requirements.txt: a new version of the dataset.
    publish(
        &server,
        2,
        "2024-02-27T14:15:55.000001",
        &[
            verified("requirements.txt", b"six==1.16.0\n# v2\n"),
            unverified("index.ipynb", b"{}"),
        ],
    );
    let second = sandbox.ok(&["build", "--dry-run", &spec]);
    assert_ne!(super::key_line(&first), super::key_line(&second));
    let output = sandbox.run(&["build", &spec, "--ref", "ckan-binder-demo.v1709043354"]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "now resolves to ckan-binder-demo.v1709043355, not ckan-binder-demo.v1709043354"
        ),
        "{stderr}"
    );
}

#[test]
fn a_resource_whose_hash_does_not_match_is_a_checksum_error_naming_it_and_nothing_is_kept() {
    let server = RecordServer::start();
    publish(
        &server,
        1,
        MODIFIED,
        &[
            Resource {
                hash: md5_hash(b"six==1.16.0\n"),
                ..verified("requirements.txt", b"evil==6.6.6\n")
            },
            unverified("index.ipynb", b"{}"),
        ],
    );
    let sandbox = super::sandbox(&server);
    let output = sandbox.run(&["build", &spec(&server.base(), NAME)]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("requirements.txt does not match its published checksum (md5:"),
        "{stderr}"
    );
    let cache = sandbox.store().join("cache").join("u0");
    assert!(super::names_in(&cache.join("downloads")).is_empty());
    assert!(super::names_in(&cache.join("records")).is_empty());
}

#[test]
fn a_ckan_site_that_is_down_is_a_clear_error_naming_ckan() {
    let server = RecordServer::start();
    publish(&server, 1, MODIFIED, &repository());
    let sandbox = super::sandbox(&server);
    server.set_down(true);
    let output = sandbox.run(&["build", &spec(&server.base(), NAME)]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CKAN did not answer"), "{stderr}");
    assert!(stderr.contains("/api/3/action/status_show"), "{stderr}");
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    // Retried with backoff before giving up.
    assert_eq!(server.hits("/api/3/action/status_show"), 4);
}

#[test]
fn a_missing_dataset_or_a_site_that_is_not_ckan_says_so() {
    let server = RecordServer::start();
    publish(&server, 1, MODIFIED, &repository());
    let not_found = serde_json::json!({
        "help": format!("{}/api/3/action/help_show?name=package_show", server.base()),
        "success": false,
        "error": {"message": "Not found", "__type": "Not Found Error"},
    });
    server.answers(
        "/api/3/action/package_show?id=gone",
        vec![Answer::status(404, &not_found)],
    );
    let sandbox = super::sandbox(&server);
    let output = sandbox.run(&["build", &spec(&server.base(), "gone")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the dataset gone does not exist on http://127.0.0.1:"),
        "{stderr}"
    );
    // A configured site without CKAN's action API (no status_show) is not taken for one.
    let plain = RecordServer::start();
    let sandbox = super::sandbox(&plain);
    let output = sandbox.run(&["build", &spec(&plain.base(), NAME)]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} does not answer as a CKAN site does",
            plain.base()
        )),
        "{stderr}"
    );
    assert_eq!(plain.hits("/api/3/action/package_show"), 0);
}

#[test]
fn a_site_not_in_records_ckan_is_refused_before_any_request_to_it() {
    let configured = RecordServer::start();
    let other = RecordServer::start();
    publish(&other, 1, MODIFIED, &repository());
    let sandbox = super::sandbox(&configured);
    let output = sandbox.run(&["build", "--dry-run", &spec(&other.base(), NAME)]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is not one of the configured CKAN sites ({})",
            other.base(),
            configured.base()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("add it to [records] ckan"), "{stderr}");
    for path in ["/api/3/action/status_show", "/api/3/action/package_show"] {
        assert_eq!(other.hits(path), 0, "{path}");
    }
    // A prefix is part of the site: the same host under another path is another site.
    let output = sandbox.run(&[
        "build",
        "--dry-run",
        &spec(&format!("{}/catalog", configured.base()), NAME),
    ]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/catalog is not one of"), "{stderr}");
    assert_eq!(configured.hits("/catalog/api/3/action/status_show"), 0);
}

#[test]
fn external_resources_are_left_out_and_unverified_ones_named_with_warnings() {
    let server = RecordServer::start();
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"first"));
    publish(
        &server,
        1,
        MODIFIED,
        &[
            verified("requirements.txt", b"six==1.16.0\n"),
            Resource {
                link: Some("https://elsewhere.example.org/files/data.csv"),
                ..unverified("data.csv", b"")
            },
            unverified("index.ipynb", b"{}"),
            // A bare SHA-256 verifies; a second resource of one name goes to its id.
            Resource {
                hash: sha256.clone(),
                ..unverified("notes.txt", b"first")
            },
            Resource {
                hash: "not a hash".into(),
                ..unverified("notes.txt", b"second")
            },
        ],
    );
    let sandbox = super::sandbox(&server);
    let output = sandbox.run(&["build", "--dry-run", &spec(&server.base(), NAME)]);
    let stderr = common::stderr(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: CKAN resource data.csv of the dataset binder-demo links to https://elsewhere.example.org/files/data.csv, not a file on {}: it is left out",
            server.base()
        )),
        "{stderr}"
    );
    let unverified = |name: &str| {
        stderr
            .matches(&format!(
                "warning: CKAN publishes no usable hash for {name}: it is downloaded unverified"
            ))
            .count()
    };
    let moved = format!("{}/notes.txt", resource_id(1, 4));
    assert_eq!(unverified("index.ipynb"), 1, "{stderr}");
    assert_eq!(unverified(&moved), 1, "{stderr}");
    assert_eq!(unverified("requirements.txt"), 0, "{stderr}");
    assert_eq!(unverified("notes.txt"), 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "has several resources named notes.txt: resource {0}'s is {0}/notes.txt",
            resource_id(1, 4)
        )),
        "{stderr}"
    );
    let tree = super::record_tree(&sandbox, "ckan-binder-demo.v1709043354-");
    assert_eq!(
        super::names_in(&tree),
        [
            resource_id(1, 4).as_str(),
            "index.ipynb",
            "notes.txt",
            "requirements.txt"
        ]
    );
    assert_eq!(std::fs::read(tree.join(&moved)).unwrap(), b"second");
    let downloads = super::user_cache(&sandbox, "downloads");
    assert!(super::names_in(&downloads).contains(&format!("sha256-{sha256}")));
}

#[test]
fn an_activity_url_builds_that_activitys_state_from_a_loopback_ckan() {
    let server = RecordServer::start();
    // Now: a requirement that cannot be installed offline; then: six.
    publish(
        &server,
        2,
        "2024-03-01T09:00:00.000001",
        &[
            verified("requirements.txt", b"evil==6.6.6\n"),
            unverified("new.ipynb", b"{}"),
        ],
    );
    publish_activity(
        &server,
        1,
        MODIFIED,
        &[
            verified("requirements.txt", b"six==1.16.0\n"),
            unverified("old.ipynb", b"{}"),
        ],
    );
    let sandbox = super::sandbox(&server);
    let history = spec(&server.base(), &format!("{NAME}/history/{ACTIVITY}"));
    super::build_with_six(&sandbox, &history);
    let tree = super::record_tree(&sandbox, &format!("ckan-binder-demo.a{ACTIVITY}-"));
    assert_eq!(super::names_in(&tree), ["old.ipynb", "requirements.txt"]);
    assert_eq!(server.hits("/api/3/action/package_show"), 0);
    // `?activity_id=` names the same snapshot; the dataset now is another.
    let query = spec(&server.base(), &format!("{NAME}?activity_id={ACTIVITY}"));
    let by_history = sandbox.ok(&["build", "--dry-run", &history]);
    let by_query = sandbox.ok(&["build", "--dry-run", &query]);
    assert_eq!(super::key_line(&by_history), super::key_line(&by_query));
    let now = sandbox.ok(&["build", "--dry-run", &spec(&server.base(), NAME)]);
    assert_ne!(super::key_line(&now), super::key_line(&by_history));
    let current = self::super::record_tree(&sandbox, "ckan-binder-demo.v1709283600-");
    assert_eq!(super::names_in(&current), ["new.ipynb", "requirements.txt"]);
}
