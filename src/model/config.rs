//! The shape of a Llama-family model, read from a Hugging Face `config.json`, from GGUF metadata,
//! or given by the built-in `tiny` preset.
//!
//! Covers Llama 2/3 (incl. Llama-3 rope scaling), SmolLM2, TinyLlama and Qwen2 (q/k/v biases):
//! the differences that matter to the forward pass are all fields here.

use serde::Deserialize;

use crate::error::{Error, Result};

/// Llama 3.x rope frequency scaling (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `qwen2`, ... (HF `model_type` or GGUF `general.architecture`).
    pub architecture: String,
    pub vocab_size: usize,
    /// Width of the residual stream (C).
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head (usually hidden_size / num_attention_heads).
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    /// The output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Check the numbers fit together; `source` names the file in errors.
    pub fn validate(&self, source: &str) -> Result<()> {
        let bad = |what: String| Err(Error::msg(format!("{source}: {what}")));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad("the number of attention heads must be positive".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even and positive (rotary embeddings rotate pairs)",
                self.head_dim
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 || v > MAX_DIMENSION {
                return bad(format!(
                    "{name} = {v} is out of range (1..={MAX_DIMENSION})"
                ));
            }
        }
        Ok(())
    }

    /// Parameters of the dense model (embeddings counted once when tied).
    pub fn num_params(&self) -> usize {
        let (c, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let layer = c * q + 2 * c * kv + q * c + bias + 3 * c * f + 2 * c;
        let head = if self.tie_word_embeddings { 0 } else { v * c };
        v * c + self.num_hidden_layers * layer + c + head
    }
}

/// Largest dimension accepted from a file (caps allocations driven by untrusted numbers).
pub const MAX_DIMENSION: usize = 1 << 24;

/// `config.json` as Hugging Face writes it (fields tunelab reads).
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

/// Token ids from a config value that may be a number or a list of numbers.
pub fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|n| vec![n as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Parse a Hugging Face `config.json` (its text; `source` names it in errors).
pub fn from_hf_json(text: &str, source: &str) -> Result<LlamaConfig> {
    let hf: HfConfig = serde_json::from_str(text).map_err(|e| {
        Error::msg(format!(
            "{source}: line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    let architecture = hf.model_type.clone().unwrap_or_else(|| "llama".into());
    if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(Error::msg(format!(
            "{source}: model_type \"{architecture}\" is not supported; tunelab runs {}",
            SUPPORTED_ARCHITECTURES.join(", ")
        )));
    }
    let rope_scaling = match &hf.rope_scaling {
        Some(v)
            if v.get("rope_type")
                .or_else(|| v.get("type"))
                .and_then(|t| t.as_str())
                == Some("llama3") =>
        {
            Some(
                serde_json::from_value(v.clone())
                    .map_err(|e| Error::msg(format!("{source}: rope_scaling: {e}")))?,
            )
        }
        Some(serde_json::Value::Null) | None => None,
        Some(other) => {
            return Err(Error::msg(format!(
                "{source}: rope_scaling {other} is not supported (only rope_type \"llama3\")"
            )))
        }
    };
    let config = LlamaConfig {
        attention_bias: hf.attention_bias.unwrap_or(architecture == "qwen2"),
        architecture,
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: hf.num_attention_heads,
        num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        head_dim: hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
        rms_norm_eps: hf.rms_norm_eps,
        rope_theta: hf.rope_theta,
        rope_scaling,
        max_position_embeddings: hf.max_position_embeddings,
        tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        bos_token_id: token_ids(&hf.bos_token_id).first().copied(),
        eos_token_ids: token_ids(&hf.eos_token_id),
    };
    config.validate(source)?;
    Ok(config)
}

/// Architectures whose weights follow the Llama layout.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "mistral"];

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_theta": 100000, "max_position_embeddings": 8192,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2}"#;

    #[test]
    fn smollm2_config_parses_with_the_published_size() {
        let c = from_hf_json(SMOLLM2, "config.json").unwrap();
        assert_eq!((c.head_dim, c.num_key_value_heads), (64, 3));
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, [2]);
        // SmolLM2-135M: 134,515,008 parameters (tied embeddings).
        assert_eq!(c.num_params(), 134_515_008);
    }

    #[test]
    fn llama3_rope_scaling_and_qwen2_biases() {
        let l3 = r#"{"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "eos_token_id": [128001, 128008, 128009]}"#;
        let c = from_hf_json(l3, "config.json").unwrap();
        assert_eq!(c.rope_scaling.as_ref().unwrap().factor, 32.0);
        assert_eq!(c.eos_token_ids.len(), 3);
        let q = r#"{"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2}"#;
        assert!(from_hf_json(q, "config.json").unwrap().attention_bias);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let e = from_hf_json(
            r#"{"model_type": "gpt2", "vocab_size": 1, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2}"#,
            "x/config.json",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("model_type \"gpt2\" is not supported"),
            "{e}"
        );
        let e = from_hf_json(
            r#"{"vocab_size": 10, "hidden_size": 12, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3}"#,
            "c.json",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
        assert!(from_hf_json("{", "c.json")
            .unwrap_err()
            .to_string()
            .starts_with("c.json: line 1"));
    }
}
