//! The `tunelab` command line: a thin shell over the library.
//!
//! `tunelab` (REPL, or a script from stdin when stdin is not a terminal), `tunelab run FILE
//! [-- key=value ...]`, `tunelab test [DIR | FILE ...] [--junit PATH]`, `tunelab quantize IN OUT
//! TYPE [--rules FILE] [--tensor-type PATTERN=TYPE]... [--output-tensor-type T]
//! [--token-embedding-type T] [--pure] [--imatrix FILE]`, `tunelab quantize IN OUT
//! --target-size SIZE | --target-bpw BITS [--imatrix FILE] [--measure M] [--text FILE]`, `tunelab export --model M
//! [--adapter A] --out PATH [--format hf|gguf|peft|lora-gguf] [--type T] [--shard-size S]`, `tunelab imatrix -m MODEL -f TEXT
//! -o FILE [--ctx N] [--chunks N] [--process-output]`, `tunelab serve MODEL [--lora NAME=PATH]...
//! [--port N] [--api-key KEY] [--parallel N] ...`, `tunelab train | chat | export CONFIG.yaml
//! [key=value ...]` (LLaMA-Factory configs; `train --print-script`), `tunelab launch
//! --nproc-per-node N -- COMMAND...` (data-parallel ranks), `tunelab --version`.
//! Exit codes: 0 ok, 1 script error or failed test, 2 usage or I/O error, 130 cancelled by Ctrl-C.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use tunelab::cancel::CancelToken;
use tunelab::script::runner::{self, ScriptFailure};
use tunelab::script::{build_engine, test_runner, EngineOptions, HostContext};
use tunelab::{repl, Error};

mod cli;
use cli::export::ExportArgs;
use cli::imatrix::ImatrixArgs;
use cli::lf::{ChatArgs, TrainArgs};
use cli::quantize::{AutoMixFlags, QuantizeFlags};
use cli::serve::ServeArgs;

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
        /// The preset or float type (leave it out with --target-size or --target-bpw).
        #[arg(value_name = "TYPE")]
        ty: Option<String>,
        #[command(flatten)]
        plan: QuantizeFlags,
        #[command(flatten)]
        target: AutoMixFlags,
    },
    /// Fine-tune as a LLaMA-Factory config says (`llamafactory-cli train CONFIG.yaml`); key=value
    /// overrides may follow the file.
    Train(TrainArgs),
    /// Chat with the model a LLaMA-Factory config names (`llamafactory-cli chat CONFIG.yaml`).
    Chat(ChatArgs),
    /// Export a model, with its LoRA adapter merged in, or the adapter alone (the counterpart of
    /// `llamafactory-cli export`).
    Export(ExportArgs),
    /// Collect an importance matrix as llama-imatrix does, for quantizing with --imatrix.
    Imatrix(ImatrixArgs),
    /// Serve a model and its LoRA adapters over an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Start N data-parallel ranks of a tunelab command on this machine, as torchrun does
    /// (`tunelab launch --nproc-per-node 2 -- run script.rhai`); CPU ranks run under mpirun.
    Launch {
        /// Ranks to start on this machine.
        #[arg(long = "nproc-per-node", alias = "nproc_per_node", value_name = "N")]
        nproc_per_node: usize,
        /// Machines in the job (several: start it with mpirun --hostfile or srun instead).
        #[arg(long, default_value_t = 1)]
        nnodes: usize,
        /// This machine's place among them.
        #[arg(long = "node-rank", alias = "node_rank", default_value_t = 0)]
        node_rank: usize,
        /// Where rank 0 runs (passed on as MASTER_ADDR).
        #[arg(
            long = "master-addr",
            alias = "master_addr",
            default_value = "127.0.0.1"
        )]
        master_addr: String,
        /// Rank 0's port (passed on as MASTER_PORT).
        #[arg(long = "master-port", alias = "master_port", default_value_t = 29500)]
        master_port: u16,
        /// The tunelab command every rank runs, after `--` (e.g. `run script.rhai`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run regression scripts (default tests/scripts/); exits 1 if any fails.
    Test {
        /// Folders (searched recursively) or script files.
        paths: Vec<PathBuf>,
        /// Also write a JUnit XML report here.
        #[arg(long, value_name = "PATH")]
        junit: Option<PathBuf>,
    },
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
    cli::allocator::configure();
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
    // A rank of a data-parallel job joins it before anything starts a thread pool (the launcher
    // itself is no rank).
    let joined = match &cli.command {
        Some(Command::Launch { .. }) => Ok(tunelab::dist::Session::default()),
        _ => tunelab::dist::init(),
    };
    let session = match joined {
        Ok(session) => session,
        Err(e) => {
            eprintln!("tunelab: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let (rank, _) = tunelab::collective::rank_and_world();
    let mut ctx = HostContext::stdout();
    if rank != 0 {
        // Rank 0 prints for the job; the others report only their errors.
        ctx.output = tunelab::output::Output::discard();
    }
    if matches!(cli.command, Some(Command::Launch { .. })) {
        tunelab::dist::launch::install_ctrl_c(&ctx.cancel);
    } else {
        install_ctrl_c(&ctx.cancel);
    }
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
            target,
        }) => match (ty, target.budget()) {
            (_, Err(e)) => Err(e),
            (None, Ok(Some(budget))) => cli::quantize::quantize_to_budget(&ctx, &input, &output, budget, &plan, &target),
            (Some(ty), Ok(None)) => cli::quantize::quantize(&ctx, &input, &output, &ty, &plan),
            (Some(ty), Ok(Some(_))) => Err(Error::msg(format!(
                "quantize: give TYPE ({ty}) or --target-size/--target-bpw, not both: with a target each tensor's type is chosen"
            ))),
            (None, Ok(None)) => Err(Error::msg(
                "quantize: give TYPE (a preset such as Q4_K_M) or a target: --target-size SIZE or --target-bpw BITS",
            )),
        },
        Some(Command::Train(args)) => cli::lf::train(&ctx, &args),
        Some(Command::Chat(args)) => cli::lf::chat(&ctx, &args),
        Some(Command::Export(args)) => cli::export::export(&ctx, &args),
        Some(Command::Imatrix(args)) => cli::imatrix::imatrix(&ctx, &args),
        Some(Command::Serve(args)) => cli::serve::serve(&ctx, &args),
        Some(Command::Launch {
            nproc_per_node,
            nnodes,
            node_rank,
            master_addr,
            master_port,
            command,
        }) => {
            let options = tunelab::dist::launch::LaunchOptions {
                nproc_per_node,
                nnodes,
                node_rank,
                master_addr,
                master_port,
            };
            tunelab::dist::launch::launch(&options, &command, &ctx.cancel)
                .map(|code| ExitCode::from(code.clamp(0, 255) as u8))
        }
    };
    let code = result.unwrap_or_else(|e| {
        eprintln!("{}tunelab: {e}", rank_prefix(rank));
        end_failed_rank(e.exit_code());
        ExitCode::from(e.exit_code())
    });
    drop(session);
    code
}

/// A rank of several that failed leaves at once, without shutting the engine down (which would
/// wait for the others): its launcher then ends the job instead of the others waiting for it.
fn end_failed_rank(code: u8) {
    if tunelab::collective::rank_and_world().1 > 1 {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        unsafe { libc::_exit(code.into()) };
    }
}

/// `[rank r] ` before a message of a rank other than 0 (whose messages need no name).
fn rank_prefix(rank: usize) -> String {
    if rank == 0 {
        String::new()
    } else {
        format!("[rank {rank}] ")
    }
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
    eprint!(
        "{}{}",
        rank_prefix(tunelab::collective::rank_and_world().0),
        failure.rendered
    );
    let code = if failure.diagnostic.cancelled {
        EXIT_CANCELLED
    } else {
        1
    };
    end_failed_rank(code);
    ExitCode::from(code)
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
