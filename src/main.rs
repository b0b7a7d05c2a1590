//! The `tunelab` command line: a thin shell over the library.
//!
//! `tunelab` (REPL, or a script from stdin when stdin is not a terminal), `tunelab run FILE
//! [-- key=value ...]`, `tunelab test [DIR | FILE ...] [--junit PATH]`, `tunelab quantize IN OUT
//! TYPE [--rules FILE] [--tensor-type PATTERN=TYPE]... [--output-tensor-type T]
//! [--token-embedding-type T] [--pure] [--imatrix FILE]`, `tunelab export --model M
//! [--adapter A] --out PATH [--format hf|gguf|peft|lora-gguf] [--type T] [--shard-size S]`, `tunelab imatrix -m MODEL -f TEXT
//! -o FILE [--ctx N] [--chunks N] [--process-output]`, `tunelab --version`.
//! Exit codes: 0 ok, 1 script error or failed test, 2 usage or I/O error, 130 cancelled by Ctrl-C.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use tunelab::cancel::CancelToken;
use tunelab::script::runner::{self, ScriptFailure};
use tunelab::script::{build_engine, test_runner, EngineOptions, HostContext};
use tunelab::{repl, Error};

/// Exit code of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_CANCELLED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "tunelab",
    about = "Fine-tune, diagnose, quantize and serve Llama-family models from Rhai scripts.",
    after_help = "With no command: an interactive REPL on a terminal, or run the script read from stdin."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a script; values after `--` reach it as the map ARGS (e.g. `-- lr=2e-4 epochs=3`).
    Run {
        /// The .rhai script.
        file: PathBuf,
        /// key=value pairs (numbers and true/false are parsed).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Quantize a GGUF model as llama-quantize does (IN: a .gguf; TYPE: a preset such as Q4_K_M,
    /// Q6_K, Q8_0, Q4_0, or F16/BF16/F32).
    Quantize {
        /// The model to read (a .gguf file; quantized input is dequantized first).
        input: PathBuf,
        /// The GGUF to write (atomically).
        output: PathBuf,
        /// The preset or float type.
        #[arg(value_name = "TYPE")]
        ty: String,
        #[command(flatten)]
        plan: QuantizeFlags,
    },
    /// Export a model, with its LoRA adapter merged in, or the adapter alone (the counterpart of
    /// `llamafactory-cli export`).
    Export(ExportArgs),
    /// Collect an importance matrix as llama-imatrix does, for quantizing with --imatrix.
    Imatrix(ImatrixArgs),
    /// Run regression scripts (default tests/scripts/); exits 1 if any fails.
    Test {
        /// Folders (searched recursively) or script files.
        paths: Vec<PathBuf>,
        /// Also write a JUnit XML report here.
        #[arg(long, value_name = "PATH")]
        junit: Option<PathBuf>,
    },
}

/// `tunelab export`'s options.
#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// The base model: a Hugging Face folder, a .gguf file, or `tiny`.
    #[arg(long, value_name = "MODEL")]
    model: String,
    /// A LoRA adapter folder (PEFT format: a run's output or a checkpoint).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Where to write: a folder for hf and peft, a file for gguf and lora-gguf.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// hf (merged Hugging Face folder with an Ollama Modelfile), gguf (merged model for
    /// llama.cpp), peft (the adapter), lora-gguf (the adapter for llama.cpp's --lora).
    #[arg(long, default_value = "hf")]
    format: String,
    /// gguf: F32, F16, BF16 or a llama-quantize preset such as Q4_K_M.
    #[arg(long = "type", value_name = "TYPE", default_value = "F16")]
    ty: String,
    /// hf: the largest shard, e.g. 5GB, 500MB.
    #[arg(long, value_name = "SIZE", default_value = "5GB")]
    shard_size: String,
    /// hf: the weights' dtype: bf16 (default; f16 models stay f16), f16 or f32.
    #[arg(long)]
    dtype: Option<String>,
    /// hf: the chat template for the Modelfile and tokenizer_config.json (a built-in name;
    /// default the adapter's training template, else the model's own).
    #[arg(long)]
    template: Option<String>,
    /// Replace an existing output.
    #[arg(long)]
    overwrite: bool,
}

/// `tunelab imatrix`'s options (llama-imatrix's names).
#[derive(clap::Args, Debug)]
struct ImatrixArgs {
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

/// llama-quantize's options for choosing tensor types.
#[derive(clap::Args, Debug, Default)]
struct QuantizeFlags {
    /// Rules, one PATTERN=TYPE per line (`#` comments) or a JSON array of {pattern, type}.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// A rule: tensors whose name matches the regular expression get TYPE (first match wins;
    /// these come before the file's).
    #[arg(long = "tensor-type", value_name = "PATTERN=TYPE")]
    tensor_type: Vec<String>,
    /// The type of output.weight.
    #[arg(long = "output-tensor-type", value_name = "TYPE")]
    output_tensor_type: Option<String>,
    /// The type of token_embd.weight.
    #[arg(long = "token-embedding-type", value_name = "TYPE")]
    token_embedding_type: Option<String>,
    /// Every weight in TYPE's base type: no per-tensor mixture.
    #[arg(long)]
    pure: bool,
    /// An importance matrix (llama-imatrix's or `tunelab imatrix`'s .gguf, or a legacy .dat):
    /// quantize with its per-column weights, as llama-quantize --imatrix does (Q2_K_S needs one).
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
}

/// candle's element-wise thread pool spin-waits; with one pool thread (matrix products still use
/// every core through `RAYON_NUM_THREADS`) prompts ran 6–22 % faster here, and a busy machine is
/// spared the spinning (specs/candle.md). A value the user sets wins.
fn default_thread_settings() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn main() -> ExitCode {
    default_thread_settings();
    let info = tunelab::version::build_info();
    let command = Cli::command()
        .version(info.crates[0].1)
        .long_version(info.to_string().trim_start_matches("tunelab ").to_string());
    let matches = command.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let ctx = HostContext::stdout();
    install_ctrl_c(&ctx.cancel);
    let result = match cli.command {
        None if std::io::stdin().is_terminal() => repl::run(ctx).map(|()| ExitCode::SUCCESS),
        None => run_stdin(&ctx),
        Some(Command::Run { file, args }) => run_file(&ctx, &file, &args),
        Some(Command::Test { paths, junit }) => run_tests(&ctx, paths, junit),
        Some(Command::Quantize {
            input,
            output,
            ty,
            plan,
        }) => quantize(&ctx, &input, &output, &ty, &plan),
        Some(Command::Export(args)) => export(&ctx, &args),
        Some(Command::Imatrix(args)) => imatrix(&ctx, &args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("tunelab: {e}");
        ExitCode::from(e.exit_code())
    })
}

/// First Ctrl-C: cancel what is running. Second, while that is still winding down: quit now.
fn install_ctrl_c(cancel: &CancelToken) {
    let cancel = cancel.clone();
    let installed = ctrlc::set_handler(move || {
        if cancel.is_cancelled() {
            std::process::exit(EXIT_CANCELLED.into());
        }
        cancel.cancel();
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not cancel cleanly: {e}");
    }
}

fn failure_code(failure: &ScriptFailure) -> ExitCode {
    eprint!("{}", failure.rendered);
    if failure.diagnostic.cancelled {
        ExitCode::from(EXIT_CANCELLED)
    } else {
        ExitCode::FAILURE
    }
}

fn run_file(ctx: &HostContext, file: &Path, words: &[String]) -> Result<ExitCode, Error> {
    let args = runner::parse_args(words)?;
    let text = runner::read_script(file)?;
    let engine = build_engine(ctx, &EngineOptions::default());
    let name = file.to_string_lossy();
    Ok(match runner::run_source(&engine, &name, &text, args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(failure) => failure_code(&failure),
    })
}

/// `printf 'let x = 40;\nx + 2\n' | tunelab` prints 42: a piped session shows its final value.
fn run_stdin(ctx: &HostContext) -> Result<ExitCode, Error> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Error::io("<stdin>", e))?;
    let engine = build_engine(ctx, &EngineOptions::default());
    Ok(
        match runner::run_source(&engine, "<stdin>", &text, rhai::Map::new()) {
            Ok(value) if value.is_unit() => ExitCode::SUCCESS,
            Ok(value) => {
                ctx.output.line(&runner::display(&engine, value));
                ExitCode::SUCCESS
            }
            Err(failure) => failure_code(&failure),
        },
    )
}

/// The plan the command line asks for.
fn quantize_plan(
    ty: &str,
    flags: &QuantizeFlags,
) -> Result<tunelab::quant::plan::QuantPlan, Error> {
    use tunelab::quant::plan::{read_rules, writable_type, QuantPlan, Target, TypeRule};
    let mut plan = QuantPlan::new(Target::named(ty)?);
    for spec in &flags.tensor_type {
        plan.rules.push(TypeRule::parse(spec, "--tensor-type")?);
    }
    if let Some(file) = &flags.rules {
        plan.rules.extend(read_rules(file)?);
    }
    if let Some(t) = &flags.output_tensor_type {
        plan.output_type = Some(writable_type(t, "--output-tensor-type")?);
    }
    if let Some(t) = &flags.token_embedding_type {
        plan.token_embd_type = Some(writable_type(t, "--token-embedding-type")?);
    }
    plan.pure = flags.pure;
    if let Some(file) = &flags.imatrix {
        use tunelab::gguf::imatrix_file::ImatrixData;
        use tunelab::quant::plan::Importance;
        if !file.is_file() {
            return Err(Error::msg(format!(
                "--imatrix {}: no such file; give an importance matrix made by `tunelab imatrix` or llama-imatrix (.gguf or .dat)",
                file.display()
            )));
        }
        let data = ImatrixData::load(file)?;
        // llama-quantize records the path as given on its command line.
        let importance = Importance::from_imatrix(&data, &file.to_string_lossy())?;
        plan.importance = Some(std::sync::Arc::new(importance));
    }
    // llama-quantize refuses such a preset up front, whatever the model's tensors become.
    if let Target::Preset(p) = plan.target {
        if p.needs_imatrix() && plan.importance.is_none() {
            return Err(Error::msg(format!(
                "{ty} needs an importance matrix: collect one with `tunelab imatrix` (or llama-imatrix) and pass it with --imatrix FILE"
            )));
        }
    }
    Ok(plan)
}

/// `tunelab quantize IN OUT TYPE`: each tensor of IN quantized with the plan's type, as
/// llama-quantize does, with a progress bar on a terminal.
fn quantize(
    ctx: &HostContext,
    input: &Path,
    output: &Path,
    ty: &str,
    flags: &QuantizeFlags,
) -> Result<ExitCode, Error> {
    let plan = quantize_plan(ty, flags)?;
    if input
        .extension()
        .is_none_or(|e| !e.eq_ignore_ascii_case("gguf"))
    {
        return Err(Error::msg(format!(
            "{}: tunelab quantize reads a .gguf model (load other formats in a script and use export_gguf)",
            input.display()
        )));
    }
    let start = std::time::Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} tensors  {msg}  [{elapsed_precise}]",
            )
            .expect("valid template"),
        );
        bar
    });
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    let report = tunelab::gguf::requantize::requantize(input, output, &plan, &mut |p| {
        match counts.iter_mut().find(|(t, _)| *t == p.ggml_type) {
            Some(c) => c.1 += 1,
            None => counts.push((p.ggml_type, 1)),
        }
        if let Some(bar) = &bar {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            bar.set_message(format!("{} → {}", p.name, p.ggml_type));
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = report?;
    let types: Vec<String> = counts.iter().map(|(t, n)| format!("{t} {n}")).collect();
    ctx.output.line(&format!(
        "wrote {}: {} tensors ({}), {:.1} MB of weights, file type {} ({ty}), {:.1} s",
        output.display(),
        report.tensors,
        types.join(", "),
        report.bytes as f64 / 1e6,
        report.file_type,
        start.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}

/// `tunelab imatrix -m MODEL -f TEXT -o FILE`: the importance matrix of MODEL over TEXT, with
/// a progress bar on a terminal (a line per chunk otherwise).
fn imatrix(ctx: &HostContext, args: &ImatrixArgs) -> Result<ExitCode, Error> {
    use tunelab::quant::imatrix::{collect_imatrix, ImatrixOptions};
    let text = std::fs::read_to_string(&args.text).map_err(|e| Error::io(&args.text, e))?;
    let start = std::time::Instant::now();
    let model = tunelab::model::load(&args.model, &Default::default())?;
    let opts = ImatrixOptions {
        ctx: args.ctx,
        chunks: args.chunks,
        process_output: args.process_output,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} chunks  [{elapsed_precise}, eta {eta}]",
            )
            .expect("valid template"),
        );
        bar
    });
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

/// `tunelab export --model M [--adapter A] --out PATH [--format F] ...`.
fn export(ctx: &HostContext, args: &ExportArgs) -> Result<ExitCode, Error> {
    use tunelab::export::{ExportFormat, ExportJob};
    let format = ExportFormat::named(&args.format)?;
    let dtype = match args.dtype.as_deref() {
        None => None,
        Some("f32") => Some(candle_core::DType::F32),
        Some("bf16") => Some(candle_core::DType::BF16),
        Some("f16") => Some(candle_core::DType::F16),
        Some(other) => {
            return Err(Error::msg(format!(
                "--dtype {other}: choose bf16, f16 or f32"
            )))
        }
    };
    let job = ExportJob {
        format,
        gguf_type: args.ty.clone(),
        shard_size: tunelab::model::shards::parse_size(&args.shard_size)?,
        dtype,
        template: args.template.clone(),
        overwrite: args.overwrite,
    };
    if format.adapter_only() && args.adapter.is_none() {
        return Err(Error::msg(format!(
            "--format {}: writes the adapter, so give one with --adapter DIR",
            args.format
        )));
    }
    let start = std::time::Instant::now();
    let model = tunelab::model::load(&args.model, &Default::default())?;
    let adapter = match &args.adapter {
        Some(dir) => {
            let mut a = tunelab::lora::peft::load(dir, &model.llama)?;
            a.template = tunelab::lora::peft::training_template(dir);
            Some(a)
        }
        None => None,
    };
    let summary = tunelab::export::export(&model, adapter.as_ref(), &args.out, &job)?;
    ctx.output.line(&format!(
        "wrote {summary} ({:.1} s)",
        start.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}

fn run_tests(
    ctx: &HostContext,
    mut paths: Vec<PathBuf>,
    junit: Option<PathBuf>,
) -> Result<ExitCode, Error> {
    if paths.is_empty() {
        paths.push(PathBuf::from("tests/scripts"));
    }
    let files = test_runner::collect(&paths)?;
    let mut results = Vec::with_capacity(files.len());
    for file in &files {
        let result = test_runner::run_one(file, &ctx.cancel);
        ctx.output.line(&test_runner::report_line(&result));
        results.push(result);
        if ctx.cancel.is_cancelled() {
            ctx.output
                .line("cancelled (Ctrl-C): remaining scripts not run");
            break;
        }
    }
    ctx.output.line(&test_runner::summary_line(&results));
    if let Some(path) = junit {
        tunelab::fsutil::write_atomic(&path, test_runner::junit_xml(&results).as_bytes())?;
    }
    let all_passed = results.iter().all(|r| r.failure.is_none()) && !ctx.cancel.is_cancelled();
    Ok(if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
