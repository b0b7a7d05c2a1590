//! A LoRA adapter as llama.cpp's adapter GGUF, the file `convert_lora_to_gguf.py` writes and
//! `--lora` loads (specs/llamacpp.md §5): `general.type = "adapter"`, `adapter.type = "lora"`,
//! `adapter.lora.alpha`, no hyperparameters and no vocabulary, and per adapted weight two tensors
//! `<base name>.lora_a` (PEFT's A, r × in: ggml ne {in, r}) and `<base name>.lora_b` (B, out × r:
//! ne {r, out}), in F32. The q/k permutation llama.cpp's rotary layout needs applies to B's rows
//! only (A maps the input, which is not permuted).
//!
//! llama.cpp scales an adapter by alpha / r. For rsLoRA (alpha / √r) the file stores alpha·√r,
//! as the converter does, so the product is the same.

use std::path::Path;

use super::export::{permute_rows, ExportReport};
use super::types::{GgmlType, Value};
use super::GgufWriter;
use crate::error::{Error, Result};
use crate::lora::{Adapter, Target};
use crate::model::Model;

/// Write `adapter` (trained on `model`) to `path` as a llama.cpp LoRA GGUF.
pub fn export_lora_gguf(adapter: &Adapter, model: &Model, path: &Path) -> Result<ExportReport> {
    adapter.check_fits(&model.llama, Path::new(&model.source))?;
    let c = model.config();
    let cfg = &adapter.config;
    let alpha = if cfg.rslora {
        cfg.alpha * (cfg.rank as f64).sqrt()
    } else {
        cfg.alpha
    };
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("general.type", Value::String("adapter".into()));
    w.set(
        "general.name",
        Value::String(format!("LoRA r{} on {}", cfg.rank, adapter.base_model)),
    );
    w.set("adapter.type", Value::String("lora".into()));
    w.set("adapter.lora.alpha", Value::F32(alpha as f32));
    let f32_type = GgmlType::from_name("F32").expect("F32");
    let values = |t: &candle_core::Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(candle_core::DType::F32)?
            .to_device(&candle_core::Device::Cpu)?
            .flatten_all()?
            .to_vec1()?)
    };
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (mut tensors, mut total) = (0usize, 0u64);
    for layer in 0..c.num_hidden_layers {
        for t in Target::ALL {
            let Some(pair) = adapter.pair(layer, t) else {
                continue;
            };
            let base = format!("blk.{layer}.{}.weight", t.gguf_part());
            let (r, n_in) = pair.a.as_tensor().dims2()?;
            let (n_out, r_b) = pair.b.as_tensor().dims2()?;
            if r != r_b {
                return Err(Error::msg(format!(
                    "export_lora_gguf: {base}: A has rank {r} and B rank {r_b}"
                )));
            }
            let mut b = values(pair.b.as_tensor())?;
            let heads = match t {
                Target::Q => Some(c.num_attention_heads),
                Target::K => Some(c.num_key_value_heads),
                _ => None,
            };
            if let Some(n_head) = heads {
                b = permute_rows(&b, r, n_head);
            }
            let a = bytes(&values(pair.a.as_tensor())?);
            let b = bytes(&b);
            total += (a.len() + b.len()) as u64;
            w.add_tensor(
                format!("{base}.lora_a"),
                &[n_in as u64, r as u64],
                f32_type,
                a,
            )?;
            w.add_tensor(
                format!("{base}.lora_b"),
                &[r as u64, n_out as u64],
                f32_type,
                b,
            )?;
            tensors += 2;
        }
    }
    if tensors == 0 {
        return Err(Error::msg(
            "export_lora_gguf: the adapter adapts no layer; there is nothing to write",
        ));
    }
    w.write(path)?;
    Ok(ExportReport {
        tensors,
        bytes: total,
        file_type: 0,
    })
}
