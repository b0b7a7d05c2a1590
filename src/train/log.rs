//! `trainer_log.jsonl`, one JSON object per log event with LLaMA-Factory's field names
//! (`current_steps, total_steps, loss, eval_loss, lr, epoch, percentage, elapsed_time,
//! remaining_time, throughput, total_tokens`; absent values omitted), so LLaMA-Factory's board and
//! plotting read a tunelab run. Extra keys: `grad_norm` and `eval_accuracy`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Python's `str(timedelta(seconds=int(s)))`: `H:MM:SS`, or `N day(s), H:MM:SS`.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (days, rest) = (s / 86_400, s % 86_400);
    let hms = format!("{}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    match days {
        0 => hms,
        1 => format!("1 day, {hms}"),
        d => format!("{d} days, {hms}"),
    }
}

/// Round as Python's `round(x, n)` does for display purposes.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The log file of a run.
pub struct TrainerLog {
    path: PathBuf,
}

impl TrainerLog {
    /// Start a fresh log in `dir`.
    pub fn create(dir: &Path) -> Result<TrainerLog> {
        let path = dir.join("trainer_log.jsonl");
        std::fs::write(&path, b"").map_err(|e| Error::io(&path, e))?;
        Ok(TrainerLog { path })
    }

    /// Continue the log in `dir` after `step`: later lines (written after the checkpoint being
    /// resumed) are dropped so the file reads as one uninterrupted run.
    pub fn resume(dir: &Path, step: usize) -> Result<TrainerLog> {
        let path = dir.join("trainer_log.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("current_steps").and_then(Value::as_u64))
                    .is_some_and(|s| s as usize <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::fsutil::write_atomic(&path, kept.as_bytes())?;
        Ok(TrainerLog { path })
    }

    /// Append one event.
    pub fn write(&self, event: &Map<String, Value>) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        let line = serde_json::to_string(event).expect("json");
        writeln!(f, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_python_timedelta() {
        assert_eq!(format_duration(5.9), "0:00:05");
        assert_eq!(format_duration(3723.0), "1:02:03");
        assert_eq!(format_duration(90_000.0), "1 day, 1:00:00");
        assert_eq!(round(1.23456, 2), 1.23);
    }

    #[test]
    fn resume_drops_lines_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let log = TrainerLog::create(dir.path()).unwrap();
        for s in 1..=4 {
            let mut m = Map::new();
            m.insert("current_steps".into(), s.into());
            log.write(&m).unwrap();
        }
        TrainerLog::resume(dir.path(), 2).unwrap();
        let text = std::fs::read_to_string(dir.path().join("trainer_log.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
