//! The printed table, timing statistics, and process memory readings.

use std::time::Duration;

/// Whether a figure meets its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Meets it (with a qualifier, if any).
    Met(String),
    Missed(String),
    /// A reference figure without a target.
    Info,
}

impl Verdict {
    /// Met or missed according to `ok`.
    pub fn judge(ok: bool, qualifier: &str) -> Self {
        if ok {
            Verdict::Met(qualifier.to_owned())
        } else {
            Verdict::Missed(qualifier.to_owned())
        }
    }

    fn text(&self) -> String {
        let with = |word: &str, q: &str| {
            if q.is_empty() {
                word.to_owned()
            } else {
                format!("{word} ({q})")
            }
        };
        match self {
            Verdict::Met(q) => with("met", q),
            Verdict::Missed(q) => with("**missed**", q),
            Verdict::Info => "-".to_owned(),
        }
    }
}

/// The rows of the results table, and notes printed under it.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<[String; 5]>,
    notes: Vec<String>,
}

impl Table {
    /// Adds a row and echoes it to stderr at once (long runs show progress).
    pub fn row(
        &mut self,
        figure: &str,
        what: impl Into<String>,
        value: impl Into<String>,
        target: &str,
        verdict: Verdict,
    ) {
        let row = [
            figure.to_owned(),
            what.into(),
            value.into(),
            target.to_owned(),
            verdict.text(),
        ];
        eprintln!("  {} | {} | {} | {}", row[1], row[2], row[3], row[4]);
        self.rows.push(row);
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("  note: {note}");
        self.notes.push(note);
    }

    /// The table as markdown.
    pub fn markdown(&self) -> String {
        let mut out =
            String::from("| # | measurement | value | target | verdict |\n|---|---|---|---|---|\n");
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r[0], r[1], r[2], r[3], r[4]
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }
}

/// Minimum, median and maximum of some durations.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub min: Duration,
    pub median: Duration,
    pub max: Duration,
}

impl Stats {
    /// The statistics of `samples` (not empty).
    pub fn of(samples: &[Duration]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort();
        Self {
            min: sorted[0],
            median: sorted[sorted.len() / 2],
            max: sorted[sorted.len() - 1],
        }
    }

    /// "median ms (min .. max)".
    pub fn ms(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "{:.1} ms (min {:.1}, max {:.1})",
            ms(self.median),
            ms(self.min),
            ms(self.max)
        )
    }
}

/// A process's peak resident set size (`VmHWM`, KiB); `pid` is a number or "self".
pub fn peak_rss_kib(pid: &str) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

/// A process's current resident set size (`VmRSS`, KiB).
pub fn rss_kib(pid: &str) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
