//! `runtime.txt`: `name-version`, `name-YYYY-MM-DD` or `name-version-YYYY-MM-DD`
//! (repo2docker's grammar, `reference/repo2docker.md` §1.4).

use super::{DetectError, RepoFiles};

/// A parsed `runtime.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// `python`, `r`, ...
    pub name: String,
    /// `X.Y` for Python (a third component is dropped); `X.Y[.Z]` for R.
    pub version: Option<String>,
    /// `YYYY-MM-DD`.
    pub date: Option<String>,
    /// Root-relative path of the file.
    pub path: String,
}

/// Read and parse `runtime.txt`, if present.
pub fn read(files: &RepoFiles) -> Result<Option<Runtime>, DetectError> {
    let path = files.display("runtime.txt");
    let Some(text) = files.read("runtime.txt")? else {
        return Ok(None);
    };
    parse(&path, &text).map(Some)
}

fn parse(path: &str, text: &str) -> Result<Runtime, DetectError> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let malformed = |line: usize, message: String| DetectError::Malformed {
        file: path.to_string(),
        line: Some(line),
        message,
    };
    let Some(&(line, content)) = lines.first() else {
        return Err(malformed(
            1,
            "runtime.txt is empty; expected e.g. `python-3.12` or `r-4.4-2024-06-01`".into(),
        ));
    };
    if let Some(&(extra, _)) = lines.get(1) {
        return Err(malformed(
            extra,
            "runtime.txt must hold exactly one line".into(),
        ));
    }
    let parts: Vec<&str> = content.split('-').collect();
    let expected = || {
        format!("`{content}` is not `name-version`, `name-YYYY-MM-DD` or `name-version-YYYY-MM-DD` (e.g. `python-3.12`, `r-4.4-2024-06-01`)")
    };
    if parts.iter().any(|p| p.is_empty()) {
        return Err(malformed(line, expected()));
    }
    let (name, version, date) = match parts.as_slice() {
        [name, version] => (*name, Some(*version), None),
        [name, y, m, d] => (*name, None, Some(format!("{y}-{m}-{d}"))),
        [name, version, y, m, d] => (*name, Some(*version), Some(format!("{y}-{m}-{d}"))),
        _ => return Err(malformed(line, expected())),
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(malformed(line, expected()));
    }
    if let Some(version) = version {
        if !version
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(malformed(
                line,
                format!("`{version}` is not a version number like 3.12"),
            ));
        }
    }
    if let Some(date) = &date {
        if !valid_date(date) {
            return Err(malformed(
                line,
                format!("`{date}` is not a date like 2024-06-01"),
            ));
        }
    }
    let version = version.map(|v| {
        if name == "python" {
            v.split('.').take(2).collect::<Vec<_>>().join(".")
        } else {
            v.to_string()
        }
    });
    // `python-3` means "the default Python 3", as in repo2docker.
    let version = version.filter(|v| name != "python" || v.contains('.'));
    Ok(Runtime {
        name: name.to_string(),
        version,
        date,
        path: path.to_string(),
    })
}

fn valid_date(date: &str) -> bool {
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    let number = |s: &str, len: usize| {
        (s.len() == len && s.chars().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    matches!(
        (number(y, 4), number(m, 2), number(d, 2)),
        (Some(_), Some(1..=12), Some(1..=31))
    )
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn grammar() {
        let rt = parse("runtime.txt", "python-3.11.4\n").unwrap();
        assert_eq!(
            (rt.name.as_str(), rt.version.as_deref(), rt.date),
            ("python", Some("3.11"), None)
        );
        let rt = parse("runtime.txt", "r-4.3-2024-01-10").unwrap();
        assert_eq!(
            (rt.version.as_deref(), rt.date.as_deref()),
            (Some("4.3"), Some("2024-01-10"))
        );
        let rt = parse("runtime.txt", "r-2024-01-10").unwrap();
        assert_eq!((rt.version, rt.date.as_deref()), (None, Some("2024-01-10")));
        assert_eq!(parse("runtime.txt", "python-3").unwrap().version, None);
        for bad in [
            "",
            "python",
            "python-3.x",
            "r-4.3-2024-13-01",
            "py thon-3.1",
            "python-3.1\npython-3.2",
        ] {
            assert!(parse("runtime.txt", bad).is_err(), "{bad:?} should fail");
        }
    }
}
