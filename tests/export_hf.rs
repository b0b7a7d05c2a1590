//! Exporting as LLaMA-Factory does: a LoRA adapter merged into its base and written as a
//! Hugging Face folder (shards + index, config, tokenizer, Modelfile) reloads with the logits of
//! base + adapter; a GGUF written as a folder, and a folder written as a GGUF, read back the same;
//! outputs are never written over unless asked, and a failed export leaves nothing behind; the
//! `tunelab export` command writes all four formats. (transformers and PEFT reading these folders
//! is checked by `tests/peers/export_check.sh`; see README.)

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use tunelab::export::{export, ExportFormat, ExportJob};
use tunelab::lora::{Adapter, LoraConfig};
use tunelab::model::{self, Logits, Model, Pass};

#[path = "support/smollm2.rs"]
mod support;
use support::smollm2;

fn logits(m: &Model, adapter: Option<&Adapter>) -> Vec<f32> {
    let ids = m
        .tokenizer
        .encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>")
        .unwrap();
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let pass = Pass {
        adapter,
        ..Default::default()
    };
    m.llama
        .forward_with(&ids, None, None, Logits::All, pass)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (d / n).sqrt()
}

/// The tiny preset and an adapter on every projection with random B (so it changes the logits).
fn tiny_and_adapter() -> (Model, Adapter) {
    let tiny = model::load("tiny", &Default::default()).unwrap();
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let adapter = Adapter::new(&tiny.llama, lora, 7, "tiny").unwrap();
    for (name, var) in adapter.named_vars() {
        if name.ends_with("lora_B.weight") {
            var.set(&var.as_tensor().rand_like(-0.5, 0.5).unwrap())
                .unwrap();
        }
    }
    (tiny, adapter)
}

fn load(path: &Path) -> Model {
    model::load(path.to_str().unwrap(), &Default::default()).unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_merged_model_saved_in_shards_reloads_with_the_adapters_logits() {
    let (tiny, adapter) = tiny_and_adapter();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let job = ExportJob {
        shard_size: 300_000,
        dtype: Some(DType::F32),
        ..Default::default()
    };
    export(&tiny, Some(&adapter), &out, &job).unwrap();

    let index = json(&out.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let mut shards: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    shards.sort();
    shards.dedup();
    assert!(shards.len() > 1, "{shards:?}");
    let mut total = 0u64;
    let mut names = 0;
    for (i, shard) in shards.iter().enumerate() {
        let n = shards.len();
        assert_eq!(*shard, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
        let tensors = candle_core::safetensors::load(out.join(shard), &Device::Cpu).unwrap();
        for (name, t) in &tensors {
            assert_eq!(map[name].as_str(), Some(*shard), "{name}");
            assert_eq!(t.dtype(), DType::F32);
            total += (t.elem_count() * 4) as u64;
        }
        names += tensors.len();
    }
    assert_eq!(names, map.len());
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    assert!(!out.join("model.safetensors").exists());

    let back = load(&out);
    let e = rel(&logits(&tiny, Some(&adapter)), &logits(&back, None));
    assert!(e < 1e-5, "reloaded merged model vs model + adapter: {e}");
    assert!(
        rel(&logits(&tiny, None), &logits(&back, None)) > 1e-3,
        "the adapter changed nothing"
    );
}

#[test]
fn the_folder_carries_bf16_weights_the_chat_template_and_an_ollama_modelfile() {
    let (tiny, adapter) = tiny_and_adapter();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    export(&tiny, Some(&adapter), &out, &ExportJob::default()).unwrap();

    let config = json(&out.join("config.json"));
    assert_eq!(config["torch_dtype"], "bfloat16");
    let tensors =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.values().all(|t| t.dtype() == DType::BF16));
    let back = load(&out);
    let e = rel(&logits(&tiny, Some(&adapter)), &logits(&back, None));
    assert!(e < 2e-2, "bf16 folder vs f32 model + adapter: {e}");

    // The tiny preset chats in ChatML: the Modelfile and the Jinja template say so.
    let modelfile = std::fs::read_to_string(out.join("Modelfile")).unwrap();
    assert!(modelfile
        .starts_with("# ollama modelfile auto-generated by tunelab\n\nFROM .\n\nTEMPLATE \"\"\""));
    assert!(modelfile.contains("{{ if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n"));
    assert!(
        modelfile.contains("PARAMETER stop \"<|im_end|>\"\n")
            && modelfile.ends_with("PARAMETER num_ctx 4096\n")
    );
    let tk = json(&out.join("tokenizer_config.json"));
    assert_eq!(tk["padding_side"], "left");
    let chat = tunelab::generate::chat::TemplateChoice::resolve("auto", &back).unwrap();
    let messages = [tunelab::data::Message::new(tunelab::data::Role::User, "Hi")];
    assert_eq!(
        chat.prompt("Be brief.", &messages, &back).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn exports_refuse_to_write_over_and_a_failure_leaves_nothing() {
    let (tiny, adapter) = tiny_and_adapter();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    export(&tiny, None, &out, &ExportJob::default()).unwrap();
    let e = export(&tiny, Some(&adapter), &out, &ExportJob::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("merged: the folder is not empty") && e.contains("overwrite"),
        "{e}"
    );
    let job = ExportJob {
        overwrite: true,
        dtype: Some(DType::F32),
        ..Default::default()
    };
    export(&tiny, Some(&adapter), &out, &job).unwrap();
    assert!(rel(&logits(&tiny, Some(&adapter)), &logits(&load(&out), None)) < 1e-5);

    for format in [ExportFormat::Gguf, ExportFormat::LoraGguf] {
        let file = dir.path().join("x.gguf");
        std::fs::write(&file, b"keep me").unwrap();
        let job = ExportJob {
            format,
            ..Default::default()
        };
        let e = export(&tiny, Some(&adapter), &file, &job)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.gguf: the file exists"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    // An export that fails half way (an unknown template is found after the weights are
    // written) leaves neither the folder nor a temporary one.
    let failed = dir.path().join("failed");
    let job = ExportJob {
        template: Some("no-such-template".into()),
        ..Default::default()
    };
    assert!(export(&tiny, None, &failed, &job).is_err());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.contains("failed")).count(),
        0,
        "{names:?}"
    );
}

/// Issue 8 item 4: a GGUF written as a Hugging Face folder, and that folder written back as a
/// GGUF, compute the same logits (f32 throughout, so exactly).
#[test]
fn smollm2_round_trips_gguf_to_folder_to_gguf() {
    let Some(path) = smollm2() else { return };
    let gguf = load(&path);
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("hf");
    let f32 = ExportJob {
        dtype: Some(DType::F32),
        gguf_type: "F32".into(),
        ..Default::default()
    };
    export(&gguf, None, &folder, &f32).unwrap();
    let from_folder = load(&folder);
    let want = logits(&gguf, None);
    assert_eq!(logits(&from_folder, None), want, "GGUF → folder");
    let back = dir.path().join("back.gguf");
    export(
        &from_folder,
        None,
        &back,
        &ExportJob {
            format: ExportFormat::Gguf,
            ..f32
        },
    )
    .unwrap();
    assert_eq!(logits(&load(&back), None), want, "folder → GGUF");
    // SmolLM2's own Jinja template goes into the Modelfile as ChatML with its default system.
    let modelfile = std::fs::read_to_string(folder.join("Modelfile")).unwrap();
    assert!(modelfile.contains("SYSTEM \"\"\"You are a helpful AI assistant named SmolLM, trained by Hugging Face\"\"\""), "{modelfile}");
}

#[test]
fn the_export_command_writes_every_format() {
    let (tiny, adapter) = tiny_and_adapter();
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = dir.path().join("adapter");
    tunelab::lora::peft::save(&adapter, &adapter_dir, false).unwrap();
    let want = logits(&tiny, Some(&adapter));
    let run = |format: &str, out: &str, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .args(["export", "--model", "tiny", "--adapter"])
            .arg(&adapter_dir)
            .args(["--format", format, "--out"])
            .arg(dir.path().join(out))
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text)
    };
    let (code, text) = run("hf", "hf", &["--dtype", "f32", "--shard-size", "300KB"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("wrote ") && text.contains("Hugging Face folder"),
        "{text}"
    );
    assert!(rel(&want, &logits(&load(&dir.path().join("hf")), None)) < 1e-5);

    let (code, text) = run("gguf", "m.gguf", &["--type", "F32"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(rel(&want, &logits(&load(&dir.path().join("m.gguf")), None)) < 1e-5);

    let (code, text) = run("peft", "peft", &[]);
    assert_eq!(code, Some(0), "{text}");
    let copy = tunelab::lora::peft::load(&dir.path().join("peft"), &tiny.llama).unwrap();
    assert!(rel(&want, &logits(&tiny, Some(&copy))) < 1e-6);

    let (code, text) = run("lora-gguf", "lora.gguf", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("LoRA adapter GGUF"), "{text}");

    // Again without --overwrite: refused with one line.
    let (code, text) = run("lora-gguf", "lora.gguf", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("the file exists"), "{text}");
    let (code, text) = run("zip", "z", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("hf, gguf, peft or lora-gguf"), "{text}");
}
