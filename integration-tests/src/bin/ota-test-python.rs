//! `ota-test-python`: makes ready the python-tuf interpreter the
//! interoperability tests use (`integration_tests::python`: `$OTA_PYTHON`, or
//! a venv in the target directory built on first use) and prints its path.
//! `./test` runs it before the suite, so a machine that cannot get python-tuf
//! learns it in one message, not from a failing test.

use std::process::ExitCode;

fn main() -> ExitCode {
    match integration_tests::python::python() {
        Ok(python) => {
            println!("{}", python.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ota-test-python: {e:#}");
            ExitCode::from(2)
        }
    }
}
