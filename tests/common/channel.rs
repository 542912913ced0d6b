//! A real conda channel on disk for tests: `.conda` packages written with
//! rattler_package_streaming, `repodata.json` written here, served as a `file://` URL.
//! Includes a `python` package that makes the prefix a venv of this machine's CPython.

use std::path::{Path, PathBuf};

use rattler_conda_types::compression_level::CompressionLevel;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// One package to write.
pub struct Package {
    pub name: String,
    pub version: String,
    pub build: String,
    pub subdir: &'static str,
    pub noarch: Option<&'static str>,
    pub depends: Vec<String>,
    /// (path in the package, contents, has the `/opt/anaconda1anaconda2anaconda3` placeholder)
    pub files: Vec<(String, String, bool)>,
    /// (path in the package, target)
    pub symlinks: Vec<(String, String)>,
    /// `paths.json` entries written as they are, with no file behind them (hostile packages).
    pub raw_paths: Vec<Value>,
}

impl Package {
    /// `hpcb-hello` 1.0 (noarch python): `hpcb_hello.VERSION`, and
    /// `share/hpcb-hello/prefix.txt` with a prefix placeholder rewritten at install.
    pub fn hello() -> Self {
        let mut hello = Self::noarch_python("hpcb-hello", "1.0");
        hello.files.push((
            "site-packages/hpcb_hello/__init__.py".into(),
            "VERSION = '1.0'\n".into(),
            false,
        ));
        hello.files.push((
            "share/hpcb-hello/prefix.txt".into(),
            format!("installed at {PLACEHOLDER}\n"),
            true,
        ));
        hello
    }

    pub fn noarch_python(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            build: "py_0".into(),
            subdir: "noarch",
            noarch: Some("python"),
            depends: vec!["python".into()],
            files: Vec::new(),
            symlinks: Vec::new(),
            raw_paths: Vec::new(),
        }
    }
}

pub const PLACEHOLDER: &str = "/opt/anaconda1anaconda2anaconda3";

pub struct Channel {
    pub dir: PathBuf,
    records: std::collections::BTreeMap<&'static str, serde_json::Map<String, Value>>,
}

impl Channel {
    pub fn new(dir: &Path) -> Self {
        let mut channel = Self {
            dir: dir.to_path_buf(),
            records: Default::default(),
        };
        channel.records.insert("noarch", Default::default());
        channel.records.insert("linux-64", Default::default());
        channel.write_repodata();
        channel
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    pub fn add(&mut self, package: &Package) -> PathBuf {
        let stage = tempfile::tempdir().unwrap();
        let root = stage.path();
        let mut paths = Vec::new();
        let mut entries = Vec::new();
        for (path, contents, placeholder) in &package.files {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, contents).unwrap();
            paths.push(file);
            let mut entry = json!({"_path": path, "path_type": "hardlink", "sha256": hex::encode(Sha256::digest(contents.as_bytes())), "size_in_bytes": contents.len()});
            if *placeholder {
                entry["file_mode"] = json!("text");
                entry["prefix_placeholder"] = json!(PLACEHOLDER);
            }
            entries.push(entry);
        }
        for (path, target) in &package.symlinks {
            let link = root.join(path);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, &link).unwrap();
            paths.push(link);
            entries.push(json!({"_path": path, "path_type": "softlink", "sha256": hex::encode(Sha256::digest(target.as_bytes())), "size_in_bytes": target.len()}));
        }
        let mut index = json!({
            "name": package.name, "version": package.version, "build": package.build, "build_number": 0,
            "depends": package.depends, "subdir": package.subdir, "timestamp": 1_700_000_000_000u64, "license": "BSD-3-Clause",
        });
        if let Some(noarch) = package.noarch {
            index["noarch"] = json!(noarch);
        }
        let info = root.join("info");
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(info.join("index.json"), index.to_string()).unwrap();
        entries.extend(package.raw_paths.iter().cloned());
        std::fs::write(
            info.join("paths.json"),
            json!({"paths_version": 1, "paths": entries}).to_string(),
        )
        .unwrap();
        let listing: Vec<&str> = package
            .files
            .iter()
            .map(|f| f.0.as_str())
            .chain(package.symlinks.iter().map(|s| s.0.as_str()))
            .collect();
        std::fs::write(info.join("files"), listing.join("\n") + "\n").unwrap();
        for name in ["index.json", "paths.json", "files"] {
            paths.push(info.join(name));
        }
        let stem = format!("{}-{}-{}", package.name, package.version, package.build);
        let subdir = self.dir.join(package.subdir);
        std::fs::create_dir_all(&subdir).unwrap();
        let archive = subdir.join(format!("{stem}.conda"));
        let file = std::fs::File::create(&archive).unwrap();
        rattler_package_streaming::write::write_conda_package(
            file,
            root,
            &paths,
            CompressionLevel::Lowest,
            Some(1),
            &stem,
            None,
            None,
        )
        .unwrap();
        let bytes = std::fs::read(&archive).unwrap();
        let mut record = index.as_object().unwrap().clone();
        record.insert("sha256".into(), json!(hex::encode(Sha256::digest(&bytes))));
        record.insert("size".into(), json!(bytes.len()));
        self.records
            .get_mut(package.subdir)
            .unwrap()
            .insert(format!("{stem}.conda"), Value::Object(record));
        self.write_repodata();
        archive
    }

    /// Overwrite a package's recorded sha256 (to test that a mismatch is caught).
    pub fn corrupt_sha256(&mut self, subdir: &'static str, file: &str) {
        let record = self.records.get_mut(subdir).unwrap().get_mut(file).unwrap();
        record["sha256"] = json!("0".repeat(64));
        self.write_repodata();
    }

    fn write_repodata(&self) {
        for (subdir, packages) in &self.records {
            let dir = self.dir.join(subdir);
            std::fs::create_dir_all(&dir).unwrap();
            let repodata = json!({"info": {"subdir": subdir}, "packages": {}, "packages.conda": packages, "removed": [], "repodata_version": 1});
            std::fs::write(dir.join("repodata.json"), repodata.to_string()).unwrap();
        }
    }

    /// A `python` package whose prefix is a venv of this machine's CPython.
    pub fn add_python_stub(&mut self) -> String {
        self.add_python_stub_of("python3")
    }

    /// A `python` package whose prefix is a venv of `interpreter` (its real path is what
    /// the prefix links to, so it must exist at the same path wherever the env runs).
    pub fn add_python_stub_of(&mut self, interpreter: &str) -> String {
        let output = std::process::Command::new(interpreter)
            .args(["-c", "import sys, os; print(os.path.realpath(sys.executable)); print('%d.%d.%d' % sys.version_info[:3])"])
            .output()
            .unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let mut lines = text.lines();
        let executable = lines.next().unwrap().to_string();
        let version = lines.next().unwrap().to_string();
        let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
        let home = Path::new(&executable)
            .parent()
            .unwrap()
            .display()
            .to_string();
        self.add(&Package {
            name: "python".into(),
            version: version.clone(),
            build: "0_hpcbstub".into(),
            subdir: "linux-64",
            noarch: None,
            depends: Vec::new(),
            files: vec![(
                "pyvenv.cfg".into(),
                format!(
                    "home = {home}\ninclude-system-site-packages = false\nversion = {version}\n"
                ),
                false,
            )],
            symlinks: vec![
                (format!("bin/python{minor}"), executable),
                ("bin/python3".into(), format!("python{minor}")),
                ("bin/python".into(), format!("python{minor}")),
            ],
            raw_paths: Vec::new(),
        });
        minor
    }
}
