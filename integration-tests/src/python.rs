//! python-tuf, the TUF reference implementation, for interoperability tests:
//! a Python interpreter that has `tuf` 7.x, and the scripts in
//! `integration-tests/python/` that drive it.
//!
//! The interpreter is `$OTA_PYTHON` when set; otherwise a virtualenv in the
//! cargo target directory (`target/python-venv`), created on first use with
//! `python3 -m venv` and `pip install`, and reused afterwards. A file lock
//! keeps parallel test processes from building it twice, and a marker file
//! written last tells a finished install from one a killed run left half done.

use anyhow::{bail, Context};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// What the venv installs: python-tuf 7 and securesystemslib with the
/// `cryptography` backend it needs to sign and verify ed25519, ECDSA and RSA.
pub const REQUIREMENTS: &[&str] = &["tuf>=7,<8", "securesystemslib[crypto]>=1,<2"];

/// Written into the venv after a successful install; its content names the
/// requirements, so changing them rebuilds the venv.
const MARKER: &str = ".ota-python-tuf-ready";

/// A Python interpreter that can `import tuf` (7.x), ready to run the scripts.
pub fn python() -> anyhow::Result<PathBuf> {
    // Once per test process: checking costs an interpreter start.
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| find_or_install().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("no Python with python-tuf 7: {e}"))
}

/// Path of one of the scripts in `integration-tests/python/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// Runs `python SCRIPT ARGS...` and returns its output, whatever its exit status.
pub fn run_script(name: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<Output> {
    let python = python()?;
    Command::new(&python)
        .arg(script(name))
        .args(args)
        // No stray user site-packages or bytecode files in the source tree.
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .with_context(|| format!("running {} {name}", python.display()))
}

fn find_or_install() -> anyhow::Result<PathBuf> {
    if let Some(python) = std::env::var_os("OTA_PYTHON") {
        let python = PathBuf::from(python);
        check_python_tuf(&python).with_context(|| {
            format!(
                "OTA_PYTHON={} cannot run python-tuf 7 (pip install {})",
                python.display(),
                REQUIREMENTS.join(" ")
            )
        })?;
        return Ok(python);
    }
    let venv = target_dir()?.join("python-venv");
    let python = venv.join("bin").join("python");
    let wanted_marker = REQUIREMENTS.join("\n");
    if marker_matches(&venv, &wanted_marker) {
        return Ok(python);
    }
    let lock_path = venv.with_extension("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening lock file {}", lock_path.display()))?;
    // Blocks while another test process builds the venv; released on drop.
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("locking {}: {errno}", lock_path.display()))?;
    if marker_matches(&venv, &wanted_marker) {
        return Ok(python);
    }
    install(&venv, &python)?;
    check_python_tuf(&python)?;
    ota_common::atomic::write_atomic(&venv.join(MARKER), wanted_marker.as_bytes())
        .with_context(|| format!("writing {}", venv.join(MARKER).display()))?;
    Ok(python)
}

fn marker_matches(venv: &Path, wanted: &str) -> bool {
    std::fs::read_to_string(venv.join(MARKER)).is_ok_and(|m| m == wanted)
        && venv.join("bin").join("python").exists()
}

fn install(venv: &Path, python: &Path) -> anyhow::Result<()> {
    if venv.exists() {
        // Left half-built by an interrupted run: start over.
        std::fs::remove_dir_all(venv)
            .with_context(|| format!("removing the unfinished venv {}", venv.display()))?;
    }
    eprintln!(
        "creating {} with {} (once; later runs reuse it)",
        venv.display(),
        REQUIREMENTS.join(" ")
    );
    let out = match Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(venv)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!(
            "python3 is not installed: `apt-get install python3 python3-venv` \
             (or set OTA_PYTHON to an interpreter that has python-tuf 7)"
        ),
        Err(e) => return Err(e).context("running python3 -m venv"),
    };
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(venv);
        bail!(
            "`python3 -m venv {}` failed ({}); on Debian/Ubuntu `apt-get install python3-venv` \
             provides it (or set OTA_PYTHON to an interpreter that has python-tuf 7):\n{}",
            venv.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(REQUIREMENTS)
        .env("PIP_NO_INPUT", "1")
        .output()
        .context("running pip install in the venv")?;
    if !out.status.success() {
        bail!(
            "pip install {} failed ({}):\n{}",
            REQUIREMENTS.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Fails unless `python` imports python-tuf 7 and the cryptography backend.
fn check_python_tuf(python: &Path) -> anyhow::Result<()> {
    let out = Command::new(python)
        .args([
            "-c",
            "import tuf, cryptography, securesystemslib.signer; \
             assert tuf.__version__.startswith('7.'), 'tuf ' + tuf.__version__",
        ])
        .env("PYTHONNOUSERSITE", "1")
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} cannot import python-tuf 7 with cryptography:\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The cargo target directory this test binary was built in: the nearest
/// ancestor of the executable holding cargo's `CACHEDIR.TAG`, or its
/// `.rustc_info.json` (cargo writes no `CACHEDIR.TAG` into a target
/// directory that existed before its first build, as when `./test` installs
/// a venv under target/ first).
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    exe.ancestors()
        .skip(1)
        .find(|dir| dir.join("CACHEDIR.TAG").is_file() || dir.join(".rustc_info.json").is_file())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "{} is not inside a cargo target directory; set OTA_PYTHON to a Python with python-tuf 7",
                exe.display()
            )
        })
}
