//! Dataverse datasets against a loopback server that answers like a Dataverse
//! installation's native API (`/api/datasets/:persistentId?persistentId=<pid>` with
//! `data.latestVersion.files[]`, and `/api/access/datafile/<id>?format=original`), with the
//! shapes repo2docker's Dataverse provider reads, behind a loopback DOI resolver.

use md5::Digest as _;

use crate::common::records::RecordServer;
use crate::common::{self, Sandbox};

const DOI: &str = "10.7910/DVN/TJCLKP";

/// A file of a dataset: its path, its bytes, and how its checksum is published.
struct DataFile<'a> {
    path: &'a str,
    bytes: Vec<u8>,
    checksum: &'a str,
    /// The name Dataverse shows for an ingested table (`data.tab` for `data.csv`).
    label: Option<&'a str>,
    restricted: bool,
}

fn file<'a>(path: &'a str, bytes: &[u8], checksum: &'a str) -> DataFile<'a> {
    DataFile {
        path,
        bytes: bytes.to_vec(),
        checksum,
        label: None,
        restricted: false,
    }
}

/// Publish version `major.minor` of dataset `id` (DOI [`DOI`]) with `files`, and point
/// the DOI at its page.
fn publish(server: &RecordServer, id: u64, (major, minor): (u64, u64), files: &[DataFile]) {
    let base = server.base();
    let listed: Vec<serde_json::Value> = files
        .iter()
        .enumerate()
        .map(|(index, f)| {
            let file_id = id * 1000 + major * 100 + minor * 10 + index as u64;
            server.route(
                &format!("/api/access/datafile/{file_id}"),
                "application/octet-stream",
                f.bytes.clone(),
            );
            let (directory, name) = match f.path.rsplit_once('/') {
                Some((d, n)) => (Some(d), n),
                None => (None, f.path),
            };
            let value = match f.checksum {
                "SHA-256" => hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&f.bytes)),
                _ => hex::encode(md5::Md5::digest(&f.bytes)),
            };
            let mut data_file = serde_json::json!({
                "id": file_id, "persistentId": "", "filename": f.label.unwrap_or(name),
                "contentType": "text/plain", "filesize": f.bytes.len(),
                "storageIdentifier": format!("file://{file_id}"), "rootDataFileId": -1,
                "checksum": {"type": f.checksum, "value": value},
                "creationDate": "2019-06-13",
            });
            if f.checksum == "MD5" {
                data_file["md5"] = value.into();
            }
            if f.label.is_some() {
                data_file["originalFileName"] = name.into();
                data_file["originalFileSize"] = f.bytes.len().into();
                data_file["originalFileFormat"] = "text/csv".into();
            }
            let mut entry = serde_json::json!({
                "label": f.label.unwrap_or(name), "restricted": f.restricted, "version": 1,
                "datasetVersionId": id, "dataFile": data_file,
            });
            if let Some(directory) = directory {
                entry["directoryLabel"] = directory.into();
            }
            entry
        })
        .collect();
    let pid = format!("doi:{DOI}");
    server.route(
        &format!("/api/datasets/:persistentId?persistentId={pid}"),
        "application/json",
        serde_json::json!({
            "status": "OK",
            "data": {
                "id": id, "identifier": "DVN/TJCLKP", "persistentUrl": format!("https://doi.org/{DOI}"),
                "protocol": "doi", "authority": "10.7910", "publisher": "Loopback Dataverse",
                "storageIdentifier": format!("file://10.7910/DVN/TJCLKP"),
                "latestVersion": {
                    "id": id * 10 + major, "datasetId": id, "datasetPersistentId": pid,
                    "storageIdentifier": "file://10.7910/DVN/TJCLKP",
                    "versionNumber": major, "versionMinorNumber": minor, "versionState": "RELEASED",
                    "files": listed,
                },
            },
        })
        .to_string()
        .into_bytes(),
    );
    server.point(DOI, &format!("{base}/dataset.xhtml?persistentId=doi:{DOI}"));
}

fn repository(requirements: &str) -> Vec<DataFile<'static>> {
    vec![
        file(
            "binder/requirements.txt",
            requirements.as_bytes(),
            "SHA-256",
        ),
        file("index.ipynb", b"{}", "MD5"),
        DataFile {
            label: Some("data.tab"),
            ..file("data/data.csv", b"a,b\n1,2\n", "MD5")
        },
        DataFile {
            restricted: true,
            ..file("secret.txt", b"not for us", "MD5")
        },
    ]
}

#[test]
fn a_dataverse_dataset_from_a_loopback_dataverse_api_builds_a_venv_whose_kernel_answers() {
    let server = RecordServer::start();
    publish(&server, 3323458, (1, 0), &repository("six==1.16.0\n"));
    let sandbox = super::sandbox(&server);
    let spec = format!("dataverse/{DOI}");
    let detected = sandbox.ok(&["detect", &spec]);
    assert!(detected.contains("binder/requirements.txt"), "{detected}");
    let ready = super::build_with_six(&sandbox, &spec);
    let plan = sandbox.ok(&["build", "--dry-run", &spec]);
    assert!(
        plan.contains("/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP&version=1.0"),
        "{plan}"
    );
    // Ingested tables come in their original format, under their folder.
    let tree = super::record_tree(&sandbox, "dataverse-3323458.v1.0-");
    assert_eq!(
        std::fs::read_to_string(tree.join("data/data.csv")).unwrap(),
        "a,b\n1,2\n"
    );
    assert!(!tree.join("secret.txt").exists(), "a restricted file");
    // Nothing is downloaded twice, and the restricted file is named in a warning.
    assert_eq!(server.hits("/api/access/datafile/3323458100"), 1);
    let again = sandbox.build_ready(&[&format!("doi:{DOI}")]);
    assert_eq!(again["prefix"], ready["prefix"]);
    assert_eq!(server.hits("/api/access/datafile/3323458100"), 1);
    let output = sandbox.run(&["build", "--dry-run", &spec]);
    let stderr = common::stderr(&output);
    assert!(
        stderr.contains("secret.txt of doi:10.7910/DVN/TJCLKP is restricted"),
        "{stderr}"
    );
}

#[test]
fn a_new_dataverse_version_is_a_new_identity_and_a_pinned_build_refuses_it() {
    let server = RecordServer::start();
    publish(&server, 3323458, (1, 0), &repository("six==1.16.0\n"));
    let sandbox = super::sandbox(&server);
    let spec = format!("dataverse/{DOI}");
    let first = sandbox.ok(&["build", "--dry-run", &spec]);
    publish(
        &server,
        3323458,
        (1, 1),
        &repository("six==1.16.0\n# 1.1\n"),
    );
    let second = sandbox.ok(&["build", "--dry-run", &spec]);
    assert_ne!(super::key_line(&first), super::key_line(&second));
    assert!(second.contains("&version=1.1"), "{second}");
    // The launch service passes the version it resolved; a newer one is refused.
    let output = sandbox.run(&["build", &spec, "--ref", "dataverse-3323458.v1.0"]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("now resolves to dataverse-3323458.v1.1, not dataverse-3323458.v1.0"),
        "{stderr}"
    );
}

#[test]
fn a_tampered_dataverse_file_is_a_sha256_checksum_error_naming_it() {
    let server = RecordServer::start();
    publish(&server, 3323458, (1, 0), &repository("six==1.16.0\n"));
    server.tamper_path("/api/access/datafile/3323458100", b"evil==6.6.6\n".to_vec());
    let sandbox = super::sandbox(&server);
    let output = sandbox.run(&["build", &format!("dataverse/{DOI}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("binder/requirements.txt does not match its published checksum (sha256:"),
        "{stderr}"
    );
    let kept = super::names_in(&super::user_cache(&sandbox, "records"));
    assert!(kept.is_empty(), "{kept:?}");
}

#[test]
fn dataverse_down_or_an_unknown_installation_is_a_clear_error() {
    let resolver = RecordServer::start();
    let dataverse = RecordServer::start();
    publish(&dataverse, 3323458, (1, 0), &repository("six==1.16.0\n"));
    resolver.point(
        DOI,
        &format!("{}/dataset.xhtml?persistentId=doi:{DOI}", dataverse.base()),
    );
    let sandbox = Sandbox::new();
    sandbox.native_site_config(&format!(
        "[records]\ndoi-resolver = \"{}\"\ndataverse = [\"{}\"]\n",
        resolver.base(),
        dataverse.base()
    ));
    dataverse.set_down(true);
    let output = sandbox.run(&["build", &format!("dataverse/{DOI}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Dataverse did not answer"), "{stderr}");
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    // An installation the site does not list is not fetched from.
    let other = Sandbox::new();
    other.native_site_config(&format!(
        "[records]\ndoi-resolver = \"{}\"\ndataverse = [\"https://dataverse.example.org\"]\n",
        resolver.base()
    ));
    dataverse.set_down(false);
    let before = dataverse.hits("/api/datasets/:persistentId");
    let output = other.run(&["build", &format!("dataverse/{DOI}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("which is not a Dataverse record"),
        "{stderr}"
    );
    assert!(stderr.contains("[records] dataverse"), "{stderr}");
    assert_eq!(dataverse.hits("/api/datasets/:persistentId"), before);
}

#[test]
fn the_launch_service_builds_a_dataverse_doi_from_a_loopback_dataverse() {
    let server = RecordServer::start();
    publish(&server, 3323458, (2, 1), &repository("six==1.16.0\n"));
    let sandbox = Sandbox::new();
    sandbox.native_site_config(&format!(
        "{}[serve]\nproviders = [\"gh\", \"dataverse\"]\n",
        server.config()
    ));
    let hub = common::hubapi::HubApi::start(common::hubapi::HubUsers::standard());
    let service = common::bench::Service::start(&sandbox, &hub, &[]);
    let events = super::service_build(&service, &format!("dataverse/{DOI}"));
    let ready = events.last().unwrap();
    assert_eq!(ready["phase"], "ready", "{events:?}");
    assert_eq!(ready["binder_request"], format!("v2/dataverse/{DOI}"));
    // Dataverse addresses only the newest version: the spec is the persistent request.
    assert_eq!(
        ready["binder_persistent_request"],
        format!("v2/dataverse/{DOI}")
    );
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("dataverse-3323458.v2.1"))),
        "{events:?}"
    );
}
