//! What the admin tool's tests share: running the command and reading what it printed.

use std::process::Command;

/// The admin command (the binary this package builds), to be given its arguments and
/// environment.
pub fn admin_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webhooks-admin"))
}

/// Runs the admin command: its exit code (-1 when a signal ended it), stdout and stderr.
pub fn run(command: &mut Command) -> (i32, String, String) {
    let out = command.output().expect("run webhooks-admin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value the command printed after `label:`.
pub fn printed(stdout: &str, label: &str) -> String {
    let prefix = format!("{label}:");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{label} not printed: {stdout}"))
        .trim()
        .to_owned()
}
