//! `tunelab export`: a model, with its LoRA adapter merged in, or the adapter alone, in the
//! format asked for (the counterpart of `llamafactory-cli export`).

use std::path::PathBuf;
use std::process::ExitCode;

use tunelab::script::HostContext;
use tunelab::Error;

/// `tunelab export`'s options.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A LLaMA-Factory export config (.yaml: model_name_or_path, adapter_name_or_path,
    /// export_dir, export_size), instead of the flags below; key=value overrides may follow.
    #[arg(value_name = "CONFIG", conflicts_with_all = ["model", "out"])]
    pub config: Option<PathBuf>,
    /// Overrides of the config's keys: key=value.
    #[arg(value_name = "KEY=VALUE", requires = "config")]
    pub overrides: Vec<String>,
    /// The base model: a Hugging Face folder, a .gguf file, or `tiny`.
    #[arg(long, value_name = "MODEL", required_unless_present = "config")]
    model: Option<String>,
    /// A LoRA adapter folder (PEFT format: a run's output or a checkpoint).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Where to write: a folder for hf and peft, a file for gguf and lora-gguf.
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    out: Option<PathBuf>,
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
    /// gguf: quantize with this importance matrix (`tunelab imatrix`'s or llama-imatrix's .gguf,
    /// or a legacy .dat), as llama-quantize --imatrix does.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Replace an existing output.
    #[arg(long)]
    overwrite: bool,
}

/// `tunelab export --model M [--adapter A] --out PATH [--format F] ...`.
pub fn export(ctx: &HostContext, args: &ExportArgs) -> Result<ExitCode, Error> {
    use tunelab::export::{ExportFormat, ExportJob};
    if let Some(config) = &args.config {
        return super::lf::export(ctx, config, &args.overrides);
    }
    let (Some(model), Some(out)) = (&args.model, &args.out) else {
        return Err(Error::Usage(
            "export: give --model and --out, or a LLaMA-Factory config".into(),
        ));
    };
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
        imatrix: args.imatrix.clone(),
        overwrite: args.overwrite,
    };
    if format.adapter_only() && args.adapter.is_none() {
        return Err(Error::msg(format!(
            "--format {}: writes the adapter, so give one with --adapter DIR",
            args.format
        )));
    }
    let start = std::time::Instant::now();
    let model = tunelab::model::load(model, &Default::default())?;
    let adapter = match &args.adapter {
        Some(dir) => Some(tunelab::lora::peft::load_trained(dir, &model.llama)?),
        None => None,
    };
    let summary = tunelab::export::export(&model, adapter.as_ref(), out, &job)?;
    ctx.output.line(&format!(
        "wrote {summary} ({:.1} s)",
        start.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}
