//! A quantization plan: which ggml type each tensor of a llama model gets, as llama-quantize
//! decides it from its command line — a target (a preset such as Q4_K_M, or F32/F16/BF16 for every
//! weight), `--tensor-type PATTERN=TYPE` rules, `--output-tensor-type`, `--token-embedding-type`
//! and `--pure` (`llama_tensor_get_type` in `src/llama-quant.cpp`).
//!
//! For each tensor, in order:
//! 1. 1-D tensors and norms stay F32;
//! 2. `token_embd.weight` gets `token_embd_type`, `output.weight` gets `output_type`, when given;
//! 3. the first rule whose pattern (a regular expression, searched anywhere in the llama.cpp
//!    tensor name, as `std::regex_search` does) matches gives the type;
//! 4. otherwise the preset's per-tensor choice ([`super::mixture::tensor_type`]), or its base type
//!    for every tensor when `pure`;
//! 5. a row that is not whole blocks of the chosen type falls back ([`super::mixture::fallback`]).
//!
//! Where tunelab differs from llama-quantize: the fallback of step 5 also applies to the types of
//! step 2 (llama-quantize writes them unchecked and fails on such rows), and rules also apply with
//! a float target (llama-quantize ignores them there).

use regex::Regex;

use super::mixture::{self, LlamaShape, Preset};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;

/// The types tunelab can write for a weight.
pub const WRITABLE: &[&str] = &[
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K",
];

/// What most tensors become.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Every 2-D weight in F32, F16 or BF16.
    Float(GgmlType),
    /// llama-quantize's preset of that name (per-tensor types, fallbacks).
    Preset(Preset),
}

impl Target {
    /// `F32`, `F16`, `BF16`, or a preset name (`Q8_0`, `Q4_K_M`, …).
    pub fn named(name: &str) -> Result<Target> {
        match GgmlType::from_name(name) {
            Some(t) if matches!(t.name, "F32" | "F16" | "BF16") => Ok(Target::Float(t)),
            _ => Ok(Target::Preset(Preset::named(name)?)),
        }
    }

    /// llama.cpp's `general.file_type` of the result.
    pub fn file_type(&self) -> u32 {
        match self {
            Target::Float(t) => match t.name {
                "F32" => 0,
                "F16" => 1,
                _ => 32,
            },
            Target::Preset(p) => p.file_type,
        }
    }

    /// The name the target was given by (`Q4_K_M`, `F16`).
    pub fn name(&self) -> &'static str {
        match self {
            Target::Float(t) => t.name,
            Target::Preset(p) => p.name,
        }
    }
}

/// What the mixture rules need to know of a model with config `c`.
pub fn shape_of(c: &crate::model::LlamaConfig) -> LlamaShape {
    LlamaShape {
        n_layer: c.num_hidden_layers,
        n_head: c.num_attention_heads,
        n_head_kv: c.num_key_value_heads,
        tied: c.tie_word_embeddings,
    }
}

/// `PATTERN=TYPE`: tensors whose llama.cpp name matches get that type.
#[derive(Debug, Clone)]
pub struct TypeRule {
    pub pattern: Regex,
    pub ty: GgmlType,
}

impl TypeRule {
    /// A rule from its pattern and type name; `what` names it in errors (`rules[2]`).
    pub fn new(pattern: &str, ty: &str, what: &str) -> Result<TypeRule> {
        let re = Regex::new(pattern).map_err(|e| {
            Error::msg(format!(
                "{what}: pattern \"{pattern}\" is not a regular expression: {}",
                e.to_string().lines().last().unwrap_or("")
            ))
        })?;
        Ok(TypeRule {
            pattern: re,
            ty: writable_type(ty, what)?,
        })
    }

    /// `PATTERN=TYPE`, as llama-quantize's `--tensor-type` takes it.
    pub fn parse(spec: &str, what: &str) -> Result<TypeRule> {
        let (pattern, ty) = spec.rsplit_once('=').ok_or_else(|| {
            Error::msg(format!(
                "{what}: \"{spec}\" is not PATTERN=TYPE (e.g. ffn_down=Q6_K)"
            ))
        })?;
        TypeRule::new(pattern.trim(), ty.trim(), what)
    }
}

/// The ggml type called `name` if tunelab can write it; `what` names the setting in errors.
pub fn writable_type(name: &str, what: &str) -> Result<GgmlType> {
    match GgmlType::from_name(name) {
        Some(t) if WRITABLE.contains(&t.name) => Ok(t),
        _ => Err(Error::msg(format!(
            "{what}: \"{name}\" is not a type tunelab can write; use one of {}",
            WRITABLE.join(", ")
        ))),
    }
}

/// Rules read from a file: one `PATTERN=TYPE` per line (`#` starts a comment), or a JSON array of
/// `{"pattern": …, "type": …}` objects.
pub fn read_rules(path: &std::path::Path) -> Result<Vec<TypeRule>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let at = |line: usize| format!("{}: line {line}", path.display());
    if text.trim_start().starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, format!("line {}", e.line()), e.to_string()))?;
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let what = format!("{}: rule {i}", path.display());
                let field = |k: &str| {
                    item.get(k)
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| Error::msg(format!("{what}: needs a string \"{k}\"")))
                };
                TypeRule::new(field("pattern")?, field("type")?, &what)
            })
            .collect();
    }
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or("").trim();
            (!line.is_empty()).then(|| TypeRule::parse(line, &at(i + 1)))
        })
        .collect()
}

/// Everything that decides the tensors' types.
#[derive(Debug, Clone)]
pub struct QuantPlan {
    pub target: Target,
    /// First match wins.
    pub rules: Vec<TypeRule>,
    pub output_type: Option<GgmlType>,
    pub token_embd_type: Option<GgmlType>,
    /// Every weight gets the target's base type: no per-tensor mixture.
    pub pure: bool,
    /// An importance matrix: quantize with ggml's importance-weighted quantizers, and apply the
    /// preset rules llama-quantize applies when it has one.
    pub importance: Option<std::sync::Arc<Importance>>,
}

/// What quantization takes from an importance matrix: each tensor's per-column weights exactly
/// as llama-quantize hands them to ggml, and what the quantized file records about the matrix.
#[derive(Debug, Clone, Default)]
pub struct Importance {
    /// llama.cpp tensor name → one value per column.
    pub per_tensor: std::collections::HashMap<String, Vec<f32>>,
    /// The `quantize.imatrix.*` keys a quantized file records (None: write none).
    pub keys: Option<crate::gguf::imatrix_file::QuantizeImatrixKeys>,
}

impl Importance {
    /// What quantization takes from `data`, loaded from (or to be saved as) `file`: the
    /// per-column weights llama-quantize would compute from it and the keys it would record.
    pub fn from_imatrix(
        data: &crate::gguf::imatrix_file::ImatrixData,
        file: &str,
    ) -> Result<Importance> {
        let per_tensor = data
            .entries
            .keys()
            .filter_map(|name| Some((name.clone(), data.importance(name)?)))
            .collect();
        Ok(Importance {
            per_tensor,
            keys: Some(data.quantize_keys(file)?),
        })
    }

    /// The importance matrix file at `path` (llama-imatrix's .gguf, or the legacy .dat), recorded
    /// as given, as llama-quantize records it; `what` names the option in errors (`--imatrix`).
    pub fn load(path: &std::path::Path, what: &str) -> Result<Importance> {
        if !path.is_file() {
            return Err(Error::msg(format!(
                "{what} {}: no such file; give an importance matrix made by `tunelab imatrix` or llama-imatrix (.gguf or .dat)",
                path.display()
            )));
        }
        let data = crate::gguf::imatrix_file::ImatrixData::load(path)?;
        Importance::from_imatrix(&data, &path.to_string_lossy())
    }

    /// The weights of tensor `name`, when the matrix has them.
    pub fn of(&self, name: &str) -> Option<&[f32]> {
        self.per_tensor.get(name).map(|v| v.as_slice())
    }
}

impl QuantPlan {
    /// Just the target, as `llama-quantize IN OUT TYPE` does.
    pub fn new(target: Target) -> QuantPlan {
        QuantPlan {
            target,
            rules: Vec::new(),
            output_type: None,
            token_embd_type: None,
            pure: false,
            importance: None,
        }
    }

    /// Refuses, as llama-quantize does up front, a preset that needs an importance matrix
    /// (Q2_K_S) when the plan has none.
    pub fn check_needs_imatrix(&self) -> Result<()> {
        match self.target {
            Target::Preset(p) if p.needs_imatrix() && self.importance.is_none() => Err(Error::msg(format!(
                "{} needs an importance matrix: collect one with `tunelab imatrix` (or llama-imatrix) and pass it with --imatrix FILE",
                p.name
            ))),
            _ => Ok(()),
        }
    }

    /// Whether quantizing with an importance matrix.
    pub fn has_imatrix(&self) -> bool {
        self.importance.is_some()
    }

    /// The importance weights tensor `name` (rows of `cols`) is quantized to `ty` with: None
    /// without a matrix or when the matrix has no entry for it (llama-quantize then quantizes it
    /// without, as here). Errors, as llama-quantize's, when the entry has the wrong length, or when
    /// the preset needs a matrix (Q2_K_S) for a Q2_K tensor and there is none.
    pub fn importance_for(&self, name: &str, cols: usize, ty: &GgmlType) -> Result<Option<&[f32]>> {
        let found = self.importance.as_deref().and_then(|i| i.of(name));
        if let Some(values) = found {
            if values.len() != cols {
                return Err(Error::msg(format!(
                    "the importance matrix has {} values for {name}, whose rows have {cols}; it was collected on another model — collect one on this model",
                    values.len()
                )));
            }
        }
        let needs = matches!(self.target, Target::Preset(p) if p.needs_imatrix())
            && ty.name == "Q2_K"
            && !matches!(name, "token_embd.weight" | "output.weight");
        if needs && found.is_none() {
            let preset = self.target.name();
            return Err(Error::msg(match &self.importance {
                None => format!("{preset} needs an importance matrix (for {name}): collect one with imatrix(model, text) or `tunelab imatrix`, and pass it as imatrix"),
                Some(_) => format!("{preset} needs importance data for {name}, which the importance matrix lacks; collect the matrix on this model"),
            }));
        }
        Ok(found)
    }

    /// The type of llama.cpp tensor `name` with shape `ne` (row length first) in a model of
    /// that shape.
    pub fn tensor_type(&self, name: &str, ne: &[u64], shape: &LlamaShape) -> GgmlType {
        let f32 = GgmlType::from_name("F32").expect("F32");
        if ne.len() < 2 || name.ends_with("_norm.weight") || !name.ends_with(".weight") {
            return f32;
        }
        let ne0 = ne[0];
        let fixed = match name {
            "token_embd.weight" => self.token_embd_type,
            "output.weight" => self.output_type,
            _ => None,
        };
        if let Some(t) = fixed {
            return mixture::fallback(t, ne0);
        }
        if let Some(rule) = self.rules.iter().find(|r| r.pattern.is_match(name)) {
            return mixture::fallback(rule.ty, ne0);
        }
        match self.target {
            Target::Float(t) => t,
            Target::Preset(p) if self.pure => mixture::fallback(
                GgmlType::from_name(p.base).expect("a preset's base type"),
                ne0,
            ),
            Target::Preset(p) => mixture::tensor_type(&p, name, ne, shape, self.has_imatrix()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2's shape, and the same untied.
    const SMOL: LlamaShape = LlamaShape {
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        tied: true,
    };
    const UNTIED: LlamaShape = LlamaShape {
        tied: false,
        ..SMOL
    };

    fn plan(target: &str) -> QuantPlan {
        QuantPlan::new(Target::named(target).unwrap())
    }

    #[test]
    fn the_first_matching_rule_wins_and_still_falls_back() {
        let mut p = plan("Q4_0");
        p.rules = vec![
            TypeRule::parse("blk\\.0\\.ffn_down=Q8_0", "r0").unwrap(),
            TypeRule::parse("ffn_down=Q6_K", "r1").unwrap(),
        ];
        let t = |name: &str, ne0: u64| p.tensor_type(name, &[ne0, 64], &SMOL).name;
        assert_eq!(t("blk.0.ffn_down.weight", 1536), "Q8_0");
        assert_eq!(t("blk.1.ffn_down.weight", 1536), "Q6_K");
        // 576 is not whole Q6_K super-blocks: llama.cpp's fallback to Q8_0.
        assert_eq!(t("blk.1.ffn_down.weight", 576), "Q8_0");
        assert_eq!(t("blk.1.ffn_up.weight", 576), "Q4_0");
        assert_eq!(t("blk.1.attn_norm.weight", 576), "F32");
    }

    #[test]
    fn output_and_token_embedding_types_override_the_preset() {
        let mut p = plan("Q4_0");
        assert_eq!(
            p.tensor_type("output.weight", &[576, 100], &UNTIED).name,
            "Q8_0" // the preset's Q6_K does not fit 576-weight rows: llama.cpp's fallback
        );
        p.output_type = Some(GgmlType::from_name("F16").unwrap());
        p.token_embd_type = Some(GgmlType::from_name("Q5_1").unwrap());
        assert_eq!(
            p.tensor_type("output.weight", &[576, 100], &UNTIED).name,
            "F16"
        );
        assert_eq!(
            p.tensor_type("token_embd.weight", &[576, 100], &UNTIED)
                .name,
            "Q5_1"
        );
    }

    #[test]
    fn pure_gives_every_weight_the_base_type() {
        let mut p = plan("Q4_K_M");
        assert_eq!(
            p.tensor_type("blk.0.ffn_down.weight", &[1536, 576], &SMOL)
                .name,
            "Q6_K"
        );
        p.pure = true;
        assert_eq!(
            p.tensor_type("blk.0.ffn_down.weight", &[1536, 576], &SMOL)
                .name,
            "Q4_K"
        );
        assert_eq!(
            p.tensor_type("blk.0.attn_q.weight", &[576, 576], &SMOL)
                .name,
            "Q5_0"
        );
    }

    #[test]
    fn bad_rules_say_which_and_what_to_use() {
        let e = TypeRule::parse("ffn_down", "rules[0]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rules[0]") && e.contains("PATTERN=TYPE"), "{e}");
        let e = TypeRule::parse("(=Q8_0", "rules[1]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rules[1]") && e.contains("regular expression"),
            "{e}"
        );
        let e = TypeRule::parse("x=Q7_K", "rules[2]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Q7_K") && e.contains("Q4_K"), "{e}");
    }

    #[test]
    fn rules_files_take_lines_or_json() {
        let dir = tempfile::tempdir().unwrap();
        let lines = dir.path().join("rules.txt");
        std::fs::write(
            &lines,
            "# keep the attention sharp\nattn_v=Q8_0\n\nffn_down=Q6_K # big\n",
        )
        .unwrap();
        let r = read_rules(&lines).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].ty.name, "Q6_K");
        let json = dir.path().join("rules.json");
        std::fs::write(&json, r#"[{"pattern": "attn_v", "type": "Q8_0"}]"#).unwrap();
        assert_eq!(read_rules(&json).unwrap()[0].ty.name, "Q8_0");
        std::fs::write(&lines, "attn_v=Q8_0\nnonsense\n").unwrap();
        let e = read_rules(&lines).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn importance_is_checked_against_the_tensor_and_the_preset() {
        let q4 = GgmlType::from_name("Q4_0").unwrap();
        let q2 = GgmlType::from_name("Q2_K").unwrap();
        let mut p = plan("Q4_0");
        assert_eq!(
            p.importance_for("blk.0.attn_q.weight", 4, &q4).unwrap(),
            None
        );
        let mut imatrix = Importance::default();
        imatrix
            .per_tensor
            .insert("blk.0.attn_q.weight".into(), vec![1.0; 4]);
        p.importance = Some(std::sync::Arc::new(imatrix));
        assert_eq!(
            p.importance_for("blk.0.attn_q.weight", 4, &q4).unwrap(),
            Some(&[1.0f32; 4][..])
        );
        let e = p.importance_for("blk.0.attn_q.weight", 8, &q4).unwrap_err();
        assert!(
            e.to_string().contains("4 values for blk.0.attn_q.weight"),
            "{e}"
        );
        // Q2_K_S: a Q2_K tensor without importance data is refused, naming what to do.
        let mut s = plan("Q2_K_S");
        let e = s
            .importance_for("blk.3.ffn_down.weight", 1536, &q2)
            .unwrap_err();
        assert!(e.to_string().contains("needs an importance matrix"), "{e}");
        assert!(s.importance_for("token_embd.weight", 576, &q2).is_ok());
        s.importance = p.importance.clone();
        let e = s
            .importance_for("blk.3.ffn_down.weight", 1536, &q2)
            .unwrap_err();
        assert!(e.to_string().contains("lacks"), "{e}");
    }
}
