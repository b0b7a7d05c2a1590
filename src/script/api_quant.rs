//! Script API, area "quant": `gguf_info`, `export_gguf`. Thin bindings over [`crate::gguf`] (more of the
//! quantization area lands with issue 7).

use rhai::plugin::*;
use rhai::INT;

/// The area name `:help` groups these functions under.
pub const AREA: &str = "quant";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(quant_api)
}

/// A GGUF value as a script value (arrays of any depth become arrays).
fn to_dynamic(v: &crate::gguf::Value) -> Dynamic {
    use crate::gguf::Value as V;
    match v {
        V::U8(x) => Dynamic::from(*x as INT),
        V::I8(x) => Dynamic::from(*x as INT),
        V::U16(x) => Dynamic::from(*x as INT),
        V::I16(x) => Dynamic::from(*x as INT),
        V::U32(x) => Dynamic::from(*x as INT),
        V::I32(x) => Dynamic::from(*x as INT),
        V::U64(x) => Dynamic::from(*x as INT),
        V::I64(x) => Dynamic::from(*x),
        V::F32(x) => Dynamic::from(*x as f64),
        V::F64(x) => Dynamic::from(*x),
        V::Bool(x) => Dynamic::from(*x),
        V::String(s) => Dynamic::from(s.clone()),
        V::Array(_, items) => Dynamic::from(items.iter().map(to_dynamic).collect::<rhai::Array>()),
    }
}

#[export_module]
pub mod quant_api {
    use rhai::{Array, Map, INT};

    use crate::script::errors::{IntoScript, ScriptResult};

    /// What a GGUF file holds, read from its header only: `#{ version, alignment, file_size,
    /// metadata (every key, arrays in full), tensors: [#{ name, type, shape (ggml order, row
    /// length first), elements, bytes, offset }], types: #{ TYPE: count }, bits_per_weight }`.
    #[rhai_fn(return_raw)]
    pub fn gguf_info(path: &str) -> ScriptResult<Map> {
        let r = crate::gguf::GgufReader::open(path).script()?;
        let mut metadata = Map::new();
        for (k, v) in &r.metadata {
            metadata.insert(k.as_str().into(), super::to_dynamic(v));
        }
        let mut tensors = Array::new();
        let mut types = Map::new();
        let (mut weights, mut bytes) = (0u64, 0u64);
        for t in &r.tensors {
            let mut m = Map::new();
            m.insert("name".into(), t.name.clone().into());
            m.insert("type".into(), t.ggml_type.name.into());
            m.insert(
                "shape".into(),
                Dynamic::from(
                    t.ne.iter()
                        .map(|&n| Dynamic::from(n as INT))
                        .collect::<Array>(),
                ),
            );
            m.insert("elements".into(), Dynamic::from(t.elements() as INT));
            m.insert("bytes".into(), Dynamic::from(t.bytes() as INT));
            m.insert("offset".into(), Dynamic::from(t.offset as INT));
            tensors.push(m.into());
            let count = types
                .get(t.ggml_type.name)
                .and_then(|c| c.as_int().ok())
                .unwrap_or(0);
            types.insert(t.ggml_type.name.into(), Dynamic::from(count + 1));
            weights += t.elements();
            bytes += t.bytes();
        }
        let mut m = Map::new();
        m.insert("version".into(), Dynamic::from(r.version as INT));
        m.insert("alignment".into(), Dynamic::from(r.alignment as INT));
        m.insert("file_size".into(), Dynamic::from(r.file_len as INT));
        m.insert("metadata".into(), metadata.into());
        m.insert("tensors".into(), tensors.into());
        m.insert("types".into(), types.into());
        m.insert(
            "bits_per_weight".into(),
            Dynamic::from(bytes as f64 * 8.0 / weights.max(1) as f64),
        );
        Ok(m)
    }

    /// Write `model` as a llama GGUF that llama.cpp loads. Options: `type`: "F32", "F16"
    /// (default) or "BF16" for every 2-D weight, or a llama-quantize preset ("Q8_0", "Q4_0",
    /// "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q6_K") with its per-tensor types,
    /// `adapter` (a LoRA adapter or its folder, merged in first). Returns `#{ path, tensors,
    /// bytes, file_type }`. The model must have been loaded from a GGUF (its tokenizer is copied).
    #[rhai_fn(return_raw)]
    pub fn export_gguf(model: crate::model::Model, path: &str, opts: Map) -> ScriptResult<Map> {
        use crate::script::errors::runtime;
        let o = crate::script::options::Options::new(
            "export_gguf options",
            opts,
            &["type", "adapter"],
        )?;
        let type_name = o.string("type")?.unwrap_or_else(|| "F16".into());
        let target = crate::gguf::export::ExportType::named(&type_name)
            .map_err(|e| runtime(format!("export_gguf options: key \"type\": {e}")))?;
        let adapter = match o.value("adapter") {
            None => None,
            Some(v) if v.is_string() => Some(
                crate::lora::peft::read(std::path::Path::new(&v.to_string()), &model.llama.device)
                    .script()?,
            ),
            Some(v) => Some(v.try_cast::<crate::lora::Adapter>().ok_or_else(|| {
                runtime("export_gguf options: key \"adapter\": expected an adapter (run.adapter, load_adapter(dir)) or its folder")
            })?),
        };
        let r = crate::gguf::export::export_gguf(
            &model,
            adapter.as_ref(),
            std::path::Path::new(path),
            &crate::gguf::export::ExportOptions { target },
        )
        .script()?;
        let mut m = Map::new();
        m.insert("path".into(), path.into());
        m.insert("tensors".into(), Dynamic::from(r.tensors as INT));
        m.insert("bytes".into(), Dynamic::from(r.bytes as INT));
        m.insert("file_type".into(), Dynamic::from(r.file_type as INT));
        Ok(m)
    }

    /// [`export_gguf`] with the default options (F16).
    #[rhai_fn(name = "export_gguf", return_raw)]
    pub fn export_gguf_default(model: crate::model::Model, path: &str) -> ScriptResult<Map> {
        export_gguf(model, path, Map::new())
    }
}
