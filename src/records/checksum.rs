//! The checksums providers publish (md5, SHA-1, SHA-256, SHA-512), and computing them
//! while a file streams in.

use std::fmt;

/// A hash algorithm a provider names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The algorithm a provider calls `name` (`md5`, `MD5`, `SHA-1`, `sha256`, ...).
    fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "md5" => Some(Self::Md5),
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Hex digits in a digest.
    fn hex_len(self) -> usize {
        match self {
            Self::Md5 => 32,
            Self::Sha1 => 40,
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

/// A published checksum: an algorithm and a lowercase hex digest of the right length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Checksum {
    algorithm: Algorithm,
    hex: String,
}

impl Checksum {
    /// `hex` under the algorithm a provider calls `algorithm`, when both are usable.
    pub(super) fn new(algorithm: &str, hex: &str) -> Option<Self> {
        let algorithm = Algorithm::from_name(algorithm)?;
        let hex = hex.trim().to_ascii_lowercase();
        (hex.len() == algorithm.hex_len() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(Self { algorithm, hex })
    }

    /// `md5:<hex>` / `sha256:<hex>` (Zenodo's and CKAN's form), or a bare hex digest
    /// whose length says its algorithm (32: md5, 40: SHA-1, 64: SHA-256, 128: SHA-512).
    pub(super) fn parse(text: &str) -> Option<Self> {
        match text.trim().split_once(':') {
            Some((algorithm, hex)) => Self::new(algorithm, hex),
            None => [
                Algorithm::Md5,
                Algorithm::Sha1,
                Algorithm::Sha256,
                Algorithm::Sha512,
            ]
            .into_iter()
            .find(|a| a.hex_len() == text.trim().len())
            .and_then(|a| Self::new(a.name(), text)),
        }
    }

    /// The name of the cached download (`md5-<hex>`).
    pub(super) fn cache_name(&self) -> String {
        format!("{}-{}", self.algorithm.name(), self.hex)
    }

    /// A hasher of this algorithm.
    pub(super) fn hasher(&self) -> Hasher {
        match self.algorithm {
            Algorithm::Md5 => Hasher::Md5(<md5::Md5 as md5::Digest>::new()),
            Algorithm::Sha1 => Hasher::Sha1(<sha1::Sha1 as sha1::Digest>::new()),
            Algorithm::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
            Algorithm::Sha512 => Hasher::Sha512(<sha2::Sha512 as sha2::Digest>::new()),
        }
    }

    /// The same algorithm with the digest `hex` (what a hasher found).
    pub(super) fn found(&self, hex: String) -> Self {
        Self {
            algorithm: self.algorithm,
            hex,
        }
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// A running digest.
pub(super) enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Md5(h) => md5::Digest::update(h, bytes),
            Self::Sha1(h) => sha1::Digest::update(h, bytes),
            Self::Sha256(h) => sha2::Digest::update(h, bytes),
            Self::Sha512(h) => sha2::Digest::update(h, bytes),
        }
    }

    /// The digest in lowercase hex.
    pub(super) fn finish(self) -> String {
        match self {
            Self::Md5(h) => hex::encode(md5::Digest::finalize(h)),
            Self::Sha1(h) => hex::encode(sha1::Digest::finalize(h)),
            Self::Sha256(h) => hex::encode(sha2::Digest::finalize(h)),
            Self::Sha512(h) => hex::encode(sha2::Digest::finalize(h)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_checksums_are_read_and_computed() {
        let md5 = Checksum::parse("md5:900150983CD24FB0D6963F7D28E17F72").unwrap();
        assert_eq!(md5.to_string(), "md5:900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(md5.cache_name(), "md5-900150983cd24fb0d6963f7d28e17f72");
        let sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let parsed = Checksum::new("SHA-256", sha256).unwrap();
        assert_eq!(Checksum::parse(sha256), Some(parsed.clone()));
        for (checksum, expected) in [
            (md5, "900150983cd24fb0d6963f7d28e17f72"),
            (parsed, sha256),
            (
                Checksum::new("SHA-1", "a9993e364706816aba3e25717850c26c9cd0d89d").unwrap(),
                "a9993e364706816aba3e25717850c26c9cd0d89d",
            ),
        ] {
            let mut hasher = checksum.hasher();
            hasher.update(b"ab");
            hasher.update(b"c");
            assert_eq!(hasher.finish(), expected);
        }
        assert_eq!(Checksum::new("crc32", "12345678"), None);
        assert_eq!(Checksum::new("md5", "abc"), None);
        assert_eq!(
            Checksum::parse("md5:zz0150983cd24fb0d6963f7d28e17f72"),
            None
        );
        assert_eq!(Checksum::parse(""), None);
    }
}
