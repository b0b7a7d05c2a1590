//! Script API, area "quant" (importance matrices): `imatrix`, `load_imatrix` and the Imatrix
//! methods `save`, `stats`, `importance`. Thin bindings over [`crate::quant::imatrix`],
//! [`crate::quant::imatrix_stats`] and [`crate::gguf::imatrix_file`].

use rhai::plugin::*;

use crate::gguf::imatrix_file::ImatrixData;
use crate::script::handle::Handle;

/// The area name `:help` groups these functions under (with the rest of quantization).
pub const AREA: &str = "quant";

/// The compiled module of this area.
pub fn module() -> rhai::Module {
    exported_module!(imatrix_api)
}

/// One row of `stats()` as a script map.
fn stats_map(s: &crate::quant::imatrix_stats::TensorStats) -> rhai::Map {
    let mut m = rhai::Map::new();
    m.insert("tensor".into(), s.tensor.clone().into());
    m.insert(
        "layer".into(),
        s.layer
            .map_or(Dynamic::UNIT, |l| Dynamic::from(l as rhai::INT)),
    );
    m.insert("name".into(), s.short_name.clone().into());
    for (k, v) in [
        ("energy", s.energy),
        ("min", s.min),
        ("max", s.max),
        ("mean", s.mean),
        ("std", s.std),
        ("active", s.active),
        ("entropy", s.entropy),
        ("entropy_norm", s.entropy_norm),
        ("zd", s.zd),
        ("cossim", s.cossim),
        ("max_share", s.max_share),
    ] {
        m.insert(k.into(), Dynamic::from(v as f64));
    }
    m.insert("elements".into(), Dynamic::from(s.elements as rhai::INT));
    m
}

/// The calibration text and the name llama-imatrix would record for it: a file's text (named by
/// its path), a string, or a dataset's examples rendered with `template`.
pub(crate) fn text_from(
    text: Dynamic,
    model: &crate::model::Model,
    template: &str,
) -> crate::script::errors::ScriptResult<(String, Option<String>)> {
    use crate::script::errors::{runtime, IntoScript};
    if text.is_string() {
        let s = text.to_string();
        if std::path::Path::new(&s).is_file() {
            let read = std::fs::read_to_string(&s)
                .map_err(|e| crate::Error::io(&s, e))
                .script()?;
            return Ok((read, Some(s)));
        }
        return Ok((s, None));
    }
    match text.try_cast::<crate::data::Dataset>() {
        Some(ds) => Ok((
            crate::quant::imatrix::calibration_text(model, &ds, template).script()?,
            Some(ds.name().to_string()),
        )),
        None => Err(runtime(
            "imatrix: the text is a string, the path of a text file, or a Dataset",
        )),
    }
}

#[export_module]
pub mod imatrix_api {
    use rhai::{Array, Dynamic, Map, NativeCallContext, INT};

    use crate::quant::imatrix::{collect_imatrix, ImatrixOptions};
    use crate::script::engine::host;
    use crate::script::errors::{IntoScript, ScriptResult};
    use crate::script::options::Options;

    /// An importance matrix (per weight matrix, the mean squared input of every column):
    /// `save(path)`, `stats()`, `importance(tensor)`.
    pub type Imatrix = super::Handle<super::ImatrixData>;

    /// The importance matrix of `model` over `text`, collected as llama-imatrix does: `text` is
    /// a string, the path of a text file, or a Dataset (each example rendered with `template`).
    /// Options: `ctx` (tokens per chunk, 512), `chunks` (at most this many; default all),
    /// `process_output` (also an untied `output.weight`, false), `template` (datasets only:
    /// a built-in name or "auto", the model's own).
    #[rhai_fn(return_raw)]
    pub fn imatrix(
        ctx: NativeCallContext,
        model: crate::model::Model,
        text: Dynamic,
        opts: Map,
    ) -> ScriptResult<Imatrix> {
        let o = Options::new(
            "imatrix options",
            opts,
            &["ctx", "chunks", "process_output", "template"],
        )?;
        let template = o.string("template")?.unwrap_or_else(|| "auto".into());
        let (text, name) = super::text_from(text, &model, &template)?;
        let io = ImatrixOptions {
            ctx: o.int("ctx")?.unwrap_or(512).max(0) as usize,
            chunks: o.int("chunks")?.map(|c| c.max(1) as usize),
            process_output: o.bool("process_output")?.unwrap_or(false),
        };
        let mut data =
            collect_imatrix(&model, &text, &io, &host(&ctx).cancel, &mut |_, _| {}).script()?;
        data.datasets.extend(name);
        Ok(super::Handle::new(data))
    }

    /// [`imatrix`] with the default options.
    #[rhai_fn(name = "imatrix", return_raw)]
    pub fn imatrix_default(
        ctx: NativeCallContext,
        model: crate::model::Model,
        text: Dynamic,
    ) -> ScriptResult<Imatrix> {
        imatrix(ctx, model, text, Map::new())
    }

    /// Read an importance matrix: llama-imatrix's GGUF or its legacy `.dat`.
    #[rhai_fn(return_raw)]
    pub fn load_imatrix(path: &str) -> ScriptResult<Imatrix> {
        Ok(super::Handle::new(super::ImatrixData::load(path).script()?))
    }

    /// Write the matrix to `path` (replacing it): llama-imatrix's GGUF, or its legacy format
    /// for a `.dat` name. Returns the path.
    #[rhai_fn(global, name = "save", return_raw, pure)]
    pub fn save(im: &mut Imatrix, path: &str) -> ScriptResult<String> {
        im.save(path).script()?;
        Ok(path.to_string())
    }

    /// Per tensor, as `llama-imatrix --show-statistics` (sorted the same way): `#{ tensor,
    /// layer, name, energy (Σ of the columns' mean x², llama.cpp's Σ(Act²)), min, max, mean,
    /// std, active (share of columns above 1e-5), elements, entropy, entropy_norm (percent), zd
    /// (share more than one σ above the mean), cossim (with the block before), max_share (the
    /// largest column's share of the energy) }`.
    #[rhai_fn(global, name = "stats", pure)]
    pub fn stats(im: &mut Imatrix) -> Array {
        crate::quant::imatrix_stats::imatrix_stats(im)
            .iter()
            .map(|s| Dynamic::from_map(super::stats_map(s)))
            .collect()
    }

    /// The per-column weights llama-quantize would use for `tensor` (e.g.
    /// "blk.0.ffn_down.weight"), or `()` when the matrix has none for it.
    #[rhai_fn(global, name = "importance", pure)]
    pub fn importance(im: &mut Imatrix, tensor: &str) -> Dynamic {
        match im.importance(tensor) {
            Some(v) => {
                Dynamic::from_array(v.into_iter().map(|x| Dynamic::from(x as f64)).collect())
            }
            None => Dynamic::UNIT,
        }
    }

    /// Tensors, chunks and datasets.
    #[rhai_fn(global, name = "to_string", pure)]
    pub fn imatrix_to_string(im: &mut Imatrix) -> String {
        format!(
            "Imatrix: {} tensors, {} chunks of {} tokens, datasets {:?}",
            im.entries.len(),
            im.chunk_count,
            im.chunk_size,
            im.datasets
        )
    }

    /// Same as `to_string`.
    #[rhai_fn(global, name = "to_debug", pure)]
    pub fn imatrix_to_debug(im: &mut Imatrix) -> String {
        imatrix_to_string(im)
    }

    /// The number of tensors.
    #[rhai_fn(global, name = "len", pure)]
    pub fn len(im: &mut Imatrix) -> INT {
        im.entries.len() as INT
    }
}
