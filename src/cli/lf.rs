//! `tunelab train | chat | export CONFIG.yaml [key=value ...]`: LLaMA-Factory's configs run
//! unchanged ([`tunelab::lfconfig`]). Notes (keys with no effect here, keys another command
//! reads) go to stderr before the work starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tunelab::lfconfig::{self, ChatPlan, Command, ConfigFile, ExportPlan, TrainPlan};
use tunelab::script::HostContext;
use tunelab::Error;

/// `tunelab train`'s arguments.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// A LLaMA-Factory config (.yaml, .yml or .json), e.g. examples/train_lora/llama3_lora_sft.yaml.
    config: PathBuf,
    /// Overrides as llamafactory-cli takes them: key=value or --key value (e.g. max_steps=10).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    overrides: Vec<String>,
    /// Print the equivalent tunelab script instead of training.
    #[arg(long)]
    print_script: bool,
}

/// `tunelab chat`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// A LLaMA-Factory config naming the model (and adapter, template, sampling keys).
    config: PathBuf,
    /// Overrides: key=value or --key value (e.g. temperature=0.3).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    overrides: Vec<String>,
}

/// Read and check `config` for `command`, printing its notes to stderr.
fn read(config: &Path, overrides: &[String], command: Command) -> Result<ConfigFile, Error> {
    let file = ConfigFile::read(config, overrides)?;
    for note in lfconfig::check(&file, command)? {
        eprintln!("{}: {note}", config.display());
    }
    Ok(file)
}

/// `tunelab train CONFIG [key=value ...] [--print-script]`.
pub fn train(ctx: &HostContext, args: &TrainArgs) -> Result<ExitCode, Error> {
    // After the first override every word is one, so the flag may arrive among them.
    let print_script = args.print_script || args.overrides.iter().any(|o| o == "--print-script");
    let overrides: Vec<String> = args
        .overrides
        .iter()
        .filter(|o| *o != "--print-script")
        .cloned()
        .collect();
    let file = read(&args.config, &overrides, Command::Train)?;
    let plan = TrainPlan::new(&file)?;
    if print_script {
        let name = args.config.display().to_string();
        print!("{}", lfconfig::script::train_script(&plan, &name));
        return Ok(ExitCode::SUCCESS);
    }
    let run = lfconfig::run::train(plan, &file, &ctx.output, &ctx.cancel)?;
    ctx.output.line(&run.to_string());
    Ok(ExitCode::SUCCESS)
}

/// `tunelab chat CONFIG [key=value ...]`: lines from stdin, replies streamed to stdout.
pub fn chat(ctx: &HostContext, args: &ChatArgs) -> Result<ExitCode, Error> {
    let file = read(&args.config, &args.overrides, Command::Chat)?;
    let plan = ChatPlan::new(&file)?;
    let stdin = std::io::stdin();
    lfconfig::run::chat(plan, &mut stdin.lock(), &ctx.output, &ctx.cancel)?;
    Ok(ExitCode::SUCCESS)
}

/// `tunelab export CONFIG [key=value ...]`: the merged model as a Hugging Face folder.
pub fn export(ctx: &HostContext, config: &Path, overrides: &[String]) -> Result<ExitCode, Error> {
    let file = read(config, overrides, Command::Export)?;
    let plan = ExportPlan::new(&file)?;
    let start = std::time::Instant::now();
    let summary = lfconfig::run::export(plan)?;
    ctx.output.line(&format!(
        "wrote {summary} ({:.1} s)",
        start.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}
