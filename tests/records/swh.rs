//! swh records against a loopback server speaking its API (tests/common/records.rs).
