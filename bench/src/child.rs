//! A figure's child process: this bench binary run again (`webhooks-bench <figure>-child ...`),
//! fresh, so that nothing of the parent's heap, connections or caches is in its figure. The
//! child prints `key=value` fields on stdout; the parent reads them by name.

use std::str::FromStr;
use std::time::Duration;
use tokio::process::Command;

/// This bench binary as a command running `subcommand`, killed if its parent stops waiting.
pub fn command(subcommand: &str) -> Command {
    let me = std::env::current_exe().expect("the bench binary's own path");
    let mut command = Command::new(me);
    command.arg(subcommand).kill_on_drop(true);
    command
}

/// What a child printed.
pub struct Fields(String);

impl Fields {
    /// All it printed.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// The field `name`, read as a `T`; `None` when it is missing or not a `T`.
    pub fn get<T: FromStr>(&self, name: &str) -> Option<T> {
        self.0
            .split_whitespace()
            .find_map(|field| field.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    }

    /// The field `name`, which the child always prints (a bench run stops without it).
    pub fn need<T: FromStr>(&self, name: &str) -> T {
        self.get(name)
            .unwrap_or_else(|| panic!("the child printed {:?}, without {name}", self.0))
    }
}

/// Runs `command` to its end within `within`: what it printed, or why it printed nothing to
/// read (it did not start, it failed, with its output, or it took too long).
pub async fn run(command: &mut Command, within: Duration) -> Result<Fields, String> {
    let out = match tokio::time::timeout(within, command.output()).await {
        Err(_) => return Err(format!("no answer within {within:?}")),
        Ok(Err(e)) => return Err(format!("could not start: {e}")),
        Ok(Ok(out)) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(Fields(stdout))
    } else {
        Err(format!(
            "{} {} {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
