//! Carrying out a config's plan: load what it names, then train, chat or export.

use std::io::BufRead;

use super::file::ConfigFile;
use super::plan::{ChatPlan, ExportPlan, ModelSpec, TrainPlan};
use crate::cancel::CancelToken;
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::generate::chat::{ChatSession, TemplateChoice};
use crate::lora::Adapter;
use crate::model::{self, Model};
use crate::output::Output;
use crate::train::{checkpoint, Hooks, Run};

/// The base model with every adapter but the last merged in, and the last adapter (None when
/// there is none). `merge_all` merges the last one too (training a new adapter on top).
/// `bf16` asks for bf16 compute (on a CPU, PyTorch's bf16 autocast where it is fast).
fn load_model(spec: &ModelSpec, merge_all: bool, bf16: bool) -> Result<(Model, Option<Adapter>)> {
    let opts = model::LoadOptions {
        device: "auto".into(),
        dtype: bf16.then_some(candle_core::DType::BF16),
        ..Default::default()
    };
    let mut model = model::load(&spec.path, &opts)?;
    let mut last = None;
    for (i, dir) in spec.adapters.iter().enumerate() {
        let adapter = crate::lora::peft::load_trained(dir, &model.llama)?;
        if merge_all || i + 1 < spec.adapters.len() {
            model = crate::lora::merge::merge(&model, &adapter)?;
        } else {
            last = Some(adapter);
        }
    }
    Ok((model, last))
}

/// The datasets named, each cut to `max_samples`, concatenated in order.
fn load_datasets(
    names: &[String],
    plan: &TrainPlan,
    cancel: &CancelToken,
) -> Result<Option<Dataset>> {
    let opts = data::LoadOptions {
        dir: plan.dataset_dir.clone(),
        max_samples: plan.max_samples,
        seed: plan.sft.seed,
        ..Default::default()
    };
    let mut all: Option<Dataset> = None;
    for name in names {
        let d = data::load(name, &opts, cancel)?;
        all = Some(match all {
            Some(a) => a.concat(&d),
            None => d,
        });
    }
    Ok(all)
}

/// LLaMA-Factory's handling of an existing output_dir: with `overwrite_output_dir` the old log
/// and checkpoints go; without it a folder with checkpoints is resumed, and one with a finished
/// run is an error.
fn prepare_output_dir(plan: &mut TrainPlan, output: &Output) -> Result<()> {
    let out = plan.sft.out.clone().expect("plans always set output_dir");
    let has_run = out.join("trainer_log.jsonl").exists();
    let latest = checkpoint::latest(&out);
    if plan.overwrite_output_dir && !plan.sft.resume {
        if has_run || latest.is_some() {
            output.line(&format!(
                "overwrite_output_dir: removing the previous run's log and checkpoints in {}",
                out.display()
            ));
        }
        // Rank 0 clears; the others must not delete what it writes next.
        if crate::collective::is_main() {
            checkpoint::remove_run(&out)?;
        }
    } else if !plan.sft.resume {
        if let Some((_, dir)) = latest {
            output.line(&format!("Resuming training from {}.", dir.display()));
            plan.sft.resume = true;
        } else if has_run {
            return Err(Error::config(
                "output_dir",
                format!(
                    "{} already holds a finished run; set overwrite_output_dir: true or choose another output_dir",
                    out.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The config's keys as YAML lines, for `training_args.yaml` in the run folder.
fn args_yaml(file: &ConfigFile) -> String {
    let mut text = String::new();
    for e in &file.entries {
        text.push_str(&format!("{}: {}\n", e.key, e.value));
    }
    text
}

/// `tunelab train CONFIG`: load, train, and keep the effective config as `training_args.yaml`.
pub fn train(
    mut plan: TrainPlan,
    file: &ConfigFile,
    output: &Output,
    cancel: &CancelToken,
) -> Result<Run> {
    let (model, _) = load_model(&plan.model, true, plan.bf16)?;
    if model.llama.device.is_cpu() {
        match TrainPlan::half_precision(file) {
            Some("bf16") if model.llama.weights_dtype() == candle_core::DType::BF16 => output.line(
                "bf16: the base computes as PyTorch's bf16 autocast on this CPU (AVX512-BF16); LoRA weights and optimizer stay f32",
            ),
            Some(half) => output.line(&format!(
                "{half}: no effect on this CPU, where tunelab trains in f32 (bf16 needs LoRA and AVX512-BF16; on a GPU the base runs in bf16)"
            )),
            None => {}
        }
    }
    let train = load_datasets(&plan.datasets, &plan, cancel)?.expect("plans name a dataset");
    plan.sft.eval_dataset = load_datasets(&plan.eval_datasets, &plan, cancel)?;
    // Every rank reads the folder here; rank 0 changes it only after all have (sft's agreement
    // comes first), so the ranks decide alike whether to resume.
    prepare_output_dir(&mut plan, output)?;
    let out = plan.sft.out.clone().expect("plans always set output_dir");
    let main = crate::collective::is_main();
    let args_path = out.join("training_args.yaml");
    if main {
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        crate::fsutil::write_atomic(&args_path, args_yaml(file).as_bytes())?;
    }
    let hooks = Hooks {
        on_log: None,
        cancel,
        output,
        progress_bar: true,
        collective: crate::collective::current(),
    };
    let run = crate::train::sft(&model, &train, &plan.sft, hooks);
    if main && run.is_err() && !out.join("trainer_log.jsonl").exists() {
        // Refused before training began: leave the folder as it was.
        let _ = std::fs::remove_file(&args_path);
    }
    run
}

/// `tunelab chat CONFIG`: LLaMA-Factory's command-line chat, reading lines from `input`:
/// `clear` forgets the history, `exit` (or the end of input) quits.
pub fn chat(
    plan: ChatPlan,
    input: &mut dyn BufRead,
    output: &Output,
    cancel: &CancelToken,
) -> Result<()> {
    let (model, adapter) = load_model(&plan.model, false, false)?;
    let name = plan
        .model
        .template
        .clone()
        .or_else(|| adapter.as_ref().and_then(|a| a.template.clone()))
        .unwrap_or_else(|| "auto".into());
    let template = TemplateChoice::resolve(&name, &model)?;
    let mut options = plan.generate.clone();
    options.adapter = adapter;
    let mut session = ChatSession::new(model, template, plan.system.clone(), options);
    output.line("Welcome to the CLI application, use `clear` to remove the history, use `exit` to exit the application.");
    loop {
        output.write("\nUser: ");
        let mut line = String::new();
        if input
            .read_line(&mut line)
            .map_err(|e| Error::io("stdin", e))?
            == 0
        {
            output.line("");
            return Ok(());
        }
        match line.trim() {
            "exit" => return Ok(()),
            "clear" => {
                session.reset();
                output.line("History has been removed.");
            }
            "" => {}
            text => {
                output.write("Assistant: ");
                session.ask(text, cancel, &mut |t| output.write(t))?;
                output.line("");
            }
        }
    }
}

/// `tunelab export CONFIG`: the model with its adapters merged, as a Hugging Face folder.
pub fn export(plan: ExportPlan) -> Result<String> {
    let (model, adapter) = load_model(&plan.model, false, false)?;
    crate::export::export(&model, adapter.as_ref(), &plan.out, &plan.job)
}
