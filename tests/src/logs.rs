//! The log lines the Lambda functions write, captured in memory: the same subscriber as
//! `lambda_runtime::tracing::init_default_subscriber` builds with `AWS_LAMBDA_LOG_FORMAT=JSON`
//! (what `LogFormat: JSON` in template.yaml sets), at a given level, into a buffer instead
//! of stdout. Tests read the lines; the cost benchmark counts their bytes.

use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;

/// A buffer the captured lines go to.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// A dispatcher formatting exactly as the functions do (JSON, no target, no time:
    /// CloudWatch stamps each line), at `level`.
    pub fn lambda_json(&self, level: LevelFilter) -> tracing::Dispatch {
        let subscriber = tracing_subscriber::fmt()
            .with_target(false)
            .without_time()
            .with_env_filter(
                EnvFilter::builder()
                    .with_default_directive(level.into())
                    .parse_lossy(""),
            )
            .with_writer(self.clone())
            .json()
            .finish();
        tracing::Dispatch::new(subscriber)
    }

    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer lock"))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Bytes written so far (what CloudWatch Logs ingests).
    pub fn bytes(&self) -> usize {
        self.0.lock().expect("log buffer lock").len()
    }

    /// Adds bytes written outside tracing (the metric lines the functions print).
    pub fn write_line(&self, line: &str) {
        let mut buffer = self.0.lock().expect("log buffer lock");
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
    }

    /// Forgets what was written.
    pub fn clear(&self) {
        self.0.lock().expect("log buffer lock").clear();
    }
}

/// One write into the buffer.
pub struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("log buffer lock"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter(self.0.clone())
    }
}
