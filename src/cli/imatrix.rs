//! `tunelab imatrix -m MODEL -f TEXT -o FILE`: collect an importance matrix as llama-imatrix does.

use std::path::PathBuf;
use std::process::ExitCode;

use tunelab::script::HostContext;
use tunelab::Error;

use super::progress_bar;

/// `tunelab imatrix`'s options (llama-imatrix's names).
#[derive(clap::Args, Debug)]
pub struct ImatrixArgs {
    /// The model: a Hugging Face folder, a .gguf file, or `tiny`.
    #[arg(short = 'm', long, value_name = "MODEL")]
    model: String,
    /// The calibration text (a plain text file).
    #[arg(short = 'f', long = "file", value_name = "TEXT")]
    text: PathBuf,
    /// Where to write: a .gguf (llama-imatrix's format) or a .dat (the legacy one).
    #[arg(short = 'o', long, value_name = "FILE")]
    output: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx", value_name = "N", default_value_t = 512)]
    ctx: usize,
    /// At most this many chunks (default: all the text holds).
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Also collect output.weight (an untied output projection).
    #[arg(long)]
    process_output: bool,
}

/// `tunelab imatrix -m MODEL -f TEXT -o FILE`: the importance matrix of MODEL over TEXT, with
/// a progress bar on a terminal (a line per chunk otherwise).
pub fn imatrix(ctx: &HostContext, args: &ImatrixArgs) -> Result<ExitCode, Error> {
    use tunelab::quant::imatrix::{collect_imatrix, ImatrixOptions};
    let text = std::fs::read_to_string(&args.text).map_err(|e| Error::io(&args.text, e))?;
    let start = std::time::Instant::now();
    let model = tunelab::model::load(&args.model, &Default::default())?;
    let opts = ImatrixOptions {
        ctx: args.ctx,
        chunks: args.chunks,
        process_output: args.process_output,
    };
    let bar = progress_bar("{bar:30.cyan/blue} {pos}/{len} chunks  [{elapsed_precise}, eta {eta}]");
    let mut progress = |done: usize, total: usize| match &bar {
        Some(bar) => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        None => eprintln!(
            "imatrix: chunk {done}/{total} of {} tokens, {:.1} s",
            args.ctx,
            start.elapsed().as_secs_f64()
        ),
    };
    let collected = collect_imatrix(&model, &text, &opts, &ctx.cancel, &mut progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let mut data = collected?;
    // llama-imatrix records the text file's name as given.
    data.datasets.push(args.text.display().to_string());
    data.save(&args.output)?;
    ctx.output.line(&format!(
        "wrote {} ({} tensors, {} chunks), {:.1} s",
        args.output.display(),
        data.entries.len(),
        data.chunk_count,
        start.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}
