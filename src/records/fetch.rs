//! Downloading a resolved record's files (verified, cached by checksum) and assembling
//! its tree in the user's cache, never half there.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{hydroshare, listing_digest, record_error, swh, Layout, RecordFile, Resolved};
use crate::events::{Phase, Reporter, ReporterExt};
use crate::http::{self, HttpError};
use crate::settings::Settings;
use crate::source::archive::Limits;
use crate::source::SourceError;

const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Progress of a download is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Waits between questions to a provider preparing a download (a HydroShare bag, a
/// vault bundle): 1 s, 2 s, 4 s ... at most 10 s apart, for at most `[records]
/// prepare-timeout` in all.
pub(super) struct Patience {
    started: Instant,
    timeout: Duration,
    delay: Duration,
}

impl Patience {
    pub(super) fn new(settings: &Settings) -> Self {
        Self {
            started: Instant::now(),
            timeout: settings.records.prepare_timeout(),
            delay: Duration::from_secs(1),
        }
    }

    /// Wait before asking again, reporting a `waiting` event that `message` words from
    /// the seconds it waits; `Err` with the timeout's seconds when the time is up.
    pub(super) fn wait(
        &mut self,
        reporter: &dyn Reporter,
        message: impl FnOnce(f64) -> String,
    ) -> Result<(), u64> {
        let remaining = self.timeout.saturating_sub(self.started.elapsed());
        if remaining.is_zero() {
            return Err(self.timeout.as_secs());
        }
        let wait = self.delay.min(remaining);
        reporter.phase(Phase::Waiting, message(wait.as_secs_f64().ceil()));
        std::thread::sleep(wait);
        self.delay = (self.delay * 2).min(Duration::from_secs(10));
        Ok(())
    }
}

/// The site's limits on what an archive may unpack to (`[archives]`).
pub(super) fn limits(settings: &Settings) -> Limits {
    settings.archives.limits()
}

/// A name for `text` that is one safe path component.
fn component(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Download what the cache lacks, then build the record's tree from the cache.
pub(super) fn assemble(
    resolved: &Resolved,
    cache: &Path,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<PathBuf, SourceError> {
    let downloads = cache.join("downloads");
    fs_err::create_dir_all(&downloads)?;
    let trees = cache.join("records");
    fs_err::create_dir_all(&trees)?;
    let digest = listing_digest(resolved);
    let name = component(&resolved.name());
    let tree = trees.join(format!("{name}-{}", &digest[..16]));
    if tree.join(".hpcbinder-complete").is_file() {
        return Ok(tree.join("tree"));
    }
    for file in &resolved.files {
        let Some(checksum) = &file.checksum else {
            continue;
        };
        let cached = downloads.join(checksum.cache_name());
        if !cached.is_file() {
            download_verified(settings, file, &cached, reporter)?;
        }
    }
    // Assembled beside its final name, then renamed: never half there.
    let temp = trees.join(crate::store::temp_name(&name));
    let root = temp.join("tree");
    fs_err::create_dir_all(&root)?;
    let built = fill(resolved, &downloads, &temp, &root, settings, reporter);
    if let Err(e) = built {
        let _ = fs_err::remove_dir_all(&temp);
        return Err(e);
    }
    fs_err::write(temp.join(".hpcbinder-complete"), b"")?;
    if let Err(e) = fs_err::rename(&temp, &tree) {
        let _ = fs_err::remove_dir_all(&temp);
        // Another process assembled it meanwhile.
        if !tree.join(".hpcbinder-complete").is_file() {
            return Err(e.into());
        }
    }
    reporter.phase(
        Phase::Fetching,
        format!("Record {} ready in {}", resolved.name(), tree.display()),
    );
    Ok(tree.join("tree"))
}

/// Put the record's files into `root` (`temp` holds scratch files), by its layout.
fn fill(
    resolved: &Resolved,
    downloads: &Path,
    temp: &Path,
    root: &Path,
    settings: &Settings,
    reporter: &dyn Reporter,
) -> Result<(), SourceError> {
    let limits = limits(settings);
    match &resolved.layout {
        Layout::Files => {
            for file in &resolved.files {
                let target = root.join(&file.path);
                if let Some(parent) = target.parent() {
                    fs_err::create_dir_all(parent)?;
                }
                match &file.checksum {
                    Some(checksum) => {
                        fs_err::copy(downloads.join(checksum.cache_name()), &target)?;
                    }
                    None => download_verified(settings, file, &target, reporter)?,
                }
            }
            if resolved.files.len() == 1 {
                crate::source::archive::unpack_single_archive(root, &limits).map_err(|e| {
                    record_error(
                        resolved.provider,
                        format!("{}: {e}", resolved.files[0].path),
                    )
                })?;
            }
            Ok(())
        }
        Layout::Bag { resource } => {
            hydroshare::fetch_bag(resolved, resource, temp, root, settings, reporter)
        }
        Layout::SwhDirectory { hash } => {
            swh::fetch_bundle(resolved, hash, temp, root, settings, reporter)
        }
    }
}

/// `Downloading <path>: 12.3 of 45.6 MB`, with the fraction done when the size is known
/// and the bytes in `bytes` and `total_bytes` (the terminal draws a bar of them; JSON
/// clients get `progress`).
pub(super) fn progress_event(path: &str, received: u64, size: Option<u64>) -> crate::events::Event {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let mut event = crate::events::Event::new(
        Phase::Fetching,
        match size {
            Some(size) => format!(
                "Downloading {path}: {:.1} of {:.1} MB",
                mb(received),
                mb(size)
            ),
            None => format!("Downloading {path}: {:.1} MB", mb(received)),
        },
    );
    event.progress = size
        .filter(|s| *s > 0)
        .map(|s| (received as f64 / s as f64).min(1.0));
    event.fields.insert("bytes".into(), received.into());
    if let Some(size) = size {
        event.fields.insert("total_bytes".into(), size.into());
    }
    event
}

/// Download `file` into `into`, verifying its checksum when it has one; nothing is left
/// on a mismatch or a failure.
pub(super) fn download_verified(
    settings: &Settings,
    file: &RecordFile,
    into: &Path,
    reporter: &dyn Reporter,
) -> Result<(), SourceError> {
    let size = file
        .size
        .map(|s| format!(" ({:.1} MB)", s as f64 / 1e6))
        .unwrap_or_default();
    reporter.phase(Phase::Fetching, format!("Downloading {}{size}", file.path));
    let dir = into.parent().unwrap_or(into);
    let attempt = || -> Result<(tempfile::NamedTempFile, Option<String>), HttpError> {
        let mut temp =
            tempfile::NamedTempFile::new_in(dir).map_err(|e| HttpError::Unreachable {
                url: file.url.clone(),
                message: format!("cannot write the download: {e}"),
            })?;
        let mut hasher = file.checksum.as_ref().map(|c| c.hasher());
        let handle = temp.as_file_mut();
        let (mut received, mut shown) = (0u64, Instant::now());
        let mut sink = |chunk: &[u8]| -> std::io::Result<()> {
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(chunk);
            }
            received += chunk.len() as u64;
            if shown.elapsed() >= PROGRESS_EVERY {
                shown = Instant::now();
                reporter.report(progress_event(&file.path, received, file.size));
            }
            handle.write_all(chunk)
        };
        http::download(settings, &file.url, READ_TIMEOUT, &mut sink)?;
        reporter.report(progress_event(
            &file.path,
            received,
            file.size.or(Some(received)),
        ));
        Ok((temp, hasher.map(|h| h.finish())))
    };
    let (temp, found) = http::retry(attempt, HttpError::is_transient).map_err(|e| {
        record_error(
            "the record's host",
            format!("could not download {}: {e}", file.path),
        )
    })?;
    if let (Some(expected), Some(found)) = (&file.checksum, found) {
        let found = expected.found(found);
        if &found != expected {
            return Err(SourceError::Checksum {
                file: file.path.clone(),
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
    }
    temp.persist(into).map_err(|e| SourceError::Io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_progress_says_how_far() {
        let event = progress_event("data.zip", 2_500_000, Some(10_000_000));
        assert_eq!(event.message, "Downloading data.zip: 2.5 of 10.0 MB\n");
        assert_eq!(event.progress, Some(0.25));
        assert_eq!(event.fields["bytes"], 2_500_000);
        assert_eq!(event.fields["total_bytes"], 10_000_000);
        assert_eq!(progress_event("x", 1, None).progress, None);
    }

    #[test]
    fn names_are_one_component() {
        assert_eq!(component("ckan-a/../b.v1"), "ckan-a_.._b.v1");
    }
}
