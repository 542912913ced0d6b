//! Exit statuses and the one renderer of error chains (`error:` / `  caused by:` / `hint:`).
//!
//! Domain modules return their own `thiserror` enums; the command layer wraps them with
//! `anyhow::Context`. This module walks the chain once, picks the exit status from the
//! first domain error that classifies itself, and prints every cause exactly once.

use std::fmt::Write as _;
use std::process::ExitCode;

use crate::printer::{sanitize, Printer};

/// How a command ended; `main` turns it into the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything worked.
    Success,
    /// The user's input (arguments, repository, spec files, config) is wrong: exit 1.
    Failure,
    /// The environment failed us (I/O, network, an internal fault): exit 2.
    Error,
    /// A child process we ran exited with this code; it is passed through.
    External(u8),
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Success => ExitCode::from(0),
            ExitStatus::Failure => ExitCode::from(1),
            ExitStatus::Error => ExitCode::from(2),
            ExitStatus::External(code) => ExitCode::from(code),
        }
    }
}

pub use crate::diagnostic::{Blame, Diagnostic};

/// Every domain error type, in one list: the renderer finds a [`Diagnostic`] among an
/// error chain's causes by these types. A test fails when a type implements
/// `Diagnostic` and is missing here (it would exit 2 without its hint).
macro_rules! domain_errors {
    ($($name:ident => $path:path),* $(,)?) => {
        /// A cause as one of our domain errors, if it is one.
        fn as_diagnostic<'a>(
            cause: &'a (dyn std::error::Error + 'static),
        ) -> Option<&'a dyn Diagnostic> {
            $(
                if let Some(d) = cause.downcast_ref::<$path>() {
                    return Some(d);
                }
            )*
            None
        }

        /// A domain error at the top of an `anyhow` chain (one attached with
        /// `.context(...)` is only visible through `anyhow::Error::downcast_ref`).
        fn top_diagnostic(error: &anyhow::Error) -> Option<&dyn Diagnostic> {
            $(
                if let Some(d) = error.downcast_ref::<$path>() {
                    return Some(d);
                }
            )*
            None
        }

        /// The names of the listed types, for the completeness test.
        #[cfg(test)]
        const DOMAIN_ERRORS: &[&str] = &[$(stringify!($name)),*];
    };
}

domain_errors! {
    SourceError => crate::source::SourceError,
    ArchiveError => crate::source::archive::ArchiveError,
    DetectError => crate::detect::DetectError,
    ConfigError => crate::settings::ConfigError,
    PlanError => crate::plan::PlanError,
    CollabError => crate::collab::CollabError,
    StoreError => crate::store::StoreError,
    BuildError => crate::backends::BuildError,
    ServeConfigError => crate::serve::ServeConfigError,
    SlurmError => crate::slurm::SlurmError,
}

/// Find the first [`Diagnostic`] in an error chain.
fn diagnostic(error: &anyhow::Error) -> Option<&dyn Diagnostic> {
    top_diagnostic(error).or_else(|| error.chain().find_map(as_diagnostic))
}

/// The exit status an error maps to.
pub fn exit_status(error: &anyhow::Error) -> ExitStatus {
    match diagnostic(error).map(Diagnostic::blame) {
        Some(Blame::User) => ExitStatus::Failure,
        _ => ExitStatus::Error,
    }
}

/// Render an error chain as text: one `error:` line, one `caused by:` per cause, a hint.
pub fn render(error: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut chain = error.chain();
    if let Some(top) = chain.next() {
        let _ = writeln!(out, "error: {}", sanitize(&top.to_string()));
    }
    for cause in chain {
        let _ = writeln!(out, "  caused by: {}", sanitize(&cause.to_string()));
    }
    if let Some(hint) = diagnostic(error).and_then(Diagnostic::hint) {
        let _ = writeln!(out, "hint: {}", sanitize(&hint));
    }
    out
}

/// The whole chain on one line, for `failed` events.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = error.chain().map(|c| sanitize(&c.to_string())).collect();
    parts.dedup();
    let mut line = parts.join(": ");
    if let Some(hint) = diagnostic(error).and_then(Diagnostic::hint) {
        let _ = write!(line, " (hint: {})", sanitize(&hint));
    }
    line
}

/// Print an error through the printer and return its exit status.
pub fn report(printer: &Printer, error: &anyhow::Error) -> ExitStatus {
    printer.error_block(&render(error));
    exit_status(error)
}

#[cfg(test)]
mod tests {
    /// Every `impl Diagnostic for X` in the crate is in `domain_errors!`.
    #[test]
    fn every_domain_error_is_known_to_the_renderer() {
        let mut missing = Vec::new();
        for entry in walkdir::WalkDir::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")) {
            let entry = entry.unwrap();
            if entry.path().extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap();
            for line in text.lines() {
                if let Some(rest) = line.trim().strip_prefix("impl Diagnostic for ") {
                    let name = rest.trim_end_matches(['{', ' ']);
                    if !super::DOMAIN_ERRORS.contains(&name) {
                        missing.push(format!("{name} ({})", entry.path().display()));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "add to domain_errors!: {missing:?}");
    }
}
