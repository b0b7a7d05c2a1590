//! `tunelab quantize`: presets and rules as llama-quantize takes them, and
//! `--target-size`/`--target-bpw`, where auto_mix chooses every tensor's type to fit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tunelab::script::HostContext;
use tunelab::Error;

use super::progress_bar;

/// llama-quantize's options for choosing tensor types.
#[derive(clap::Args, Debug, Default)]
pub struct QuantizeFlags {
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

impl QuantizeFlags {
    /// The importance matrix `--imatrix` names, if any.
    fn importance(
        &self,
    ) -> Result<Option<std::sync::Arc<tunelab::quant::plan::Importance>>, Error> {
        self.imatrix
            .as_ref()
            .map(|file| {
                tunelab::quant::plan::Importance::load(file, "--imatrix").map(std::sync::Arc::new)
            })
            .transpose()
    }
}

/// `tunelab quantize`'s automatic mixed precision: a type per tensor chosen to fit a size.
#[derive(clap::Args, Debug, Default)]
pub struct AutoMixFlags {
    /// Choose each tensor's type so that the whole file fits this size (bytes, 105MB, 98MiB).
    #[arg(long, value_name = "SIZE", conflicts_with = "target_bpw")]
    target_size: Option<String>,
    /// Choose each tensor's type so that the file holds this many bits per weight.
    #[arg(long, value_name = "BITS")]
    target_bpw: Option<f64>,
    /// How to measure each tensor's damage: proxy (no forward pass; weighs errors by --imatrix),
    /// kld (one pass per tensor and type) or gradient (one backward pass); the last two need --text.
    #[arg(long, default_value = "proxy")]
    measure: String,
    /// Calibration text for kld and gradient (a plain text file, not the evaluation text).
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Tokens per window of --text.
    #[arg(long, value_name = "N", default_value_t = 512)]
    ctx: usize,
    /// At most this many windows of --text.
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// The types to choose from, comma-separated (default Q3_K,Q4_0,Q4_1,Q4_K,Q5_0,Q5_1,Q5_K,Q6_K,Q8_0,F16).
    #[arg(long, value_name = "TYPES", value_delimiter = ',')]
    candidates: Vec<String>,
    /// Also write the chosen types as a llama-quantize --tensor-type-file.
    #[arg(long, value_name = "FILE")]
    save_rules: Option<PathBuf>,
}

impl AutoMixFlags {
    /// The budget asked for, if any.
    pub fn budget(&self) -> Result<Option<tunelab::quant::auto_mix::Budget>, Error> {
        use tunelab::quant::auto_mix::Budget;
        match (&self.target_size, self.target_bpw) {
            (Some(size), _) => Budget::parse_size(size)
                .map(Some)
                .map_err(|e| Error::msg(format!("--target-size: {e}"))),
            (None, Some(bpw)) if bpw > 0.0 && bpw.is_finite() => {
                Ok(Some(Budget::BitsPerWeight(bpw)))
            }
            (None, Some(bpw)) => Err(Error::msg(format!(
                "--target-bpw {bpw}: give a positive number of bits per weight such as 4.8"
            ))),
            (None, None) => Ok(None),
        }
    }
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
    plan.importance = flags.importance()?;
    plan.check_needs_imatrix()?;
    Ok(plan)
}

/// `tunelab quantize IN OUT TYPE`: each tensor of IN quantized with the plan's type, as
/// llama-quantize does, with a progress bar on a terminal.
pub fn quantize(
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
    let bar = progress_bar("{bar:30.cyan/blue} {pos}/{len} tensors  {msg}  [{elapsed_precise}]");
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

/// `tunelab quantize IN OUT --target-size SIZE | --target-bpw BITS`: auto_mix chooses each
/// tensor's type so that the file fits, then the model is written with exactly those types.
pub fn quantize_to_budget(
    ctx: &HostContext,
    input: &Path,
    output: &Path,
    budget: tunelab::quant::auto_mix::Budget,
    flags: &QuantizeFlags,
    target: &AutoMixFlags,
) -> Result<ExitCode, Error> {
    use tunelab::quant::auto_mix::{auto_mix, AutoMixOptions};
    use tunelab::quant::measure::Measure;
    if flags.rules.is_some()
        || !flags.tensor_type.is_empty()
        || flags.output_tensor_type.is_some()
        || flags.token_embedding_type.is_some()
        || flags.pure
    {
        return Err(Error::msg(
            "quantize: with --target-size/--target-bpw every tensor's type is chosen; leave out --rules, --tensor-type, --output-tensor-type, --token-embedding-type and --pure (or limit the choice with --candidates)",
        ));
    }
    let measure =
        Measure::named(&target.measure).map_err(|e| Error::msg(format!("--measure: {e}")))?;
    let text = match &target.text {
        Some(file) => Some(std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?),
        None if measure != Measure::Proxy => {
            return Err(Error::msg(format!(
                "--measure {}: runs the model over calibration text; give it with --text FILE",
                measure.name()
            )))
        }
        None => None,
    };
    let candidates = target
        .candidates
        .iter()
        .map(|n| tunelab::quant::plan::writable_type(n.trim(), "--candidates"))
        .collect::<Result<Vec<_>, Error>>()?;
    let importance = flags.importance()?;
    let start = std::time::Instant::now();
    let model = tunelab::model::load(&input.to_string_lossy(), &Default::default())?;
    let opts = AutoMixOptions {
        budget,
        measure,
        candidates: (!candidates.is_empty()).then_some(candidates),
        importance,
        text,
        ctx: target.ctx.max(4),
        chunks: target.chunks,
    };
    let bar = progress_bar("{bar:30.cyan/blue} {pos}/{len} {msg}  [{elapsed_precise}, eta {eta}]");
    let mix = auto_mix(
        &model,
        &opts,
        &ctx.cancel,
        &mut |stage, done, total| match &bar {
            Some(bar) => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message(format!("tensors measured ({stage})"));
            }
            None if done == total => eprintln!(
                "auto_mix: {total} tensors measured ({stage}), {:.1} s",
                start.elapsed().as_secs_f64()
            ),
            None => {}
        },
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let mix = mix?;
    ctx.output.line(&mix.report());
    if let Some(file) = &target.save_rules {
        mix.plan.save(file)?;
        ctx.output.line(&format!(
            "wrote {} (llama-quantize --tensor-type-file)",
            file.display()
        ));
    }
    let plan = mix.plan.to_quant_plan();
    let report =
        tunelab::gguf::export::export_gguf_planned(&model, None, output, &plan, &mut |_| {})?;
    ctx.output.line(&format!(
        "wrote {}: {} tensors, {} bytes ({:.3} bits/weight), file type {}, {:.1} s",
        output.display(),
        report.tensors,
        std::fs::metadata(output).map_or(report.bytes, |m| m.len()),
        mix.plan.bits_per_weight,
        plan.target.name(),
        start.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}
