//! Script API, area "quant": `gguf_info`, `export_gguf`, `quantize`,
//! `quant_report`, `plot_tradeoff`. Thin bindings over [`crate::gguf`] and [`crate::quant`].

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

/// A quantization plan from script options: `type` (a preset or F32/F16/BF16; `default_type` when
/// absent), `rules` (`[#{ pattern, type }]` or `["PATTERN=TYPE"]`, first match wins),
/// `output_type`, `token_embd_type`, `pure`. `what` names the options in errors.
pub fn plan_from(
    o: &crate::script::options::Options,
    what: &str,
    default_type: &str,
) -> crate::script::errors::ScriptResult<crate::quant::plan::QuantPlan> {
    use crate::quant::plan::{writable_type, QuantPlan, Target, TypeRule};
    use crate::script::errors::runtime;
    let type_name = o.string("type")?.unwrap_or_else(|| default_type.into());
    let target =
        Target::named(&type_name).map_err(|e| runtime(format!("{what}: key \"type\": {e}")))?;
    let mut plan = QuantPlan::new(target);
    for (i, rule) in o
        .array("rules")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let at = format!("{what}: rules[{i}]");
        let parsed = if rule.is_string() {
            TypeRule::parse(&rule.to_string(), &at)
        } else if let Some(m) = rule.clone().try_cast::<rhai::Map>() {
            let field = |k: &str| {
                m.get(k)
                    .filter(|v| v.is_string())
                    .map(|v| v.to_string())
                    .ok_or_else(|| runtime(format!("{at}: needs a string \"{k}\" (e.g. #{{ pattern: \"ffn_down\", type: \"Q6_K\" }})")))
            };
            TypeRule::new(&field("pattern")?, &field("type")?, &at)
        } else {
            return Err(runtime(format!(
                "{at}: expected #{{ pattern, type }} or \"PATTERN=TYPE\", got {}",
                rule.type_name()
            )));
        };
        plan.rules.push(parsed.map_err(|e| runtime(e.to_string()))?);
    }
    let typed = |key: &str| -> crate::script::errors::ScriptResult<Option<crate::gguf::GgmlType>> {
        match o.string(key)? {
            Some(name) => Ok(Some(
                writable_type(&name, &format!("{what}: key \"{key}\""))
                    .map_err(|e| runtime(e.to_string()))?,
            )),
            None => Ok(None),
        }
    };
    plan.output_type = typed("output_type")?;
    plan.token_embd_type = typed("token_embd_type")?;
    plan.pure = o.bool("pure")?.unwrap_or(false);
    plan.importance = importance_from(o, what)?;
    Ok(plan)
}

/// The `imatrix` option: an importance matrix from `imatrix(...)`/`load_imatrix(...)`, or the
/// path of a `.gguf`/`.dat` imatrix file.
pub fn importance_from(
    o: &crate::script::options::Options,
    what: &str,
) -> crate::script::errors::ScriptResult<Option<std::sync::Arc<crate::quant::plan::Importance>>> {
    use crate::gguf::imatrix_file::ImatrixData;
    use crate::quant::plan::Importance;
    use crate::script::errors::runtime;
    let Some(value) = o.value("imatrix") else {
        return Ok(None);
    };
    let (data, file) = if value.is_string() {
        let path = value.to_string();
        let data = ImatrixData::load(&path)
            .map_err(|e| runtime(format!("{what}: key \"imatrix\": {e}")))?;
        (data, path)
    } else if let Some(m) = value
        .clone()
        .try_cast::<crate::script::handle::Handle<ImatrixData>>()
    {
        // Collected in this session, never saved: the file key says so.
        (
            (*m).clone(),
            "(collected by tunelab, not saved)".to_string(),
        )
    } else {
        return Err(runtime(format!(
            "{what}: key \"imatrix\": expected an importance matrix (from imatrix() or load_imatrix()) or the path of one, got {}",
            value.type_name()
        )));
    };
    let importance = Importance::from_imatrix(&data, &file)
        .map_err(|e| runtime(format!("{what}: key \"imatrix\": {e}")))?;
    Ok(Some(std::sync::Arc::new(importance)))
}

/// A text option: the text itself, or the path of a file holding it.
pub fn text_or_file(value: Option<String>) -> crate::script::errors::ScriptResult<Option<String>> {
    use crate::script::errors::IntoScript;
    Ok(match value {
        Some(t) if std::path::Path::new(&t).is_file() => Some(
            std::fs::read_to_string(&t)
                .map_err(|e| crate::Error::io(&t, e))
                .script()?,
        ),
        other => other,
    })
}

/// `quantize`'s `activations` map: `bits` (8), `granularity` ("token"), `mode` ("dynamic"),
/// `calibration` (text or a file), `ctx` (512), `chunks`, `outlier_threshold`, `smooth_alpha`,
/// `ignore` (patterns of llama.cpp tensor names whose input stays f32).
pub fn activation_options(
    map: rhai::Map,
) -> crate::script::errors::ScriptResult<crate::quant::activations::ActivationOptions> {
    use crate::ggml::act_round::Granularity;
    use crate::quant::activations::{ActivationOptions, RangeMode};
    use crate::script::errors::{runtime, IntoScript};
    const WHAT: &str = "quantize options: activations";
    let o = crate::script::options::Options::new(
        WHAT,
        map,
        &[
            "bits",
            "granularity",
            "mode",
            "calibration",
            "ctx",
            "chunks",
            "outlier_threshold",
            "smooth_alpha",
            "ignore",
        ],
    )?;
    let mut ignore = Vec::new();
    for (i, p) in o
        .array("ignore")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let text = p.into_string().map_err(|t| {
            runtime(format!(
                "{WHAT}: ignore[{i}] is {t}, not a pattern like \"output\" or \"ffn_down\""
            ))
        })?;
        ignore.push(regex::Regex::new(&text).map_err(|e| {
            runtime(format!(
                "{WHAT}: ignore[{i}] \"{text}\" is not a regular expression: {e}"
            ))
        })?);
    }
    let d = ActivationOptions::default();
    let granularity = match o.string("granularity")?.as_deref() {
        None => d.granularity,
        Some("tensor") => Granularity::Tensor,
        Some("token") => Granularity::Token,
        Some("block32") => Granularity::Block(32),
        Some("block256") => Granularity::Block(256),
        Some("ggml") => Granularity::WeightPartner,
        Some(other) => {
            return Err(runtime(format!(
                "{WHAT}: key \"granularity\": \"{other}\" is not \"tensor\", \"token\", \"block32\", \"block256\" or \"ggml\""
            )))
        }
    };
    let mode = match o.string("mode")?.as_deref() {
        None | Some("dynamic") => RangeMode::Dynamic,
        Some("static") => RangeMode::Static,
        Some(other) => {
            return Err(runtime(format!(
                "{WHAT}: key \"mode\": \"{other}\" is not \"dynamic\" (ranges from the live tensor) or \"static\" (calibrated on text)"
            )))
        }
    };
    let bits = o.int("bits")?.unwrap_or(d.bits as INT);
    let opts = ActivationOptions {
        bits: u32::try_from(bits).unwrap_or(0),
        granularity,
        mode,
        calibration: text_or_file(o.string("calibration")?)?,
        ctx: o.int("ctx")?.map_or(d.ctx, |c| c.max(0) as usize),
        chunks: o.int("chunks")?.map(|c| c.max(1) as usize),
        outlier_threshold: o.float("outlier_threshold")?.map(|t| t as f32),
        smooth_alpha: o.float("smooth_alpha")?,
        ignore,
    };
    opts.check(WHAT).script()?;
    Ok(opts)
}

/// What `export_gguf` returns: `#{ path, tensors, bytes, file_type }`.
pub fn export_map(path: &str, r: &crate::gguf::export::ExportReport) -> rhai::Map {
    let mut m = rhai::Map::new();
    m.insert("path".into(), path.into());
    m.insert("tensors".into(), Dynamic::from(r.tensors as INT));
    m.insert("bytes".into(), Dynamic::from(r.bytes as INT));
    m.insert("file_type".into(), Dynamic::from(r.file_type as INT));
    m
}

/// The plan's option keys.
pub const PLAN_KEYS: &[&str] = &[
    "type",
    "rules",
    "output_type",
    "token_embd_type",
    "pure",
    "imatrix",
];

/// A quantization report as a script map.
fn report_map(r: &crate::quant::report::QuantReport, file_size: Option<u64>) -> rhai::Map {
    let mut tensors = rhai::Array::new();
    for t in &r.tensors {
        let mut m = rhai::Map::new();
        m.insert("name".into(), t.name.clone().into());
        m.insert("type".into(), t.ggml_type.into());
        m.insert("bits_per_weight".into(), Dynamic::from(t.bits_per_weight));
        m.insert("elements".into(), Dynamic::from(t.elements as INT));
        m.insert("rmse".into(), Dynamic::from(t.rmse));
        m.insert("max_abs".into(), Dynamic::from(t.max_abs));
        m.insert("snr_db".into(), Dynamic::from(t.snr_db));
        tensors.push(m.into());
    }
    let mut m = rhai::Map::new();
    m.insert("tensors".into(), tensors.into());
    m.insert("weight_bytes".into(), Dynamic::from(r.weight_bytes as INT));
    m.insert(
        "adapter_bytes".into(),
        Dynamic::from(r.adapter_bytes as INT),
    );
    m.insert(
        "total_bytes".into(),
        Dynamic::from((r.weight_bytes + r.adapter_bytes) as INT),
    );
    m.insert("bits_per_weight".into(), Dynamic::from(r.bits_per_weight));
    if let Some(size) = file_size {
        m.insert("file_size".into(), Dynamic::from(size as INT));
    }
    if let Some(a) = &r.agreement {
        m.insert("ppl".into(), Dynamic::from(a.ppl));
        m.insert("ppl_reference".into(), Dynamic::from(a.ppl_reference));
        m.insert("kl_mean".into(), Dynamic::from(a.kl_mean));
        m.insert("kl_max".into(), Dynamic::from(a.kl_max));
        m.insert("top1".into(), Dynamic::from(a.top1));
        m.insert("tokens".into(), Dynamic::from(a.tokens as INT));
        m.insert("chunks".into(), Dynamic::from(a.chunks as INT));
        m.insert("ctx".into(), Dynamic::from(a.ctx as INT));
    }
    if let Some(a) = &r.activations {
        m.insert("activations".into(), a.clone().into());
    }
    if let Some(f) = r.outlier_fraction {
        m.insert("outlier_fraction".into(), Dynamic::from(f));
    }
    if !r.census.is_empty() {
        let census: rhai::Array = r
            .census
            .iter()
            .map(|c| {
                let mut e = rhai::Map::new();
                e.insert(
                    "layer".into(),
                    c.layer.map_or(Dynamic::UNIT, |l| Dynamic::from(l as INT)),
                );
                e.insert("input".into(), c.input.into());
                e.insert("ratio".into(), Dynamic::from(c.ratio));
                e.insert("max".into(), Dynamic::from(c.max as f64));
                e.into()
            })
            .collect();
        m.insert("census".into(), census.into());
    }
    m.insert("table".into(), r.table().into());
    m
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
    /// "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S/M/L", "Q4_K_S/M", "Q5_K_S/M", "Q6_K") with its
    /// per-tensor types; `rules: [#{ pattern, type }]` (regular expressions on llama.cpp tensor
    /// names, first match wins, as llama-quantize's `--tensor-type`); `output_type`,
    /// `token_embd_type`; `pure` (no per-tensor mixture); `adapter` (a LoRA adapter or its folder,
    /// merged in first); `overwrite` (replace an existing file). Returns `#{ path, tensors, bytes,
    /// file_type }`. A model read from a GGUF keeps that file's tokenizer keys; others have their
    /// byte-level BPE `tokenizer.json` converted.
    #[rhai_fn(return_raw)]
    pub fn export_gguf(model: crate::model::Model, path: &str, opts: Map) -> ScriptResult<Map> {
        let mut keys = super::PLAN_KEYS.to_vec();
        keys.extend(["adapter", "overwrite"]);
        let o = crate::script::options::Options::new("export_gguf options", opts, &keys)?;
        let plan = super::plan_from(&o, "export_gguf options", "F16")?;
        let adapter = match o.value("adapter") {
            Some(v) => Some(crate::script::api_export::adapter_option(
                v,
                &model,
                "export_gguf options",
            )?),
            None => None,
        };
        crate::fsutil::refuse_existing_file(
            std::path::Path::new(path),
            o.bool("overwrite")?.unwrap_or(false),
        )
        .script()?;
        let r = crate::gguf::export::export_gguf_planned(
            &model,
            adapter.as_ref(),
            std::path::Path::new(path),
            &plan,
            &mut |_| {},
        )
        .script()?;
        Ok(super::export_map(path, &r))
    }

    /// `model` quantized in memory, as `export_gguf` with the same options would write it and
    /// `load_model(file, #{ quantized: true })` would read it back: `quantize(model, "Q4_K_M")`,
    /// or `quantize(model, #{ type, rules, output_type, token_embd_type, pure, imatrix,
    /// activations })`. `activations: #{ bits, granularity, mode, calibration, ctx, chunks,
    /// outlier_threshold, smooth_alpha }` makes every linear layer round its input before the
    /// product (see README "Activations and low-rank"); with it, a missing `type` leaves the
    /// weights as they are, so the activations' cost is measured alone.
    #[rhai_fn(return_raw)]
    pub fn quantize(
        ctx: NativeCallContext,
        model: crate::model::Model,
        type_or_options: Dynamic,
    ) -> ScriptResult<crate::model::Model> {
        use crate::script::errors::runtime;
        let opts = if type_or_options.is_string() {
            let mut m = Map::new();
            m.insert("type".into(), type_or_options);
            m
        } else {
            type_or_options.try_cast::<Map>().ok_or_else(|| {
                runtime("quantize: the second argument is a type (\"Q4_K_M\") or options #{ type, rules, output_type, token_embd_type, pure, imatrix, activations }")
            })?
        };
        let mut keys = super::PLAN_KEYS.to_vec();
        keys.push("activations");
        let o = crate::script::options::Options::new("quantize options", opts, &keys)?;
        let Some(act) = o.map("activations")? else {
            let plan = super::plan_from(&o, "quantize options", "Q8_0")?;
            return crate::quant::quantize_model::quantize_model(&model, &plan).script();
        };
        let act = super::activation_options(act)?;
        let plan = match o.value("type") {
            Some(_) => Some(super::plan_from(&o, "quantize options", "Q8_0")?),
            None => None,
        };
        let host = crate::script::engine::host(&ctx);
        crate::quant::activations::quantize_activations(&model, plan.as_ref(), &act, &host.cancel)
            .script()
    }

    /// What quantization cost: `model` (quantized, or the path of a quantized .gguf, loaded with
    /// `quantized: true`) against `reference` (the unquantized model). Options: `text` (text or a
    /// file; without it only the per-tensor errors), `ctx` (512), `chunks` (all), `activations`
    /// ("f32", the default: the cost of the weights alone; "ggml": activations rounded to 8 bits
    /// as llama.cpp's CPU kernels do, for figures that compare with llama-perplexity's), `quiet`
    /// (false: the table is printed). Returns `#{ tensors: [#{ name, type, bits_per_weight, elements, rmse,
    /// max_abs, snr_db }], weight_bytes, bits_per_weight, file_size (for a path), ppl,
    /// ppl_reference, kl_mean, kl_max, top1, tokens, chunks, ctx, table }`.
    #[rhai_fn(return_raw)]
    pub fn quant_report(
        ctx: NativeCallContext,
        model: Dynamic,
        reference: crate::model::Model,
        opts: Map,
    ) -> ScriptResult<Map> {
        use crate::script::errors::runtime;
        let o = crate::script::options::Options::new(
            "quant_report options",
            opts,
            &["text", "ctx", "chunks", "quiet", "activations", "adapter"],
        )?;
        let (model, file_size) = if model.is_string() {
            let path = model.to_string();
            let size = std::fs::metadata(&path)
                .map_err(|e| crate::Error::io(&path, e))
                .script()?
                .len();
            let load = crate::model::LoadOptions {
                quantized: true,
                device: crate::model::device_name(&reference.llama.device),
                ..Default::default()
            };
            (crate::model::load(&path, &load).script()?, Some(size))
        } else {
            let m = model.try_cast::<crate::model::Model>().ok_or_else(|| {
                runtime("quant_report: the first argument is a quantized model or the path of a quantized .gguf")
            })?;
            (m, None)
        };
        let text = super::text_or_file(o.string("text")?)?;
        let ggml_activations = match o.string("activations")?.as_deref() {
            None | Some("f32") => false,
            Some("ggml") | Some("llama.cpp") => true,
            Some(other) => {
                return Err(runtime(format!(
                    "quant_report options: key \"activations\": \"{other}\" is not \"f32\" (exact, the default) or \"ggml\" (rounded to 8 bits as llama.cpp's CPU kernels do)"
                )))
            }
        };
        let ro = crate::quant::report::ReportOptions {
            text,
            ctx: o.int("ctx")?.map(|c| c.max(0) as usize),
            chunks: o.int("chunks")?.map(|c| c.max(1) as usize),
            ggml_activations,
            adapter: match o.value("adapter") {
                Some(v) => Some(crate::script::api_export::adapter_option(
                    v,
                    &model,
                    "quant_report options",
                )?),
                None => None,
            },
        };
        let host = crate::script::engine::host(&ctx);
        let r = crate::quant::report::report(&model, &reference, &ro, &host.cancel).script()?;
        if !o.bool("quiet")?.unwrap_or(false) {
            host.output.write(&r.table());
        }
        Ok(super::report_map(&r, file_size))
    }

    /// The size–quality trade-off as a chart (`.png` or `.svg`): one dot per entry of `points`,
    /// each a map with `label`, `bits_per_weight` and the figure to draw (a `quant_report` result
    /// with a `label` added will do). Options: `y` (the key drawn, default "ppl"), `y_label`,
    /// `title`, `reference` (the unquantized value, a dashed line).
    #[rhai_fn(return_raw)]
    pub fn plot_tradeoff(points: Array, path: &str, opts: Map) -> ScriptResult<()> {
        use crate::script::errors::runtime;
        let o = crate::script::options::Options::new(
            "plot_tradeoff options",
            opts,
            &["y", "y_label", "title", "reference"],
        )?;
        let y = o.string("y")?.unwrap_or_else(|| "ppl".into());
        let mut drawn = Vec::new();
        for (i, p) in points.into_iter().enumerate() {
            let m = p.try_cast::<Map>().ok_or_else(|| {
                runtime(format!(
                    "plot_tradeoff: points[{i}] is not a map with label, bits_per_weight and {y}"
                ))
            })?;
            let num = |k: &str| -> ScriptResult<f64> {
                let v = m
                    .get(k)
                    .ok_or_else(|| runtime(format!("plot_tradeoff: points[{i}] has no \"{k}\"")))?;
                v.as_float()
                    .or_else(|_| v.as_int().map(|n| n as f64))
                    .map_err(|t| {
                        runtime(format!(
                            "plot_tradeoff: points[{i}].{k} is {t}, not a number"
                        ))
                    })
            };
            drawn.push(crate::quant::plot::TradeoffPoint {
                label: m.get("label").map(|l| l.to_string()).unwrap_or_default(),
                bits_per_weight: num("bits_per_weight")?,
                value: num(&y)?,
            });
        }
        let to = crate::quant::plot::TradeoffOptions {
            title: o.string("title")?,
            y_label: o.string("y_label")?.unwrap_or_else(|| match y.as_str() {
                "ppl" => "perplexity".into(),
                "kl_mean" => "KL divergence (mean)".into(),
                "top1" => "top-1 agreement".into(),
                other => other.into(),
            }),
            reference: o.float("reference")?,
            ..Default::default()
        };
        crate::quant::plot::plot_tradeoff(&drawn, std::path::Path::new(path), &to).script()
    }

    /// The low-rank compensation of `quantized`'s error against `reference` (the unquantized
    /// model it came from), as a LoRA adapter whose B·A approximates W − Q(W) per projection.
    /// Options: `rank` (8), `scale` ("identity": LoRC, "lqer", "diag" (default): QERA-approx,
    /// "rxx": QERA-exact), `text` (calibration text or a file; lqer and rxx need it, diag takes it
    /// or `imatrix`), `imatrix`, `ctx` (512), `chunks`, `targets` ("all"), `iters` (1; more:
    /// LoftQ's alternation, which re-quantizes the base: use `adapter.base` with the adapter),
    /// `quiet`. The adapter works wherever adapters do (`quant_report(q, ref, #{ adapter })`,
    /// `chat`, `merge`, `export_lora_gguf`).
    #[rhai_fn(return_raw)]
    pub fn lowrank(
        ctx: NativeCallContext,
        quantized: crate::model::Model,
        reference: crate::model::Model,
        opts: Map,
    ) -> ScriptResult<crate::lora::Adapter> {
        use crate::quant::lowrank::{LowRankOptions, Scale};
        use crate::script::errors::runtime;
        const WHAT: &str = "lowrank options";
        let o = crate::script::options::Options::new(
            WHAT,
            opts,
            &[
                "rank", "scale", "text", "imatrix", "ctx", "chunks", "targets", "iters", "quiet",
            ],
        )?;
        let d = LowRankOptions::default();
        let scale = match o.string("scale")? {
            None => d.scale,
            Some(name) => Scale::parse(&name).ok_or_else(|| {
                runtime(format!(
                    "{WHAT}: key \"scale\": \"{name}\" is not \"identity\" (LoRC), \"lqer\", \"diag\" (QERA-approx) or \"rxx\" (QERA-exact)"
                ))
            })?,
        };
        let positive = |key: &str, default: usize| -> ScriptResult<usize> {
            match o.int(key)? {
                None => Ok(default),
                Some(n) if n >= 1 => Ok(n as usize),
                Some(n) => Err(runtime(format!(
                    "{WHAT}: key \"{key}\": {n} is not at least 1"
                ))),
            }
        };
        let targets = match o.value("targets") {
            None => d.targets.clone(),
            Some(v) => {
                let names: Vec<String> = if v.is_string() {
                    vec![v.to_string()]
                } else {
                    v.into_typed_array::<rhai::ImmutableString>()
                        .map_err(|_| {
                            runtime(format!(
                                "{WHAT}: key \"targets\": a list of module names or \"all\""
                            ))
                        })?
                        .into_iter()
                        .map(|s| s.to_string())
                        .collect()
                };
                crate::lora::LoraConfig::parse_targets(&names).script()?
            }
        };
        let lo = LowRankOptions {
            rank: positive("rank", d.rank)?,
            scale,
            iters: positive("iters", d.iters)?,
            text: super::text_or_file(o.string("text")?)?,
            imatrix: super::importance_from(&o, WHAT)?,
            ctx: positive("ctx", d.ctx)?,
            chunks: o.int("chunks")?.map(|c| c.max(1) as usize),
            targets,
        };
        let host = crate::script::engine::host(&ctx);
        let r = crate::quant::lowrank::lowrank(
            &quantized,
            &reference,
            &lo,
            &host.cancel,
            &mut |_, _| {},
        )
        .script()?;
        if !o.bool("quiet")?.unwrap_or(false) {
            let before: f64 = r
                .fits
                .iter()
                .map(|f| f.before * f.before)
                .sum::<f64>()
                .sqrt();
            let after: f64 = r.fits.iter().map(|f| f.after * f.after).sum::<f64>().sqrt();
            host.output.write(&format!(
                "lowrank: rank {} ({}), {} tensors, {:.2} MB of factors; weighted error {:.4} → {:.4} ({:.1}% removed){}\n",
                lo.rank,
                scale.name(),
                r.fits.len(),
                crate::quant::lowrank::adapter_bytes(&r.adapter) as f64 / 1e6,
                before,
                after,
                (1.0 - after / before.max(f64::MIN_POSITIVE)) * 100.0,
                if r.base.is_some() { format!("; LoftQ re-quantized the base ({} iterations): use adapter.base", lo.iters) } else { String::new() }
            ));
        }
        Ok(r.adapter)
    }

    /// The re-quantized base a LoftQ adapter belongs to (`lowrank` with `iters` > 1); `()` for
    /// any other adapter.
    #[rhai_fn(global, get = "base", pure)]
    pub fn adapter_base(adapter: &mut crate::lora::Adapter) -> Dynamic {
        adapter
            .requantized_base
            .clone()
            .map_or(Dynamic::UNIT, Dynamic::from)
    }

    /// [`plot_tradeoff`] of perplexity, with the default options.
    #[rhai_fn(name = "plot_tradeoff", return_raw)]
    pub fn plot_tradeoff_default(points: Array, path: &str) -> ScriptResult<()> {
        plot_tradeoff(points, path, Map::new())
    }

    /// [`quant_report`] with the default options (per-tensor errors only).
    #[rhai_fn(name = "quant_report", return_raw)]
    pub fn quant_report_default(
        ctx: NativeCallContext,
        model: Dynamic,
        reference: crate::model::Model,
    ) -> ScriptResult<Map> {
        quant_report(ctx, model, reference, Map::new())
    }

    /// [`export_gguf`] with the default options (F16).
    #[rhai_fn(name = "export_gguf", return_raw)]
    pub fn export_gguf_default(model: crate::model::Model, path: &str) -> ScriptResult<Map> {
        export_gguf(model, path, Map::new())
    }
}
