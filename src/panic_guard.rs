//! The CLI's last line of defence: a panic anywhere in a command becomes a message asking for a
//! bug report and exit status 1, never Rust's 101. (A stack overflow aborts before any handler can
//! run; the parsers' depth limits are what prevent those.)

use std::panic::{self, UnwindSafe};
use std::process::ExitCode;

/// What a panic prints, after `qfuse: internal error: <message> at <location>`.
pub const BUG_REPORT: &str = "this is a bug in qfuse, not in your input or setup; please report it with the command line \
     and, if you can, the input files";

/// Runs `command`; a panic inside it prints one message (with [`BUG_REPORT`]) to stderr and
/// returns exit status 1. Panics contained by `qfuse::util::contain_panic` print nothing.
pub fn run(command: impl FnOnce() -> ExitCode + UnwindSafe) -> ExitCode {
    panic::set_hook(Box::new(|info| {
        if qfuse::util::panic_is_contained() {
            return; // a dependency's panic that becomes an error (`qfuse::util::contain_panic`)
        }
        let message = qfuse::util::panic_message(info.payload());
        let at = info.location().map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        eprintln!("qfuse: internal error: {message}{at}\n{BUG_REPORT}");
    }));
    let code = panic::catch_unwind(command).unwrap_or(ExitCode::FAILURE);
    drop(panic::take_hook());
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_exit_status_1() {
        assert_eq!(run(|| panic!("planted")), ExitCode::FAILURE);
        assert_eq!(run(|| ExitCode::SUCCESS), ExitCode::SUCCESS);
        assert_eq!(run(|| ExitCode::from(3)), ExitCode::from(3));
    }
}
