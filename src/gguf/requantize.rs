//! Quantizing a GGUF file into another, as llama-quantize does: each tensor is read from the
//! input (mapped into memory; F32 data is quantized in place), turned into f32 (dequantized if it was quantized: llama-quantize's
//! `--allow-requantize`), quantized to the type the plan gives it, and written in the input's
//! order under the input's metadata (with `general.file_type` and
//! `general.quantization_version` updated). No model is built and no rows move: the file already
//! holds llama.cpp's q/k row order, and block quantization works row by row, so the bytes are
//! the ones an export of the loaded model writes — only without loading it. With an importance
//! matrix (`plan.importance`) each tensor is quantized with its weights and the file records the
//! `quantize.imatrix.*` keys, as `llama-quantize --imatrix` does.

use std::borrow::Cow;
use std::path::Path;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::Device;
use half::{bf16, f16};

use super::export::{encode_weighted, ExportProgress, ExportReport, ExportType};
use super::{GgufReader, GgufWriter, TensorInfo, Value};
use crate::error::{Error, Result};
use crate::quant::mixture::LlamaShape;
use crate::quant::plan::QuantPlan;

/// The f32 values of tensor `t` of `r`, whose file is mapped at `map`: F32 data is used where it
/// lies in the map (GGUF aligns tensor data to 32 bytes), other types are converted.
fn values<'a>(r: &GgufReader, map: &'a [u8], t: &TensorInfo) -> Result<Cow<'a, [f32]>> {
    let start = (r.data_offset + t.offset) as usize;
    let bytes = map.get(start..start + t.bytes() as usize).ok_or_else(|| {
        Error::data(
            &r.path,
            format!("tensor {}", t.name),
            "lies past the end of the file",
        )
    })?;
    Ok(match t.ggml_type.name {
        "F32" if cfg!(target_endian = "little") => match bytemuck::try_cast_slice(bytes) {
            Ok(v) => Cow::Borrowed(v),
            Err(_) => Cow::Owned(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
        },
        "F32" => Cow::Owned(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        "F16" => Cow::Owned(
            bytes
                .chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
        ),
        "BF16" => Cow::Owned(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
        ),
        name => {
            let dtype = t.ggml_type.to_candle().ok_or_else(|| {
                Error::data(
                    &r.path,
                    format!("tensor {}", t.name),
                    format!("tunelab cannot read {name} tensors"),
                )
            })?;
            let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)?;
            let dims: Vec<usize> = t.ne.iter().rev().map(|&n| n as usize).collect();
            Cow::Owned(
                QTensor::new(storage, dims)?
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1()?,
            )
        }
    })
}

/// The llama shape the mixture rules need, from the file's metadata.
fn shape(r: &GgufReader) -> Result<LlamaShape> {
    let arch = r.get("general.architecture").and_then(Value::as_str);
    if arch != Some("llama") {
        return Err(Error::data(
            &r.path,
            "general.architecture",
            format!(
                "{} is not a llama model; tunelab quantizes llama GGUF files",
                arch.unwrap_or("(missing)")
            ),
        ));
    }
    let uint = |key: &str| -> Result<usize> {
        let v = r
            .get(key)
            .ok_or_else(|| Error::data(&r.path, key, "missing; a llama GGUF has it".to_string()))?;
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| Error::data(&r.path, key, "not an integer".to_string()))
    };
    let n_head = uint("llama.attention.head_count")?;
    Ok(LlamaShape {
        n_layer: uint("llama.block_count")?,
        n_head,
        n_head_kv: uint("llama.attention.head_count_kv").unwrap_or(n_head),
        tied: r.tensor("output.weight").is_none(),
    })
}

/// `input` quantized as `plan` says into `output`, calling `progress` after each tensor.
pub fn requantize(
    input: &Path,
    output: &Path,
    plan: &QuantPlan,
    progress: &mut dyn FnMut(ExportProgress),
) -> Result<ExportReport> {
    let r = GgufReader::open(input)?;
    let shape = shape(&r)?;
    let file = std::fs::File::open(input).map_err(|e| Error::io(input, e))?;
    // SAFETY: the map is only read, and lives while `r`'s tensors are converted; like
    // llama-quantize, tunelab assumes the input is not truncated while it runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(input, e))?;
    let mut w = GgufWriter::new();
    for (k, v) in &r.metadata {
        if k != "general.alignment" {
            w.set(k.clone(), v.clone());
        }
    }
    let file_type = plan.target.file_type();
    w.set("general.file_type", Value::U32(file_type));
    if matches!(plan.target, ExportType::Preset(_)) {
        w.set("general.quantization_version", Value::U32(2));
    } else {
        w.remove("general.quantization_version");
    }
    // What llama-quantize records about an importance matrix (its key/value overrides, after
    // the keys above; a key the input already has keeps its place).
    for (k, v) in plan
        .importance
        .iter()
        .flat_map(|i| i.keys.iter())
        .flat_map(|k| k.metadata())
    {
        w.set(k, v);
    }
    let mut bytes = 0u64;
    for (i, t) in r.tensors.iter().enumerate() {
        let ty = plan.tensor_type(&t.name, &t.ne, &shape);
        let cols = t.ne[0] as usize;
        let at = |e: Error| Error::msg(format!("{}: tensor {}: {e}", input.display(), t.name));
        let importance = plan.importance_for(&t.name, cols, &ty).map_err(at)?;
        let data = encode_weighted(&values(&r, &map, t)?, cols, &ty, importance).map_err(at)?;
        bytes += data.len() as u64;
        progress(ExportProgress {
            done: i + 1,
            total: r.tensors.len(),
            name: &t.name,
            ggml_type: ty.name,
        });
        w.add_tensor(t.name.clone(), &t.ne, ty, data)?;
    }
    w.write(output)?;
    Ok(ExportReport {
        tensors: r.tensors.len(),
        bytes,
        file_type,
    })
}
