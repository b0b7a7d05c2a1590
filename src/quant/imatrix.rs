//! Collecting an importance matrix as `llama-imatrix` does (`tools/imatrix/imatrix.cpp`), so that
//! llama-quantize's `--imatrix` (and tunelab's) weights quantization error by the same numbers.
//!
//! The text is tokenized once, with BOS in front when the model adds one, and cut into
//! non-overlapping chunks of `ctx` tokens (a partial last chunk is dropped; llama-imatrix wants at
//! least two chunks' worth of text whatever `--chunks` says). In each chunk the first token
//! becomes BOS when the model adds one, and the chunk runs through the model alone. At every
//! weight matrix named `blk.*` (and `output.weight` with `process_output`), the input's squared
//! activations are summed over the chunk's tokens per column, and the tokens counted: the file
//! holds, per tensor, `in_sum2[j] = Σ_tokens x_j²` and `count = tokens`, and llama-quantize
//! weights column j by `in_sum2[j] / count`, the mean of x_j².
//!
//! attn_q, attn_k and attn_v read one input, as do ffn_gate and ffn_up; each is recorded under its
//! own name with equal values, as llama.cpp does. A tied model multiplies by `token_embd.weight`
//! at the output, which no rule collects, so `process_output` changes nothing there either.
//!
//! Shape legend: T tokens of a chunk, C a projection's input width.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor, TensorId};

use crate::cancel::CancelToken;
use crate::data::template::{render_jinja, Tokens};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::generate::chat::TemplateChoice;
use crate::gguf::imatrix_file::{ImatrixData, ImatrixEntry, ImatrixFormat};
use crate::model::{Logits, Model, Pass, Site};

/// llama-imatrix skips every product over fewer than this many tokens. Its reason, asked in its
/// own comment ("why are small batches ignored (<16 tokens)?"), is left unanswered there; the
/// effect is that short decode-style batches never reach the statistics. llama.cpp applies it to
/// each micro-batch (512 tokens by default); tunelab runs a chunk in one pass, so here it drops
/// only chunks shorter than 16 tokens, which [`collect_imatrix`] refuses up front.
pub const MIN_TOKENS: usize = 16;

/// How the statistics are collected (llama-imatrix's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImatrixOptions {
    /// Tokens per chunk (`-c`, 512).
    pub ctx: usize,
    /// At most this many chunks (`--chunks`; None: all the text holds).
    pub chunks: Option<usize>,
    /// Also collect the output projection `output.weight` (`--process-output`).
    pub process_output: bool,
}

impl Default for ImatrixOptions {
    fn default() -> Self {
        ImatrixOptions {
            ctx: 512,
            chunks: None,
            process_output: false,
        }
    }
}

/// The llama.cpp name of the weight a [`Site`] multiplies by.
pub fn tensor_name(model: &Model, site: Site) -> String {
    match site {
        Site::Block(layer, target) => format!("blk.{layer}.{}.weight", target.gguf_part()),
        Site::Output if model.config().tie_word_embeddings => "token_embd.weight".into(),
        Site::Output => "output.weight".into(),
    }
}

/// llama-imatrix's rule for which products it records.
fn collected(name: &str, process_output: bool) -> bool {
    name.starts_with("blk.") || (process_output && name == "output.weight")
}

/// Per tensor: Σ x² per column (C) so far, and the tokens counted.
type Sums = BTreeMap<String, (Tensor, u64)>;

/// Collect the importance matrix of `model` over `text`. `progress` hears `(chunks done, total)`
/// after each chunk.
pub fn collect_imatrix(
    model: &Model,
    text: &str,
    opts: &ImatrixOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ImatrixData> {
    let chunks = Chunks::new(model, text, opts)?;
    let sums: Mutex<Sums> = Mutex::new(BTreeMap::new());
    let last: Mutex<Option<(TensorId, Tensor)>> = Mutex::new(None);
    let observe = |site: Site, x: &Tensor| -> Result<()> {
        let name = tensor_name(model, site);
        if !collected(&name, opts.process_output) {
            return Ok(());
        }
        let c = x.dim(candle_core::D::Minus1)?;
        let tokens = x.elem_count() / c.max(1);
        if tokens < MIN_TOKENS {
            return Ok(());
        }
        let sq = column_squares(x, tokens, c, &last)?; // (C)
        let mut sums = sums.lock().unwrap_or_else(|p| p.into_inner());
        match sums.get_mut(&name) {
            Some((acc, n)) => {
                *acc = (&*acc + sq)?;
                *n += tokens as u64;
            }
            None => {
                sums.insert(name, (sq, tokens as u64));
            }
        }
        Ok(())
    };
    // All logits only when the output projection is recorded: its input is every position.
    let which = if collected(&tensor_name(model, Site::Output), opts.process_output) {
        Logits::All
    } else {
        Logits::Last
    };
    let pass = Pass {
        observe: Some(&observe),
        ..Default::default()
    };
    for c in 0..chunks.count {
        cancel.check()?;
        let ids = Tensor::new(chunks.chunk(c).as_slice(), &model.llama.device)?.unsqueeze(0)?; // (1, T)
        model.llama.forward_with(&ids, None, None, which, pass)?;
        progress(c + 1, chunks.count);
    }
    let sums = sums.into_inner().unwrap_or_else(|p| p.into_inner());
    finish(sums, opts.ctx)
}

/// Σ over tokens of x² per column, (C), of `x` (…, C) holding `tokens` rows. attn_q/k/v (and
/// ffn_gate/up) see the very same tensor one after another: `last` keeps the previous answer.
/// The sum over tokens is a product with a row of ones: candle's reduction over the first axis
/// walks the columns one element at a time (6.8 ms for 512 × 1536 here, against 0.6 ms).
fn column_squares(
    x: &Tensor,
    tokens: usize,
    c: usize,
    last: &Mutex<Option<(TensorId, Tensor)>>,
) -> Result<Tensor> {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((id, sq)) = last.as_ref() {
        if *id == x.id() {
            return Ok(sq.clone());
        }
    }
    let sq = x.to_dtype(DType::F32)?.reshape((tokens, c))?.sqr()?; // (T, C)
    let ones = Tensor::ones((1, tokens), DType::F32, x.device())?;
    let sum = ones.matmul(&sq)?.squeeze(0)?; // (C)
    *last = Some((x.id(), sum.clone()));
    Ok(sum)
}

/// The collected sums as the file holds them.
fn finish(sums: Sums, ctx: usize) -> Result<ImatrixData> {
    let mut entries = BTreeMap::new();
    let mut max_count = 0u64;
    for (name, (acc, count)) in sums {
        let in_sum2 = acc.to_vec1::<f32>()?;
        if in_sum2.iter().any(|v| !v.is_finite()) {
            // llama-imatrix stops here too ("non-finite values detected").
            return Err(Error::msg(format!(
                "imatrix: the squared activations of {name} overflow (non-finite); the model's activations are out of f32 range on this text"
            )));
        }
        max_count = max_count.max(count);
        entries.insert(
            name,
            ImatrixEntry {
                in_sum2,
                counts: vec![count as f32],
            },
        );
    }
    Ok(ImatrixData {
        entries,
        // llama-imatrix's running "last chunk": tokens counted over the chunk size.
        chunk_count: (max_count / ctx as u64) as u32,
        chunk_size: ctx as u32,
        datasets: Vec::new(),
        format: ImatrixFormat::Gguf,
        has_metadata: true,
    })
}

/// A dataset as calibration text: each example (system prompt, every turn, replies included)
/// rendered with `template` (a built-in name, or "auto": the model's own), one after another
/// with a newline between. Special tokens in the result are read as such when tokenized.
pub fn calibration_text(model: &Model, data: &Dataset, template: &str) -> Result<String> {
    let choice = TemplateChoice::resolve(template, model)?;
    let tokens = Tokens {
        bos: model.bos_token.clone().unwrap_or_default(),
        eos: model.eos_token.clone().unwrap_or_default(),
        today: String::new(),
    };
    let mut out = Vec::with_capacity(data.len());
    for e in data.iter() {
        out.push(match &choice {
            TemplateChoice::BuiltIn(t) => t.render(&e.system, &e.tools, &e.messages, &tokens)?,
            // Whole conversations: no generation prompt after the last reply.
            TemplateChoice::Jinja(j) => {
                render_jinja(j, &e.system, &e.messages, None, false, &tokens)?
            }
        });
    }
    Ok(out.join("\n"))
}

/// A text cut into llama-imatrix's chunks for a model.
struct Chunks {
    tokens: Vec<u32>,
    bos: Option<u32>,
    ctx: usize,
    count: usize,
}

impl Chunks {
    fn new(model: &Model, text: &str, opts: &ImatrixOptions) -> Result<Chunks> {
        let ctx = opts.ctx;
        if ctx < MIN_TOKENS {
            return Err(Error::config(
                "imatrix",
                format!("ctx must be at least {MIN_TOKENS} tokens (llama-imatrix ignores products over fewer), got {ctx}"),
            ));
        }
        // llama-imatrix tokenizes with special tokens parsed off: "<|im_start|>" written in a
        // text file stays text there, while tunelab's tokenizer reads it as the special token.
        // Plain prose is tokenized alike.
        let mut tokens = model.tokenizer.encode(text)?;
        let bos = model.llama.config.bos_token_id.filter(|_| model.add_bos);
        if let Some(bos) = bos {
            tokens.insert(0, bos);
        }
        if tokens.len() < 2 * ctx {
            return Err(Error::msg(format!(
                "imatrix: the text has {} tokens; llama-imatrix needs at least 2 × ctx = {} for a context of {ctx}; use a longer text or a smaller ctx",
                tokens.len(),
                2 * ctx
            )));
        }
        let mut count = tokens.len() / ctx;
        if let Some(max) = opts.chunks {
            count = count.min(max.max(1));
        }
        Ok(Chunks {
            tokens,
            bos,
            ctx,
            count,
        })
    }

    /// The tokens of chunk `c`, its first one BOS when the model adds one.
    fn chunk(&self, c: usize) -> Vec<u32> {
        let mut chunk = self.tokens[c * self.ctx..(c + 1) * self.ctx].to_vec();
        if let Some(bos) = self.bos {
            chunk[0] = bos;
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp_and_the_collection_rule() {
        let model = crate::model::load("tiny", &Default::default()).unwrap();
        let q = tensor_name(&model, Site::Block(3, crate::lora::Target::Q));
        assert_eq!(q, "blk.3.attn_q.weight");
        // tiny ties its output to the embedding: never collected, as in llama.cpp.
        let out = tensor_name(&model, Site::Output);
        assert_eq!(out, "token_embd.weight");
        assert!(collected(&q, false) && !collected(&out, true));
        assert!(collected("output.weight", true) && !collected("output.weight", false));
    }

    #[test]
    fn short_contexts_and_short_texts_are_refused() {
        let model = crate::model::load("tiny", &Default::default()).unwrap();
        let cancel = CancelToken::new();
        let opts = ImatrixOptions {
            ctx: 8,
            ..Default::default()
        };
        let err = collect_imatrix(&model, "hello", &opts, &cancel, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        let opts = ImatrixOptions {
            ctx: 64,
            ..Default::default()
        };
        let err =
            collect_imatrix(&model, "hello world", &opts, &cancel, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("at least 2 × ctx = 128"), "{err}");
    }
}
