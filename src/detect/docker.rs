//! A repository Dockerfile's base images, for the site's source rules
//! ([`crate::sources`]): which ones could come from this machine's image storage.

use super::is_local_channel;

/// The images a Dockerfile builds from: `FROM` and `COPY --from` references that are not
/// its own stages (or `scratch`), with `ARG` defaults declared before them put in.
pub fn dockerfile_images(text: &str) -> Vec<String> {
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    let mut args: Vec<(String, String)> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut images: Vec<String> = Vec::new();
    let expand = |reference: &str, args: &[(String, String)]| {
        let mut out = reference.to_string();
        for (name, value) in args {
            out = out
                .replace(&format!("${{{name}}}"), value)
                .replace(&format!("${name}"), value);
        }
        out
    };
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(instruction) = words.first().map(|w| w.to_ascii_uppercase()) else {
            continue;
        };
        let operands: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--platform"))
            .collect();
        match instruction.as_str() {
            "ARG" => {
                for operand in &operands {
                    if let Some((name, value)) = operand.split_once('=') {
                        args.push((name.to_string(), value.trim_matches('"').to_string()));
                    }
                }
            }
            "FROM" => {
                if let Some(reference) = operands.first() {
                    let reference = expand(reference, &args);
                    if !stages.iter().any(|s| s.eq_ignore_ascii_case(&reference))
                        && !reference.eq_ignore_ascii_case("scratch")
                    {
                        images.push(reference);
                    }
                }
                if operands.len() >= 3 && operands[1].eq_ignore_ascii_case("as") {
                    stages.push(operands[2].to_string());
                }
            }
            "COPY" | "ADD" => {
                for word in &words[1..] {
                    if let Some(from) = word.strip_prefix("--from=") {
                        let from = expand(from, &args);
                        let is_stage = stages.iter().any(|s| s.eq_ignore_ascii_case(&from))
                            || from.chars().all(|c| c.is_ascii_digit());
                        if !is_stage {
                            images.push(from);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    images.dedup();
    images
}

/// Why an image reference may resolve to this machine's image storage, or `None` when it
/// names a registry that is not on this machine.
pub fn local_image(reference: &str) -> Option<&'static str> {
    if reference.contains('$') {
        return Some(
            "it names a build argument without a default, so where it comes from is unknown",
        );
    }
    let first = reference.split('/').next().unwrap_or(reference);
    let has_registry =
        reference.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    if !has_registry {
        return Some("a short name may resolve to an image in this machine's storage; name the registry (e.g. docker.io/library/python:3.12)");
    }
    if is_local_channel(&format!("https://{first}")) {
        return Some("it is on this machine");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_images_leave_out_stages_and_expand_arg_defaults() {
        let text = "ARG BASE=docker.io/library/python:3.12\nFROM --platform=linux/amd64 $BASE AS build\nFROM build\nCOPY --from=build /a /b\nCOPY --from=localhost/other:1 /c /d\nCOPY --from=0 /e /f\nFROM scratch\nFROM ${MISSING}\n";
        assert_eq!(
            dockerfile_images(text),
            [
                "docker.io/library/python:3.12",
                "localhost/other:1",
                "${MISSING}"
            ]
        );
        assert_eq!(local_image("docker.io/library/python:3.12"), None);
        assert_eq!(local_image("registry.example:5000/x"), None);
        assert!(local_image("localhost/other:1").is_some());
        assert!(local_image("127.0.0.1:5000/x").is_some());
        assert!(local_image("python:3.12").is_some());
        assert!(local_image("${MISSING}").is_some());
    }
}
