//! The one way hpcbinder writes for people (stderr) and for programs (stdout).
//!
//! stdout carries data only: a key, a path, JSON. Everything for people goes to stderr,
//! filtered by `-q`/`-v` and coloured according to `--color`, `NO_COLOR` and the terminal.
//! Strings that come from a repository pass through [`sanitize`] before they are shown.

use std::io::{IsTerminal, Write};

use crate::variables;

/// How chatty to be on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors only.
    Quiet,
    /// Warnings, progress and results.
    Normal,
    /// Also debug detail.
    Verbose,
}

/// The `--color` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when stderr is a terminal and `NO_COLOR` is unset.
    #[default]
    Auto,
    /// Always colour, even into a pipe.
    Always,
    /// Never colour.
    Never,
}

/// Writes to stdout (data) and stderr (people).
#[derive(Debug, Clone)]
pub struct Printer {
    verbosity: Verbosity,
    color: bool,
    stderr_is_terminal: bool,
}

impl Printer {
    /// A printer for this process; the flag beats `NO_COLOR`, which beats terminal detection.
    pub fn new(verbosity: Verbosity, color: ColorChoice) -> Self {
        let stderr_is_terminal = std::io::stderr().is_terminal();
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                variables::get(variables::NO_COLOR).is_none() && stderr_is_terminal
            }
        };
        Self {
            verbosity,
            color,
            stderr_is_terminal,
        }
    }

    /// Whether progress bars may be drawn (stderr is a terminal and we are not quiet).
    pub fn can_animate(&self) -> bool {
        self.stderr_is_terminal && self.verbosity > Verbosity::Quiet
    }

    /// The verbosity in force.
    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// Write one line of data to stdout.
    pub fn data(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`hpcbinder key . | head -c0`) is not an error worth reporting.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// A line for people at normal verbosity.
    pub fn info(&self, line: &str) {
        if self.verbosity >= Verbosity::Normal {
            self.stderr(line);
        }
    }

    /// A line shown only with `-v`.
    pub fn debug(&self, line: &str) {
        if self.verbosity >= Verbosity::Verbose {
            self.stderr(line);
        }
    }

    /// A warning, shown unless `-q`.
    pub fn warning(&self, message: &str) {
        if self.verbosity >= Verbosity::Normal {
            let label = self.paint("warning:", "33");
            self.stderr(&format!("{label} {}", sanitize(message)));
        }
    }

    /// An already-rendered error block; always shown.
    pub fn error_block(&self, text: &str) {
        let mut out = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("error:") {
                out.push_str(&format!("{}{rest}\n", self.paint("error:", "1;31")));
            } else if let Some(rest) = line.strip_prefix("hint:") {
                out.push_str(&format!("{}{rest}\n", self.paint("hint:", "1;36")));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }

    fn stderr(&self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    fn paint(&self, text: &str, code: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// [`sanitize`] for a one-line field (an origin, a display name): line breaks become `?`
/// too, so repository text cannot fake lines of hpcbinder's own output.
pub fn sanitize_line(text: &str) -> String {
    sanitize(&text.replace(['\n', '\r'], "?"))
}

/// Make repository-controlled text safe for a terminal: control characters (escape
/// sequences) become `?`; line breaks and tabs stay (see [`sanitize_line`] for fields
/// that must stay on one line).
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn sanitize_removes_escape_sequences() {
        assert_eq!(sanitize("a\x1b]0;pwned\x07b"), "a?]0;pwned?b");
        assert_eq!(sanitize("line\nnext\ttab"), "line\nnext\ttab");
    }
}
