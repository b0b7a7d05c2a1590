//! Script API, area "export": `save_hf`, `export_lora_gguf`, and `adapter.save`. Thin bindings
//! over [`crate::model::save`], [`crate::gguf::lora_export`] and [`crate::lora::peft`].

use rhai::plugin::*;
use rhai::{Map, INT};

use crate::lora::Adapter;
use crate::model::Model;
use crate::script::errors::{runtime, IntoScript, ScriptResult};
use crate::script::options::Options;

/// The area name `:help` groups these functions under.
pub const AREA: &str = "export";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(export_api)
}

/// An `adapter` option: an adapter value (`run.adapter`, `load_adapter(dir)`) or its folder.
pub fn adapter_option(value: Dynamic, model: &Model, what: &str) -> ScriptResult<Adapter> {
    if value.is_string() {
        let dir = value.to_string();
        return crate::lora::peft::read_trained(std::path::Path::new(&dir), &model.llama.device)
            .script();
    }
    value.try_cast::<Adapter>().ok_or_else(|| {
        runtime(format!(
            "{what}: key \"adapter\": expected an adapter (run.adapter, load_adapter(dir)) or its folder"
        ))
    })
}

/// A weight dtype option: "f32", "bf16" or "f16".
fn dtype_option(name: &str, what: &str) -> ScriptResult<candle_core::DType> {
    Ok(match name {
        "f32" => candle_core::DType::F32,
        "bf16" => candle_core::DType::BF16,
        "f16" => candle_core::DType::F16,
        other => {
            return Err(runtime(format!(
                "{what}: key \"dtype\": expected \"f32\", \"bf16\" or \"f16\", got \"{other}\""
            )))
        }
    })
}

#[export_module]
pub mod export_api {
    use super::*;

    /// Write `model` as a Hugging Face folder, as LLaMA-Factory's export does: `config.json`,
    /// `generation_config.json`, `model.safetensors` (or shards and
    /// `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json` with the chat
    /// template, and an Ollama `Modelfile`. Options: `adapter` (merged in first), `shard_size`
    /// ("5GB" default, "500MB", or bytes), `dtype` ("bf16" default, "f16" kept, "f32"),
    /// `template` (a built-in name for the Modelfile and Jinja template; default the adapter's
    /// training template, else the model's own), `overwrite` (replace a non-empty folder).
    /// Returns `#{ dir, files, shards, weight_bytes, dtype }`.
    #[rhai_fn(name = "save_hf", return_raw)]
    pub fn save_hf_with(model: Model, dir: &str, opts: Map) -> ScriptResult<Map> {
        let what = "save_hf options";
        let o = Options::new(
            what,
            opts,
            &["adapter", "shard_size", "dtype", "template", "overwrite"],
        )?;
        let mut save = crate::model::save::SaveHfOptions {
            overwrite: o.bool("overwrite")?.unwrap_or(false),
            template: o.string("template")?,
            ..Default::default()
        };
        if let Some(d) = o.string("dtype")? {
            save.dtype = Some(dtype_option(&d, what)?);
        }
        match o.value("shard_size") {
            None => {}
            Some(v) if v.is_int() => save.shard_size = v.as_int().unwrap_or(1).max(1) as u64,
            Some(v) => {
                save.shard_size = crate::model::shards::parse_size(&v.to_string())
                    .map_err(|e| runtime(format!("{what}: key \"shard_size\": {e}")))?
            }
        }
        let adapter = match o.value("adapter") {
            Some(v) => Some(adapter_option(v, &model, what)?),
            None => None,
        };
        if save.template.is_none() {
            save.template = adapter.as_ref().and_then(|a| a.template.clone());
        }
        let model = crate::lora::merge::merged_or_base(&model, adapter.as_ref()).script()?;
        let saved =
            crate::model::save::save_hf(&model, std::path::Path::new(dir), &save).script()?;
        let mut m = Map::new();
        m.insert("dir".into(), dir.into());
        let files: rhai::Array = saved
            .files
            .iter()
            .map(|f| Dynamic::from(f.clone()))
            .collect();
        m.insert("files".into(), files.into());
        m.insert("shards".into(), Dynamic::from(saved.shards as INT));
        m.insert(
            "weight_bytes".into(),
            Dynamic::from(saved.weight_bytes as INT),
        );
        m.insert(
            "dtype".into(),
            crate::model::parity::dtype_name(saved.dtype).into(),
        );
        Ok(m)
    }

    /// [`save_hf`] with the default options.
    #[rhai_fn(name = "save_hf", return_raw)]
    pub fn save_hf(model: Model, dir: &str) -> ScriptResult<Map> {
        save_hf_with(model, dir, Map::new())
    }

    /// Write `adapter` (trained on `model`) as llama.cpp's LoRA adapter GGUF, which `--lora`
    /// applies to the base model's GGUF. Options: `overwrite` (replace an existing file).
    /// Returns `#{ path, tensors, bytes }`.
    #[rhai_fn(name = "export_lora_gguf", return_raw)]
    pub fn export_lora_gguf_with(
        adapter: Adapter,
        model: Model,
        path: &str,
        opts: Map,
    ) -> ScriptResult<Map> {
        let o = Options::new("export_lora_gguf options", opts, &["overwrite"])?;
        let path = std::path::Path::new(path);
        crate::fsutil::refuse_existing_file(path, o.bool("overwrite")?.unwrap_or(false))
            .script()?;
        let r = crate::gguf::lora_export::export_lora_gguf(&adapter, &model, path).script()?;
        let mut m = Map::new();
        m.insert("path".into(), path.display().to_string().into());
        m.insert("tensors".into(), Dynamic::from(r.tensors as INT));
        m.insert("bytes".into(), Dynamic::from(r.bytes as INT));
        Ok(m)
    }

    /// [`export_lora_gguf`] with the default options.
    #[rhai_fn(name = "export_lora_gguf", return_raw)]
    pub fn export_lora_gguf(adapter: Adapter, model: Model, path: &str) -> ScriptResult<Map> {
        export_lora_gguf_with(adapter, model, path, Map::new())
    }

    /// Save the adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors);
    /// the folder must be absent or empty.
    #[rhai_fn(global, name = "save", return_raw, pure)]
    pub fn save_adapter(adapter: &mut Adapter, dir: &str) -> ScriptResult<()> {
        crate::lora::peft::save(adapter, std::path::Path::new(dir), false).script()
    }

    /// `adapter.save(dir, #{ overwrite: true })` replaces a non-empty folder.
    #[rhai_fn(global, name = "save", return_raw, pure)]
    pub fn save_adapter_with(adapter: &mut Adapter, dir: &str, opts: Map) -> ScriptResult<()> {
        let o = Options::new("adapter save options", opts, &["overwrite"])?;
        let overwrite = o.bool("overwrite")?.unwrap_or(false);
        crate::lora::peft::save(adapter, std::path::Path::new(dir), overwrite).script()
    }
}
