//! Which Python an environment is built with: the request grammar (`X.Y`, `X.Y.Z` or an
//! interpreter path, as uv's `-p` reads it), probing interpreters (shims such as pyenv's
//! resolved to the executable behind them), and the choice between the configured
//! version, the repository's and the `python3` on PATH.
//!
//! Probing a pyenv shim runs a chain of shell scripts (~100 ms), more than the rest of a
//! warm build, so what a PATH entry turned out to be is cached per user (never in the
//! shared store, where another member could point it elsewhere) in
//! `$XDG_CACHE_HOME/hpcbinder/interpreters.json`, keyed by everything a shim's answer
//! depends on: its path and modification time, the working directory (pyenv reads
//! `.python-version` files upwards from it), `PYENV_VERSION`, and pyenv's global version
//! file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::detect::EnvSpec;
use crate::settings::{Origin, Settings};
use crate::variables;

/// The Python used when nothing names one and no `python3` is on PATH.
pub const FALLBACK_VERSION: &str = "3.12";

pub use crate::version::PythonRequest as Request;

/// A real interpreter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Interpreter {
    /// `sys.executable`, absolute.
    pub path: PathBuf,
    /// `X.Y.Z`.
    pub version: String,
}

impl Interpreter {
    /// `X.Y`.
    pub fn minor(&self) -> String {
        self.version
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }

    /// Whether this interpreter is the version `wanted` (`X.Y` or `X.Y.Z`) names.
    pub fn matches(&self, wanted: &str) -> bool {
        self.version == wanted || self.version.starts_with(&format!("{wanted}."))
    }
}

/// Where the chosen version came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--python` or a config file.
    Configured(Origin),
    /// runtime.txt, environment.yml, `requires-python`, a lock file.
    Repository,
    /// The `python3` on PATH, because nothing named a version.
    Host,
    /// Nothing named a version and there is no `python3` on PATH.
    Fallback,
}

/// The Python a build uses.
#[derive(Debug, Clone)]
pub struct Choice {
    /// What enters the key and the conda spec: `X.Y`, or `X.Y.Z` when that was asked for.
    pub version: String,
    /// Where it came from.
    pub source: Source,
    /// The interpreter, when already known (a path was configured, or the host's).
    pub interpreter: Option<Interpreter>,
}

impl Choice {
    /// One line for the events: which Python, and why.
    pub fn describe(&self) -> String {
        let interpreter = self
            .interpreter
            .as_ref()
            .map(|i| format!(" ({} {})", i.path.display(), i.version))
            .unwrap_or_default();
        let why = match &self.source {
            Source::Configured(origin) => format!("from {origin}"),
            Source::Repository => "asked for by the repository".to_string(),
            Source::Host => "the python3 on PATH; the repository names no version".to_string(),
            Source::Fallback => {
                "the built-in default: nothing names a version and no python3 is on PATH"
                    .to_string()
            }
        };
        format!("Python {}{interpreter}, {why}", self.version)
    }
}

/// Choose the Python for `spec`: the configured one (it beats the repository's: a centre
/// may offer one Python only), else the repository's, else the `python3` on PATH, else
/// [`FALLBACK_VERSION`].
pub fn choose(spec: &EnvSpec, settings: &Settings) -> Choice {
    choose_for(spec.python.as_deref(), settings)
}

/// [`choose`] for a repository that asks for `repository` (or nothing).
pub fn choose_for(repository: Option<&str>, settings: &Settings) -> Choice {
    if let Some(request) = settings.python.as_deref().and_then(Request::parse) {
        let source = Source::Configured(settings.origin("python"));
        return match request {
            Request::Version(version) => Choice {
                version,
                source,
                interpreter: None,
            },
            Request::Path(path) => match probe(&path) {
                Some(interpreter) => Choice {
                    version: interpreter.minor(),
                    source,
                    interpreter: Some(interpreter),
                },
                // Reported when the build looks for it; the key still needs a value.
                None => Choice {
                    version: path.display().to_string(),
                    source,
                    interpreter: None,
                },
            },
        };
    }
    if let Some(version) = repository {
        return Choice {
            version: version.to_string(),
            source: Source::Repository,
            interpreter: None,
        };
    }
    match host() {
        Some(interpreter) => Choice {
            version: interpreter.minor(),
            source: Source::Host,
            interpreter: Some(interpreter.clone()),
        },
        None => Choice {
            version: FALLBACK_VERSION.to_string(),
            source: Source::Fallback,
            interpreter: None,
        },
    }
}

/// The `python3` on PATH (memoised for the process).
pub fn host() -> Option<&'static Interpreter> {
    static HOST: OnceLock<Option<Interpreter>> = OnceLock::new();
    HOST.get_or_init(|| crate::variables::on_path("python3").and_then(|path| probe(&path)))
        .as_ref()
}

/// The interpreter a build of `spec` uses: the chosen one ([`choose`]), else the first on
/// PATH of the chosen version.
pub fn interpreter_for(spec: &EnvSpec, settings: &Settings) -> Result<Interpreter, NotFound> {
    let choice = choose(spec, settings);
    match choice.interpreter {
        Some(interpreter) => Ok(interpreter),
        None => find(&choice.version),
    }
}

/// No interpreter of the version or at the path asked for.
#[derive(Debug, thiserror::Error)]
#[error("no Python {wanted} interpreter found{where_}")]
pub struct NotFound {
    /// The version or path.
    pub wanted: String,
    /// Where it looked.
    pub where_: String,
}

/// The interpreter for `wanted`: a path is probed as it is; a version is looked for on
/// PATH as `pythonX.Y`, `python3`, `python`.
pub fn find(wanted: &str) -> Result<Interpreter, NotFound> {
    if let Some(Request::Path(path)) = Request::parse(wanted) {
        return probe(&path).ok_or_else(|| NotFound {
            wanted: path.display().to_string(),
            where_: String::new(),
        });
    }
    let minor: String = wanted.split('.').take(2).collect::<Vec<_>>().join(".");
    for name in [format!("python{minor}"), "python3".into(), "python".into()] {
        if let Some(interpreter) = crate::variables::on_path(&name).and_then(|p| probe(&p)) {
            if interpreter.matches(wanted) {
                return Ok(interpreter);
            }
        }
    }
    Err(NotFound {
        wanted: wanted.to_string(),
        where_: " on PATH".into(),
    })
}

/// What `command` really is (cached per user; see the module docs).
pub fn probe(command: &Path) -> Option<Interpreter> {
    let cache_file = cache_file();
    let key = cache_key(command)?;
    let mut cache: BTreeMap<String, Interpreter> = cache_file
        .as_ref()
        .and_then(|f| fs_err::read_to_string(f).ok())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    if let Some(hit) = cache.get(&key).filter(|i| i.path.is_file()) {
        return Some(hit.clone());
    }
    let interpreter = run_probe(command)?;
    if let Some(file) = cache_file {
        cache.insert(key, interpreter.clone());
        if let Some(dir) = file.parent() {
            if fs_err::create_dir_all(dir).is_ok() {
                let text = serde_json::to_string(&cache).unwrap_or_default();
                let _ = crate::store::write_atomic(&file, text.as_bytes(), 0o600);
            }
        }
    }
    Some(interpreter)
}

fn run_probe(command: &Path) -> Option<Interpreter> {
    let output = Command::new(command)
        .args([
            "-c",
            "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let mut lines = text.lines();
    let path = PathBuf::from(lines.next()?.trim());
    let version = lines.next()?.trim().to_string();
    path.is_absolute().then_some(Interpreter { path, version })
}

/// `$XDG_CACHE_HOME/hpcbinder/interpreters.json`, else under `~/.cache`.
fn cache_file() -> Option<PathBuf> {
    variables::get(variables::XDG_CACHE_HOME)
        .map(PathBuf::from)
        .or_else(|| variables::get(variables::HOME).map(|h| Path::new(&h).join(".cache")))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("hpcbinder").join("interpreters.json"))
}

fn cache_key(command: &Path) -> Option<String> {
    let modified = |path: &Path| {
        fs_err::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| format!("{t:?}"))
            .unwrap_or_default()
    };
    let command = if command.is_absolute() {
        command.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(command)
    };
    let mut key = format!("{}@{}", command.display(), modified(&command));
    // A pyenv shim answers from PYENV_VERSION, `.python-version` files above the working
    // directory, then `$PYENV_ROOT/version`.
    if command
        .parent()
        .is_some_and(|dir| dir.file_name().is_some_and(|n| n == "shims"))
    {
        let root = command.parent().and_then(Path::parent)?;
        let cwd = std::env::current_dir().ok()?;
        let local = cwd
            .ancestors()
            .map(|dir| dir.join(".python-version"))
            .find(|file| file.is_file())
            .map(|file| format!("{}@{}", file.display(), modified(&file)))
            .unwrap_or_default();
        let global = root.join("version");
        key.push_str(&format!(
            "|{}|{local}|{}",
            variables::get(variables::PYENV_VERSION).unwrap_or_default(),
            modified(&global)
        ));
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_match_by_components() {
        let interpreter = Interpreter {
            path: "/usr/bin/python3".into(),
            version: "3.11.7".into(),
        };
        assert!(interpreter.matches("3.11"));
        assert!(interpreter.matches("3.11.7"));
        assert!(!interpreter.matches("3.1"));
        assert!(!interpreter.matches("3.11.8"));
        assert_eq!(interpreter.minor(), "3.11");
    }
}
