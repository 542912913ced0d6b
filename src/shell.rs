//! The one place values become shell text. Kernel helpers and activation scripts are the
//! only shell hpcbinder writes; every value that reaches them (paths, image names, the
//! image's Python, variables, module names) goes through [`quote`].

/// One `sh` word: single-quoted, so nothing inside is expanded (`$`, backticks, `;`,
/// newlines all stay literal).
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A value for a `#` comment line: line breaks would end the comment.
pub fn comment(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoted_words_survive_sh_unchanged() {
        for text in [
            "/plain/path",
            "/x$(touch /tmp/pwned)",
            "it's",
            "a\nb",
            "`id`",
            "$HOME ${HOME}",
        ] {
            let output = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", quote(text))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(output.stdout).unwrap(), text);
        }
    }
}
