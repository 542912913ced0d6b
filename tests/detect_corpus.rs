//! The detection corpus: every folder under `fixtures/detect/` is a repository; each
//! snapshots its `detect --json` (minus the machine-specific source identity) or, for
//! malformed repositories, its exit code and error.

mod common;

use common::{fixtures, stderr, Sandbox};

#[test]
fn detection_corpus() {
    let sandbox = Sandbox::new();
    let root = fixtures().join("detect");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 40,
        "the corpus must hold at least 40 cases, found {}",
        cases.len()
    );
    for case in cases {
        let dir = root.join(&case);
        let output = sandbox.run(&["detect", dir.to_str().unwrap(), "--json"]);
        let code = output.status.code();
        let snapshot = if output.status.success() {
            let mut value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let source = value
                .as_object_mut()
                .unwrap()
                .remove("source")
                .expect("source identity");
            assert_eq!(source["kind"], "directory", "{case}");
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            format!(
                "exit code: {code:?}\n{}",
                stderr(&output).replace(root.to_str().unwrap(), "[FIXTURES]")
            )
        };
        if case.starts_with("err-")
            || case == "both-binder-dirs"
            || case == "docker-legacy"
            || case == "julia-require"
        {
            assert_eq!(
                code,
                Some(1),
                "{case} must fail with exit code 1:\n{snapshot}"
            );
        } else {
            assert_eq!(code, Some(0), "{case} must succeed:\n{snapshot}");
        }
        insta::assert_snapshot!(case, snapshot);
    }
}
