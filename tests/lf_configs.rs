//! LLaMA-Factory's own example configs run unchanged through `tunelab train | chat | export`, on
//! the tiny model and LLaMA-Factory's demo datasets, with overrides on the command line as
//! `llamafactory-cli` takes them; the printed script trains the same run; bad keys are one line.

#[path = "support/cli.rs"]
mod cli;

use std::path::{Path, PathBuf};

use cli::{refused, tunelab_in};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llamafactory")
        .join(name)
        .display()
        .to_string()
}

fn lf_data() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/llamafactory-data")
        .display()
        .to_string()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tunelab-lf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The example's overrides for a short run on the tiny model (whose tokenizer has ChatML's
/// tokens, not Llama 3's).
fn short_run(data: &str) -> Vec<String> {
    [
        "model_name_or_path=tiny",
        &format!("dataset_dir={data}"),
        "template=chatml",
        "max_samples=16",
        "--max_steps",
        "4",
        "--logging_steps=1",
        "gradient_accumulation_steps=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("trainer_log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect()
}

#[test]
fn the_llama3_example_trains_chats_and_exports_and_its_script_trains_the_same_run() {
    let data = lf_data();
    if !Path::new(&data).join("dataset_info.json").exists() {
        eprintln!("SKIP: LLaMA-Factory's demo data is not at {data}");
        return;
    }
    let dir = temp("journey");
    let mut args = vec!["train".to_string(), fixture("llama3_lora_sft.yaml")];
    args.extend(short_run(&data));
    args.push("output_dir=run".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = tunelab_in(&dir, &refs);
    assert_eq!(code, 0, "{out}\n{err}");
    for key in [
        "trust_remote_code",
        "overwrite_cache",
        "preprocessing_num_workers",
        "ddp_timeout",
    ] {
        assert!(
            err.contains(&format!("{key}: no effect in tunelab")),
            "{key}: {err}"
        );
    }
    // bf16: true is PyTorch's bf16 autocast on a CPU that has AVX512-BF16, f32 on one without.
    if tunelab::model::gemm_bf16::available() {
        assert!(
            out.contains("bf16: the base computes as PyTorch's bf16 autocast"),
            "{out}"
        );
    } else {
        assert!(out.contains("bf16: no effect on this CPU"), "{out}");
    }
    let run = dir.join("run");
    for file in [
        "trainer_log.jsonl",
        "training_args.json",
        "training_args.yaml",
        "training_loss.png",
        "adapter_config.json",
        "adapter_model.safetensors",
    ] {
        assert!(run.join(file).exists(), "{file} missing in the run folder");
    }
    let args_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("training_args.json")).unwrap())
            .unwrap();
    assert_eq!(args_json["learning_rate"], 1e-4);
    assert_eq!(args_json["lr_scheduler_type"], "cosine");
    assert_eq!(args_json["per_device_train_batch_size"], 1);
    assert_eq!(args_json["gradient_accumulation_steps"], 2);
    assert_eq!(args_json["max_samples"], serde_json::Value::Null);
    let yaml = std::fs::read_to_string(run.join("training_args.yaml")).unwrap();
    assert!(
        yaml.contains("max_steps: 4") && yaml.contains("template: \"chatml\""),
        "{yaml}"
    );
    let first = losses(&run);
    assert_eq!(first.len(), 4, "one loss per step");

    // overwrite_output_dir: true (as in the example) trains again from scratch, same numbers.
    let (code, _, err) = tunelab_in(&dir, &refs);
    assert_eq!(code, 0, "{err}");
    assert_eq!(losses(&run), first);

    // The printed script is the same run.
    let mut print = args.clone();
    print.push("--print-script".into());
    let refs: Vec<&str> = print.iter().map(String::as_str).collect();
    let (code, script, err) = tunelab_in(&dir, &refs);
    assert_eq!(code, 0, "{err}");
    let script = script.replace("out: \"run\"", "out: \"script_run\"");
    std::fs::write(dir.join("equivalent.rhai"), &script).unwrap();
    let (code, out, err) = tunelab_in(&dir, &["run", "equivalent.rhai"]);
    assert_eq!(code, 0, "{script}\n{out}\n{err}");
    assert_eq!(losses(&dir.join("script_run")), first, "{script}");

    // chat and export read the inference/merge example, pointed at this run.
    let infer = fixture("llama3_lora_sft_infer.yaml");
    let chat = std::process::Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args([
            "chat",
            &infer,
            "model_name_or_path=tiny",
            "adapter_name_or_path=run",
            "template=chatml",
            "do_sample=false",
            "max_new_tokens=4",
        ])
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    chat.stdin
        .as_ref()
        .unwrap()
        .write_all(b"Who are you?\nclear\nexit\n")
        .unwrap();
    let o = chat.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.starts_with("Welcome to the CLI application"), "{out}");
    assert!(
        out.contains("Assistant: ") && out.contains("History has been removed."),
        "{out}"
    );
    assert!(err.contains("infer_backend: no effect"), "{err}");
    assert!(
        err.contains("not used by `tunelab chat`: export_dir, export_size"),
        "{err}"
    );

    let (code, out, err) = tunelab_in(
        &dir,
        &[
            "export",
            &infer,
            "model_name_or_path=tiny",
            "adapter_name_or_path=run",
            "template=chatml",
            "export_dir=merged",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("Hugging Face folder"), "{out}");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(dir.join("merged").join(file).exists(), "{file}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configs_are_one_line_naming_file_line_and_key() {
    let dir = temp("errors");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap();
        name.to_string()
    };
    let f = write(
        "typo.yaml",
        "model_name_or_path: tiny\ndataset: identity\nlora_rnak: 8\n",
    );
    refused(
        tunelab_in(&dir, &["train", &f]),
        "typo.yaml: line 3: key \"lora_rnak\": not a LLaMA-Factory key tunelab knows; did you mean \"lora_rank\"?",
    );
    let f = write("ds.yaml", "model_name_or_path: tiny\ndataset: identity\ndeepspeed: examples/deepspeed/ds_z3_config.json\n");
    refused(
        tunelab_in(&dir, &["train", &f]),
        "ds.yaml: line 3: key \"deepspeed\"",
    );
    let f = write(
        "hub.yaml",
        "model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\ndataset: identity\n",
    );
    refused(tunelab_in(&dir, &["train", &f]), "download it first");
    let f = write("ok.yaml", "model_name_or_path: tiny\ndataset: identity\n");
    refused(
        tunelab_in(&dir, &["train", &f, "lora_rank=eight"]),
        "ok.yaml: override \"lora_rank\": expected a number, got \"eight\"",
    );
    refused(tunelab_in(&dir, &["train", "missing.yaml"]), "missing.yaml");
    let f = write(
        "broken.yaml",
        "model_name_or_path: tiny\ndataset: [identity\n",
    );
    refused(tunelab_in(&dir, &["train", &f]), "broken.yaml: line");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tutorial 09 (a commented config on `tiny` and the shipped data) trains, prints its script,
/// chats and exports as its comments say.
#[test]
fn tutorial_09_runs_as_it_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root
        .join("scripts/09_llamafactory.yaml")
        .display()
        .to_string();
    let dir = temp("tutorial");
    let data = format!("dataset_dir={}", root.join("data").display());
    let (code, out, err) = tunelab_in(&dir, &["train", &config, &data, "output_dir=run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("not used by `tunelab train`: temperature, top_p, max_new_tokens, export_dir, export_size"), "{err}");
    assert!(dir.join("run/checkpoint-8").exists() && dir.join("run/training_loss.png").exists());
    let (code, script, err) = tunelab_in(&dir, &["train", &config, &data, "--print-script"]);
    assert_eq!(code, 0, "{err}");
    assert!(script.contains("let run = sft(model, data, #{"), "{script}");
    let (code, out, err) = tunelab_in(
        &dir,
        &[
            "export",
            &config,
            "adapter_name_or_path=run",
            "export_dir=merged",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(dir.join("merged/model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_freeze_config_with_8bit_adamw_trains_the_weights_and_its_script_matches() {
    let data = lf_data();
    if !Path::new(&data).join("dataset_info.json").exists() {
        eprintln!("SKIP: LLaMA-Factory's demo data is not at {data}");
        return;
    }
    let dir = temp("freeze");
    let mut args = vec!["train".to_string(), fixture("llama3_lora_sft.yaml")];
    args.extend(short_run(&data));
    args.extend(
        [
            "finetuning_type=freeze",
            "freeze_trainable_layers=1",
            "freeze_trainable_modules=mlp",
            "optim=adamw_bnb_8bit",
            "output_dir=run",
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = tunelab_in(&dir, &refs);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("freeze: 3 weight tensors"), "{out}");
    assert!(out.contains("8-bit AdamW"), "{out}");
    // The trained model, not an adapter, is the run's result.
    let run = dir.join("run");
    assert!(run.join("config.json").is_file() && run.join("model.safetensors").is_file());
    assert!(!run.join("adapter_config.json").exists());
    let first = losses(&run);
    let mut print = args.clone();
    print.push("--print-script".into());
    let refs: Vec<&str> = print.iter().map(String::as_str).collect();
    let (code, script, err) = tunelab_in(&dir, &refs);
    assert_eq!(code, 0, "{err}");
    assert!(script.contains("finetuning_type: \"freeze\""), "{script}");
    let script = script.replace("out: \"run\"", "out: \"script_run\"");
    std::fs::write(dir.join("equivalent.rhai"), &script).unwrap();
    let (code, out, err) = tunelab_in(&dir, &["run", "equivalent.rhai"]);
    assert_eq!(code, 0, "{script}\n{out}\n{err}");
    assert_eq!(losses(&dir.join("script_run")), first, "{script}");
}
