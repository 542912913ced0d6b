//! The `[archives]` table: how much a downloaded archive (a record's zip or tarball) may
//! unpack to. Unset keys keep [`Limits::default`]; a value outside its range is a config
//! error naming the key, so a typo (`max-bytes = 4`, meant as GiB) fails at start-up
//! instead of refusing every record.

use serde::{Deserialize, Serialize, Serializer};

use super::{ConfigError, Origin};
use crate::source::archive::Limits;

/// Sizes are whole numbers of bytes (no other setting has a size syntax to share).
const MIB: u64 = 1 << 20;
/// The largest size either byte key takes: more is a typo, not a record.
const TIB: u64 = 1 << 40;

/// The `[archives]` table of a config file, as written (all optional).
/// `config show` prints the limits it resolves to.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArchivesTable {
    /// Bytes of file contents an archive may unpack to (default 4 GiB).
    pub max_bytes: Option<u64>,
    /// Entries of any kind, implied directories included (default 100,000).
    pub max_entries: Option<u64>,
    /// Decompressed bytes per compressed byte (default 100).
    pub max_ratio: Option<u64>,
    /// Decompressed bytes below which the ratio is not checked (default 64 MiB).
    pub ratio_floor_bytes: Option<u64>,
}

/// One key's name (as `BadValue` shows it), value, and allowed range with its wording.
type Bounded = (&'static str, Option<u64>, u64, u64, &'static str);

impl ArchivesTable {
    /// The extraction limits: each key set, else its default.
    pub fn limits(&self) -> Limits {
        let defaults = Limits::default();
        Limits {
            max_total_bytes: self.max_bytes.unwrap_or(defaults.max_total_bytes),
            max_entries: self.max_entries.unwrap_or(defaults.max_entries),
            max_ratio: self.max_ratio.unwrap_or(defaults.max_ratio),
            ratio_floor_bytes: self.ratio_floor_bytes.unwrap_or(defaults.ratio_floor_bytes),
        }
    }

    /// The first key set outside its range, as the error `resolve` returns.
    pub(super) fn validate(&self, origin: &Origin) -> Result<(), ConfigError> {
        let keys: [Bounded; 4] = [
            (
                "archives.max-bytes",
                self.max_bytes,
                MIB,
                TIB,
                "a whole number of bytes from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
            ),
            (
                "archives.max-entries",
                self.max_entries,
                1,
                10_000_000,
                "a whole number from 1 to 10000000",
            ),
            (
                "archives.max-ratio",
                self.max_ratio,
                2,
                100_000,
                "a whole number from 2 to 100000 (raise ratio-floor-bytes to check less)",
            ),
            (
                "archives.ratio-floor-bytes",
                self.ratio_floor_bytes,
                MIB,
                TIB,
                "a whole number of bytes from 1048576 (1 MiB) to 1099511627776 (1 TiB)",
            ),
        ];
        for (name, value, low, high, allowed) in keys {
            match value {
                Some(value) if !(low..=high).contains(&value) => {
                    return Err(ConfigError::BadValue {
                        name,
                        value: value.to_string(),
                        origin: origin.clone(),
                        allowed: allowed.into(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The limits in force, by their config names (what `config show` prints).
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Resolved {
    max_bytes: u64,
    max_entries: u64,
    max_ratio: u64,
    ratio_floor_bytes: u64,
}

impl Serialize for ArchivesTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let limits = self.limits();
        Resolved {
            max_bytes: limits.max_total_bytes,
            max_entries: limits.max_entries,
            max_ratio: limits.max_ratio,
            ratio_floor_bytes: limits.ratio_floor_bytes,
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn parse(text: &str) -> Result<ArchivesTable, toml::de::Error> {
        toml::from_str(text)
    }

    fn site() -> Origin {
        Origin::SiteConfig(PathBuf::from("/etc/hpcbinder/config.toml"))
    }

    #[test]
    fn unset_keys_keep_the_default_limits() {
        let table = parse("").unwrap();
        assert_eq!(table.limits(), Limits::default());
        assert!(table.validate(&site()).is_ok());
        let table = parse("max-entries = 500\nmax-bytes = 1073741824").unwrap();
        assert_eq!(
            table.limits(),
            Limits {
                max_total_bytes: 1 << 30,
                max_entries: 500,
                ..Limits::default()
            }
        );
    }

    #[test]
    fn every_key_is_read_in_kebab_case() {
        let table = parse(
            "max-bytes = 2097152\nmax-entries = 7\nmax-ratio = 20\nratio-floor-bytes = 3145728",
        )
        .unwrap();
        assert!(table.validate(&site()).is_ok());
        assert_eq!(
            table.limits(),
            Limits {
                max_total_bytes: 2 << 20,
                max_entries: 7,
                max_ratio: 20,
                ratio_floor_bytes: 3 << 20,
            }
        );
    }

    #[test]
    fn unknown_keys_negative_numbers_and_size_strings_do_not_parse() {
        let unknown = parse("max-size = 5").unwrap_err().to_string();
        assert!(
            unknown.contains("unknown field `max-size`") && unknown.contains("max-bytes"),
            "{unknown}"
        );
        assert!(parse("max-entries = -1").is_err());
        assert!(parse("max-bytes = \"4GiB\"").is_err());
    }

    #[test]
    fn zero_and_absurd_values_are_errors_naming_the_key() {
        let cases = [
            ("max-bytes = 0", "archives.max-bytes", "0"),
            ("max-bytes = 4", "archives.max-bytes", "4"),
            (
                "max-bytes = 2199023255552",
                "archives.max-bytes",
                "2199023255552",
            ),
            ("max-entries = 0", "archives.max-entries", "0"),
            ("max-entries = 10000001", "archives.max-entries", "10000001"),
            ("max-ratio = 0", "archives.max-ratio", "0"),
            ("max-ratio = 1000000", "archives.max-ratio", "1000000"),
            ("ratio-floor-bytes = 0", "archives.ratio-floor-bytes", "0"),
        ];
        for (text, key, value) in cases {
            let error = parse(text).unwrap().validate(&site()).unwrap_err();
            let message = error.to_string();
            assert_eq!(
                message,
                format!("invalid {key} `{value}` (from site config /etc/hpcbinder/config.toml)"),
            );
            let hint = crate::diagnostic::Diagnostic::hint(&error).unwrap();
            assert!(hint.contains("a whole number"), "{hint}");
        }
    }

    #[test]
    fn config_show_prints_the_limits_in_force() {
        let table = parse("max-ratio = 30").unwrap();
        assert_eq!(
            serde_json::to_value(&table).unwrap(),
            serde_json::json!({
                "max-bytes": 4u64 << 30,
                "max-entries": 100_000,
                "max-ratio": 30,
                "ratio-floor-bytes": 64u64 << 20,
            })
        );
    }
}
