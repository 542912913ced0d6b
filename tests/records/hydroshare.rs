//! HydroShare resources against a loopback server that answers like HydroShare: the
//! science metadata repo2docker reads (`/hsapi/resource/<id>/scimeta/elements` with
//! `dates[type=modified].start_date`), and the bag URL
//! (`/django_s3/download/bags/<id>.zip`), which answers `{"bag_status": "Not ready", ...}`
//! while HydroShare prepares the bag and then redirects to a signed URL on another loopback
//! server standing in for S3; behind a loopback DOI resolver (`10.4211/hs.<id>`).

use md5::Digest as _;

use crate::common::records::{zip_of, Answer, RecordServer};
use crate::common::{self, Sandbox};

const ID: &str = "b8f6eae9d89241cf8b5904033460af61";

/// HydroShare and the S3 its bags are downloaded from.
struct HydroShare {
    server: RecordServer,
    s3: RecordServer,
}

impl HydroShare {
    fn start() -> Self {
        Self {
            server: RecordServer::start(),
            s3: RecordServer::start(),
        }
    }

    /// Publish resource `id`, last modified at `modified`, with `bag`; the bag's URL
    /// answers "Not ready" `preparing` times before redirecting to it.
    fn publish(&self, id: &str, modified: &str, bag: Vec<u8>, preparing: usize) {
        let base = self.server.base();
        self.server.route(
            &format!("/hsapi/resource/{id}/scimeta/elements"),
            "application/json",
            serde_json::json!({
                "title": "binder demo", "abstract": "a repository as a resource",
                "creators": [{"name": "Doe, Jane", "order": 1}],
                "dates": [
                    {"type": "created", "start_date": "2019-09-20T10:00:00.000000Z", "end_date": null},
                    {"type": "modified", "start_date": modified, "end_date": null},
                ],
                "identifiers": [{"name": "hydroShareIdentifier", "url": format!("{base}/resource/{id}")}],
                "rights": {"statement": "CC BY", "url": "http://creativecommons.org/licenses/by/4.0/"},
            })
            .to_string()
            .into_bytes(),
        );
        let signed = format!("/bags/{id}.zip");
        self.s3.route(&signed, "application/zip", bag);
        let mut answers: Vec<Answer> = (0..preparing)
            .map(|n| {
                let task = format!("5e0c{n:04}-loopback-task");
                Answer::json(&serde_json::json!({
                    "bag_status": "Not ready", "task_id": task, "download_path": "",
                    "status": "Not ready", "id": task,
                }))
            })
            .collect();
        answers.push(Answer::redirect(&format!(
            "{}{signed}?AWSAccessKeyId=loopback&Signature=c2lnbmVk&Expires=4102444800",
            self.s3.base()
        )));
        self.server.answers(&bag_path(id), answers);
        self.server.point(
            &format!("10.4211/hs.{id}"),
            &format!("{base}/resource/{id}"),
        );
    }
}

fn bag_path(id: &str) -> String {
    format!("/django_s3/download/bags/{id}.zip")
}

/// The entries of a bag as HydroShare zips it: `<id>/` holding `bagit.txt`, `readme.txt`,
/// `manifest-md5.txt` (md5s of every file under `data/`, four spaces apart), a
/// `tagmanifest-md5.txt` of fixed checksums, and `data/` with the resource map, the
/// metadata and `contents/` (`files`).
fn bag_entries(id: &str, files: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut payload = vec![
        ("data/resourcemap.xml".to_string(), "<rdf:RDF/>".to_string()),
        ("data/resourcemetadata.xml".into(), "<rdf:RDF/>".into()),
    ];
    payload.extend(
        files
            .iter()
            .map(|(path, text)| (format!("data/contents/{path}"), text.to_string())),
    );
    let manifest: String = payload
        .iter()
        .map(|(path, text)| format!("{}    {path}\n", hex::encode(md5::Md5::digest(text))))
        .collect();
    let mut entries = vec![
        (
            "bagit.txt".to_string(),
            "BagIt-Version: 0.96\nTag-File-Character-Encoding: UTF-8".to_string(),
        ),
        ("readme.txt".into(), "a HydroShare bag".into()),
        ("manifest-md5.txt".into(), manifest),
        (
            "tagmanifest-md5.txt".into(),
            "ace0ef9419c8edbe164a888d4e4ab7ee    bagit.txt\n".into(),
        ),
    ];
    entries.extend(payload);
    entries
        .into_iter()
        .map(|(path, text)| (format!("{id}/{path}"), text))
        .collect()
}

fn zip_entries(entries: &[(String, String)]) -> Vec<u8> {
    let borrowed: Vec<(&str, &str)> = entries
        .iter()
        .map(|(path, text)| (path.as_str(), text.as_str()))
        .collect();
    zip_of(&borrowed)
}

fn repository(id: &str, requirements: &str) -> Vec<(String, String)> {
    bag_entries(
        id,
        &[
            ("requirements.txt", requirements),
            ("notebooks/index.ipynb", "{}"),
        ],
    )
}

/// What the user's cache keeps of HydroShare records, and the store's environments.
fn kept(sandbox: &Sandbox) -> Vec<String> {
    let mut kept: Vec<String> = super::names_in(&super::user_cache(sandbox, "records"))
        .into_iter()
        .filter(|n| n.contains("hydroshare"))
        .collect();
    kept.extend(super::names_in(&sandbox.store().join("e")));
    kept
}

#[test]
fn a_hydroshare_resource_from_a_loopback_hydroshare_waits_for_its_bag_and_builds_a_venv_whose_kernel_answers(
) {
    let hydroshare = HydroShare::start();
    let bag = zip_entries(&repository(ID, "six==1.16.0\n"));
    hydroshare.publish(ID, "2019-09-25T16:09:17.006152Z", bag, 2);
    let sandbox = super::sandbox(&hydroshare.server);
    let spec = format!("hydroshare/{ID}");
    // The bag is being prepared for two requests: the build says it waits, then builds.
    let out = sandbox.ok(&["build", "--json", &spec]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let waiting: Vec<_> = events
        .iter()
        .filter(|e| {
            e["phase"] == "waiting"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("HydroShare is preparing the bag of resource {ID}"))
        })
        .collect();
    assert_eq!(waiting.len(), 2, "{out}");
    assert_eq!(events.last().unwrap()["phase"], "ready", "{out}");
    assert_eq!(hydroshare.server.hits(&bag_path(ID)), 3);
    assert_eq!(hydroshare.s3.hits(&format!("/bags/{ID}.zip")), 1);
    // The payload (data/contents) is the repository's root.
    let detected = sandbox.ok(&["detect", &spec]);
    assert!(detected.contains("requirements.txt"), "{detected}");
    let ready = super::build_with_six(&sandbox, &spec);
    let plan = sandbox.ok(&["build", "--dry-run", &spec]);
    assert!(plan.contains(&format!("/resource/{ID}/")), "{plan}");
    // The resource's URL and its DOI are the same record: nothing is downloaded again.
    let url = format!("{}/resource/{ID}/", hydroshare.server.base())
        .replace(':', "%3A")
        .replace('/', "%2F");
    for other in [format!("hydroshare/{url}"), format!("doi:10.4211/hs.{ID}")] {
        let again = sandbox.build_ready(&[&other]);
        assert_eq!(again["prefix"], ready["prefix"], "{other}");
    }
    assert_eq!(hydroshare.server.hits(&bag_path(ID)), 3);
}

#[test]
fn a_new_hydroshare_modification_is_a_new_identity_and_a_pinned_build_refuses_it() {
    let hydroshare = HydroShare::start();
    let spec = format!("hydroshare/{ID}");
    hydroshare.publish(
        ID,
        "2019-09-25T16:09:17.006152Z",
        zip_entries(&repository(ID, "six==1.16.0\n")),
        0,
    );
    let sandbox = super::sandbox(&hydroshare.server);
    let first = sandbox.ok(&["build", "--dry-run", &spec]);
    // HydroShare's manifest gives S3's ETag, which for a file uploaded in parts is no md5:
    // that file is checked to be there, with a warning.
    let mut edited = repository(ID, "six==1.16.0\n# edited\n");
    let manifest = &mut edited
        .iter_mut()
        .find(|(path, _)| path.ends_with("/manifest-md5.txt"))
        .unwrap()
        .1;
    *manifest = manifest.replace(
        "    data/contents/notebooks/index.ipynb",
        "-2    data/contents/notebooks/index.ipynb",
    );
    hydroshare.publish(ID, "2020-01-02T03:04:05+00:00", zip_entries(&edited), 0);
    let output = sandbox.run(&["build", "--dry-run", &spec]);
    let (stdout, stderr) = (common::stdout(&output), common::stderr(&output));
    assert!(output.status.success(), "{stderr}");
    assert_ne!(super::key_line(&first), super::key_line(&stdout));
    assert!(
        stderr.contains(&format!(
            "data/contents/notebooks/index.ipynb of resource {ID} is only checked to be there"
        )),
        "{stderr}"
    );
    let bag = format!("/bags/{ID}.zip");
    assert_eq!(hydroshare.s3.hits(&bag), 2);
    // The launch service passes the version it resolved (the modification's Unix time).
    let output = sandbox.run(&[
        "build",
        &spec,
        "--ref",
        &format!("hydroshare-{ID}.v1569427757"),
    ]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "now resolves to hydroshare-{ID}.v1577934245, not hydroshare-{ID}.v1569427757"
        )),
        "{stderr}"
    );
    // Resolved from the metadata alone: the bag was not downloaded.
    assert_eq!(hydroshare.s3.hits(&bag), 2);
}

#[test]
fn a_hydroshare_bag_that_disagrees_with_its_manifest_is_refused_and_nothing_is_kept() {
    let hydroshare = HydroShare::start();
    let sandbox = super::sandbox(&hydroshare.server);
    let spec = format!("hydroshare/{ID}");
    let run = |modified: &str, entries: Vec<(String, String)>| {
        hydroshare.publish(ID, modified, zip_entries(&entries), 0);
        let output = sandbox.run(&["build", &spec]);
        let stderr = common::stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(kept(&sandbox).is_empty(), "{:?}", kept(&sandbox));
        stderr
    };
    // A payload file whose bytes are not the ones its manifest names.
    let mut tampered = repository(ID, "six==1.16.0\n");
    let requirements = format!("{ID}/data/contents/requirements.txt");
    tampered
        .iter_mut()
        .find(|(path, _)| *path == requirements)
        .unwrap()
        .1 = "evil==6.6.6\n".into();
    let stderr = run("2019-09-25T16:09:17Z", tampered);
    assert!(
        stderr
            .contains("data/contents/requirements.txt does not match its published checksum (md5:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: the download was damaged"),
        "{stderr}"
    );
    // A payload file the manifest does not list.
    let mut unlisted = repository(ID, "six==1.16.0\n");
    unlisted.push((format!("{ID}/data/contents/extra.py"), "print(1)\n".into()));
    let stderr = run("2019-09-26T16:09:17Z", unlisted);
    assert!(
        stderr.contains(&format!(
            "the bag of resource {ID} holds data/contents/extra.py, which its manifest-md5.txt does not list"
        )),
        "{stderr}"
    );
    // A listed file the bag lacks.
    let mut missing = repository(ID, "six==1.16.0\n");
    missing.retain(|(path, _)| !path.ends_with("index.ipynb"));
    let stderr = run("2019-09-27T16:09:17Z", missing);
    assert!(
        stderr.contains(
            "lacks data/contents/notebooks/index.ipynb, which its manifest-md5.txt lists"
        ),
        "{stderr}"
    );
    // No manifest: nothing could be checked.
    let mut bare = repository(ID, "six==1.16.0\n");
    bare.retain(|(path, _)| !path.ends_with("/manifest-md5.txt"));
    let stderr = run("2019-09-28T16:09:17Z", bare);
    assert!(stderr.contains("has no payload manifest"), "{stderr}");
}

#[test]
fn a_hostile_hydroshare_bag_is_refused_and_nothing_is_written_outside() {
    let hydroshare = HydroShare::start();
    let mut entries = repository(ID, "six==1.16.0\n");
    entries.push(("../../../escaped.txt".into(), "out".into()));
    hydroshare.publish(ID, "2019-09-25T16:09:17Z", zip_entries(&entries), 0);
    let sandbox = super::sandbox(&hydroshare.server);
    let output = sandbox.run(&["build", &format!("hydroshare/{ID}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the bag of resource {ID} ({ID}.zip): refusing `../../../escaped.txt`"
        )),
        "{stderr}"
    );
    assert!(kept(&sandbox).is_empty(), "{:?}", kept(&sandbox));
    let cache = sandbox.store().join("cache").join("u0");
    for dir in [cache.join("records"), cache.clone(), sandbox.store()] {
        assert!(!dir.join("escaped.txt").exists(), "{}", dir.display());
    }
}

#[test]
fn hydroshare_down_missing_or_slow_to_prepare_a_bag_is_a_clear_error() {
    let hydroshare = HydroShare::start();
    hydroshare.publish(
        ID,
        "2019-09-25T16:09:17Z",
        zip_entries(&repository(ID, "six==1.16.0\n")),
        1000,
    );
    // A bag that is never ready within [records] prepare-timeout.
    let sandbox = Sandbox::new();
    sandbox.native_site_config(
        &hydroshare
            .server
            .config()
            .replace("prepare-timeout = 60", "prepare-timeout = 2"),
    );
    let spec = format!("hydroshare/{ID}");
    let output = sandbox.run(&["build", &spec]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the bag of resource {ID} was not ready after 2 s ([records] prepare-timeout); HydroShare is still preparing it, try again later"
        )),
        "{stderr}"
    );
    assert!(kept(&sandbox).is_empty(), "{:?}", kept(&sandbox));
    // A resource HydroShare does not have: the user's spec is wrong.
    let missing = "0123456789abcdef0123456789abcdef";
    let output = sandbox.run(&["build", &format!("hydroshare/{missing}")]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("HydroShare has no resource {missing}")),
        "{stderr}"
    );
    // HydroShare down: retried, then a clear error naming it.
    hydroshare.server.set_down(true);
    let output = sandbox.run(&["build", &spec]);
    let stderr = common::stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HydroShare did not answer"), "{stderr}");
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    let elements = format!("/hsapi/resource/{ID}/scimeta/elements");
    assert_eq!(hydroshare.server.hits(&elements), 4 + 1);
}
