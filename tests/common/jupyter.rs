//! A kernel check that does not use hpcbinder's own verifier: the real `jupyter_client`
//! (offline, from the test wheelhouse) finds the kernelspec, starts the kernel as Jupyter
//! does, runs one cell with a `BlockingKernelClient` and shuts the kernel down with a
//! shutdown request, so a bug in `hpcbinder::kernel::verify` cannot hide a broken kernel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::test_deps;

/// Start the kernel, run the cell, collect stdout, ask the kernel to shut down and write
/// what happened as JSON to argv[4]. Errors (no kernelspec, a kernel that dies or does
/// not answer in time) end the script with a traceback on stderr.
const SCRIPT: &str = r#"
import json, os, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

kernel_dir, code, timeout, result_path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
specs = KernelSpecManager(kernel_dirs=[os.path.dirname(kernel_dir)], ensure_native_kernel=False)
# Enough time for a container engine to stop and remove the kernel's container before
# jupyter_client would escalate to signals.
manager = KernelManager(
    kernel_name=os.path.basename(kernel_dir), kernel_spec_manager=specs, shutdown_wait_time=60.0
)
result = {"stdout": "", "status": None, "error": None}
manager.start_kernel()
try:
    client = manager.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=timeout)
        chunks = []

        def output(message):
            kind, content = message["msg_type"], message["content"]
            if kind == "stream" and content["name"] == "stdout":
                chunks.append(content["text"])
            elif kind == "error":
                result["error"] = "%s: %s" % (content["ename"], content["evalue"])

        reply = client.execute_interactive(
            code, timeout=timeout, output_hook=output, allow_stdin=False
        )
        result["status"] = reply["content"]["status"]
        result["stdout"] = "".join(chunks)
    finally:
        client.stop_channels()
finally:
    manager.shutdown_kernel(now=False)
# jupyter_client records whether the kernel stopped on the request or had to be signalled.
status = getattr(manager, "_shutdown_status", None)
result["shutdown"] = getattr(status, "value", None)
result["alive"] = manager.is_alive()
with open(result_path, "w") as f:
    json.dump(result, f)
"#;

/// A Python with `jupyter_client` installed offline from the wheelhouse by the test uv.
/// Made once per machine (per wheel and Python version) in Cargo's scratch directory for
/// integration tests, under a file lock so concurrent test binaries share it.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let deps = test_deps();
        let wheel = std::fs::read_dir(&deps.wheelhouse)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .find(|name| name.starts_with("jupyter_client-") && name.ends_with(".whl"))
            .expect("a jupyter_client wheel in the wheelhouse (tests/wheelhouse.txt)");
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("jupyter-client");
        std::fs::create_dir_all(&root).unwrap();
        let lock = std::fs::File::create(root.join(".lock")).unwrap();
        lock.lock().unwrap();
        let venv = root.join(format!(
            "{}-py{}",
            wheel.trim_end_matches(".whl"),
            super::python_minor()
        ));
        let python = venv.join("bin/python");
        let ready = venv.join("hpcbinder-test-ready");
        if !(ready.is_file() && imports_jupyter_client(&python)) {
            let _ = std::fs::remove_dir_all(&venv);
            let uv = |configure: &dyn Fn(&mut Command)| {
                let mut command = Command::new(&deps.uv);
                configure(&mut command);
                let output = command
                    .env("UV_CACHE_DIR", root.join("uv-cache"))
                    .env("UV_PYTHON_DOWNLOADS", "never")
                    .env("UV_NO_CONFIG", "1")
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{command:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            };
            uv(&|command| {
                command.args(["venv", "--python", "python3"]).arg(&venv);
            });
            uv(&|command| {
                command
                    .args(["pip", "install", "--python"])
                    .arg(&python)
                    .args(["--offline", "--no-index", "--find-links"])
                    .arg(&deps.wheelhouse)
                    .arg("jupyter_client");
            });
            assert!(
                imports_jupyter_client(&python),
                "jupyter_client in {venv:?}"
            );
            std::fs::write(&ready, "").unwrap();
        }
        python
    })
}

/// `python -c <code>` with nothing from the developer's Jupyter setup: config, data and
/// connection files in `scratch`.
fn script(code: &str, scratch: &Path) -> Command {
    let mut command = Command::new(python());
    command
        .arg("-c")
        .arg(code)
        .env("JUPYTER_RUNTIME_DIR", scratch.join("runtime"))
        .env("JUPYTER_CONFIG_DIR", scratch.join("config"))
        .env("JUPYTER_DATA_DIR", scratch.join("data"))
        .env("JUPYTER_PLATFORM_DIRS", "1")
        .env_remove("JUPYTER_CONFIG_PATH");
    command
}

fn imports_jupyter_client(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import jupyter_client"])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Start the kernelspec in `kernel_dir` with `jupyter_client` (the directory's parent as
/// the only kernel directory, its name as the kernel name), run `code`, require `expected`
/// on stdout (within `seconds` for the start and for the cell) and a kernel that stops on
/// a shutdown request. The kernel gets this process's environment, as with
/// [`super::run_cell`].
pub fn run_cell(kernel_dir: &Path, code: &str, expected: &str, seconds: u64) {
    let scratch = tempfile::tempdir().unwrap();
    let result = scratch.path().join("result.json");
    let output = script(SCRIPT, scratch.path())
        .arg(kernel_dir)
        .arg(code)
        .arg(seconds.to_string())
        .arg(&result)
        .output()
        .unwrap();
    let log = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    assert!(
        output.status.success(),
        "jupyter_client could not run a cell in {}:\n{}",
        kernel_dir.display(),
        log()
    );
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(
        result["status"],
        "ok",
        "the cell failed in {} ({}):\n{}",
        kernel_dir.display(),
        result["error"],
        log()
    );
    assert_eq!(
        result["stdout"].as_str().unwrap().trim(),
        expected,
        "what the cell printed, through jupyter_client ({})",
        kernel_dir.display()
    );
    assert_eq!(
        result["shutdown"],
        "ShutdownRequest",
        "the kernel in {} did not stop on the shutdown request (jupyter_client signalled it):\n{}",
        kernel_dir.display(),
        log()
    );
    assert_eq!(
        result["alive"], false,
        "the kernel still runs after shutdown"
    );
}

/// Start the kernel as Jupyter does, wait until it answers, then end it the hard way:
/// `shutdown_kernel(now=True)` (what Jupyter does to a hung kernel) for `"now"`, or
/// SIGKILL of the process Jupyter started, alone, for `"sigkill"`.
const KILL_SCRIPT: &str = r#"
import os, signal, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

kernel_dir, mode, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
specs = KernelSpecManager(kernel_dirs=[os.path.dirname(kernel_dir)], ensure_native_kernel=False)
manager = KernelManager(kernel_name=os.path.basename(kernel_dir), kernel_spec_manager=specs)
manager.start_kernel()
client = manager.blocking_client()
client.start_channels()
client.wait_for_ready(timeout=timeout)
client.stop_channels()
if mode.startswith("hold:"):
    # Keep the kernel until the file named after `hold:` appears (the caller stops the
    # kernel's container meanwhile), then clean up as Jupyter would.
    import time
    while not os.path.exists(mode[len("hold:"):]):
        time.sleep(0.1)
    manager.shutdown_kernel(now=True)
elif mode == "now":
    manager.shutdown_kernel(now=True)
else:
    os.kill(manager.provisioner.process.pid, signal.SIGKILL)
    manager.provisioner.process.wait()
"#;

/// [`KILL_SCRIPT`] for the kernelspec in `kernel_dir`; panics when the kernel never
/// answered.
pub fn start_and_kill(kernel_dir: &Path, mode: &str, seconds: u64) {
    let output = start_and_kill_command(kernel_dir, mode, seconds)
        .0
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "jupyter_client ({mode}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The command [`start_and_kill`] runs (to spawn it, for `hold:<file>`), with the scratch
/// directory it must outlive.
pub fn start_and_kill_command(
    kernel_dir: &Path,
    mode: &str,
    seconds: u64,
) -> (Command, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let mut command = script(KILL_SCRIPT, scratch.path());
    command.arg(kernel_dir).arg(mode).arg(seconds.to_string());
    (command, scratch)
}
