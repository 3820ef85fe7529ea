//! The `redcloud` binary: parses arguments, sets up logging and hands over to the library.
//! Exit codes: 0 success, 1 operation failed, 2 usage error.

use std::process::ExitCode;

fn main() -> ExitCode {
    redcloud::main_entry()
}
