//! Versions and platforms as users write them: a leaf module (it imports nothing of the
//! crate), shared by settings, detection and the Python choice.

use std::path::PathBuf;

/// What `--python` or the `python` key asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PythonRequest {
    /// `X.Y` or `X.Y.Z`.
    Version(String),
    /// An interpreter, by path.
    Path(PathBuf),
}

impl PythonRequest {
    /// Parse `3.11`, `3.11.7` or a path (anything with a `/`); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.contains('/') {
            return Some(Self::Path(PathBuf::from(text)));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let numeric = parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        (numeric && (2..=3).contains(&parts.len())).then(|| Self::Version(text.to_string()))
    }
}

/// The first `X.Y` in a version constraint.
pub fn first_major_minor(text: &str) -> Option<String> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits: Vec<&str> = text[start..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?
        .split('.')
        .filter(|p| !p.is_empty())
        .take(2)
        .collect();
    (digits.len() == 2).then(|| digits.join("."))
}

/// The conda platform of this machine (`linux-64`, `linux-aarch64`, `osx-arm64`, ...).
pub fn host_platform() -> &'static str {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => "linux-64",
        ("linux", "aarch64") => "linux-aarch64",
        ("linux", "powerpc64") => "linux-ppc64le",
        ("macos", "x86_64") => "osx-64",
        ("macos", "aarch64") => "osx-arm64",
        ("windows", _) => "win-64",
        _ => "linux-64",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_like_uvs_python_flag() {
        assert_eq!(
            PythonRequest::parse("3.11"),
            Some(PythonRequest::Version("3.11".into()))
        );
        assert_eq!(
            PythonRequest::parse("3.11.7"),
            Some(PythonRequest::Version("3.11.7".into()))
        );
        assert_eq!(
            PythonRequest::parse("/usr/bin/python3.11"),
            Some(PythonRequest::Path("/usr/bin/python3.11".into()))
        );
        assert_eq!(
            PythonRequest::parse("./venv/bin/python"),
            Some(PythonRequest::Path("./venv/bin/python".into()))
        );
        for bad in ["3", "python3", "3.x", "3..1", "3.11.7.1", ""] {
            assert_eq!(PythonRequest::parse(bad), None, "{bad}");
        }
    }
}
