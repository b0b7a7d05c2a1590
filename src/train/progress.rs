//! Training progress for people: on a terminal an indicatif bar (step/total, loss, lr, tokens/s,
//! ETA) with each log event printed above it; otherwise (pipes, CI, captured output) one plain line
//! per log event through the output sink.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::output::Output;

/// Where progress goes.
pub struct Progress {
    bar: Option<ProgressBar>,
    output: Output,
}

impl Progress {
    /// A bar when stderr is a terminal and `interactive`; plain lines otherwise.
    pub fn new(total: usize, done: usize, output: &Output, interactive: bool) -> Progress {
        let bar = (interactive && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                )
                .expect("valid template")
                .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar.set_position(done as u64);
            bar.reset_eta();
            bar
        });
        Progress {
            bar,
            output: output.clone(),
        }
    }

    /// Move to `step` with the latest figures.
    pub fn update(&self, step: usize, loss: f64, lr: f64, tokens_per_sec: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "loss {loss:.4}  lr {lr:.2e}  {tokens_per_sec:.0} tok/s"
            ));
        }
    }

    /// A line of text (a log event, a checkpoint note).
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => self.output.line(text),
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
