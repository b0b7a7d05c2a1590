//! The command line's subcommands that do more than call one library function, one file each,
//! and what they share. `main.rs` parses the arguments and hands them here.

pub mod allocator;
pub mod export;
pub mod imatrix;
pub mod lf;
pub mod quantize;
pub mod serve;

use std::io::IsTerminal;

/// A progress bar drawn with `template` on a terminal; None when stderr is not one.
pub fn progress_bar(template: &str) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(indicatif::ProgressStyle::with_template(template).expect("valid template"));
        bar
    })
}
