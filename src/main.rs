//! The `hpcbinder` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    hpcbinder::run()
}
