//! The Llama forward pass: embeddings, N blocks of (RMSNorm → grouped-query attention with RoPE →
//! residual, RMSNorm → SwiGLU MLP → residual), a final RMSNorm and the output projection (tied to the
//! embeddings or not). Covers Llama 2/3, SmolLM2, TinyLlama, Mistral-style and Qwen2 (q/k/v biases).
//!
//! Shape legend: B batch, T new tokens, S = past + T positions attended to, C hidden size,
//! Hq/Hkv query/key-value heads, D head size, V vocabulary, F MLP width.

use candle_core::{DType, Device, Tensor, D};

use super::config::LlamaConfig;
use super::kv_cache::{decode_attention, KvCache, LayerCache};
use super::linear::Linear;
use super::rope;
use crate::error::Result;
use crate::lora::{Adapter, Dropout, Target};

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Tensor, // (C)
    pub q: Linear,         // C → Hq·D
    pub k: Linear,         // C → Hkv·D
    pub v: Linear,         // C → Hkv·D
    pub o: Linear,         // Hq·D → C
    pub mlp_norm: Tensor,  // (C)
    pub gate: Linear,      // C → F
    pub up: Linear,        // C → F
    pub down: Linear,      // F → C
}

impl Block {
    /// The projection a LoRA target names.
    pub fn linear(&self, target: Target) -> &Linear {
        match target {
            Target::Q => &self.q,
            Target::K => &self.k,
            Target::V => &self.v,
            Target::O => &self.o,
            Target::Gate => &self.gate,
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }

    /// The projection a LoRA target names, to change it.
    pub fn linear_mut(&mut self, target: Target) -> &mut Linear {
        match target {
            Target::Q => &mut self.q,
            Target::K => &mut self.k,
            Target::V => &mut self.v,
            Target::O => &mut self.o,
            Target::Gate => &mut self.gate,
            Target::Up => &mut self.up,
            Target::Down => &mut self.down,
        }
    }
}

/// Where a forward pass multiplies by a weight matrix: the input of a block projection, or of
/// the output projection (lm_head). Observers use it to name what they see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// Projection `target` of block `layer`.
    Block(usize, Target),
    /// The output projection.
    Output,
}

/// Called with the input of every product a [`Site`] names, before the product: (B, T, C_in),
/// or (N, C_in) at the training pass's output projection. The importance matrix
/// (`crate::quant::imatrix`) sums its squares. An error stops the pass.
pub type Observer<'a> = &'a (dyn Fn(Site, &Tensor) -> Result<()> + Sync);

/// How a forward pass runs: with or without an adapter, for inference or for training.
#[derive(Clone, Copy, Default)]
pub struct Pass<'a> {
    /// LoRA factors added to the adapted projections.
    pub adapter: Option<&'a Adapter>,
    /// Training: every op has a backward pass, base weights are frozen (their gradient is never
    /// computed), and the adapter's dropout applies.
    pub train: bool,
    /// The adapter's dropout (training only).
    pub dropout: Option<&'a Dropout<'a>>,
    /// Sees the input of every block projection and of the output projection (None: no cost).
    pub observe: Option<Observer<'a>>,
    /// Training: dense base weights get their gradients too (a plain product instead of the
    /// frozen one), for measures that ask how the loss moves with each weight.
    pub weight_grads: bool,
    /// Set by the training pass for its blocks, not by callers: the batch's layout, for the
    /// fused attention that reads it instead of a mask.
    pub layout: Option<TrainLayout<'a>>,
}

/// How a training batch's positions attend: causally, within equal segment ids (B·T; None: one
/// segment per row).
#[derive(Clone, Copy, Default)]
pub struct TrainLayout<'a> {
    pub segments: Option<&'a [u32]>,
}

/// The rotary tables and attention mask every block of one training pass reads.
pub(super) struct TrainInputs {
    cos: Tensor,  // (B, 1, T, D/2)
    sin: Tensor,  // (B, 1, T, D/2)
    mask: Tensor, // (B|1, 1, T, T)
    segments: Option<Vec<u32>>,
}

/// The whole network.
#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    /// (V, C), dense (dequantized when loaded from a quantized file).
    pub embed: Tensor,
    /// The ggml type the embedding was stored in, when it came dequantized from quantized blocks
    /// (reports show what quantization cost it).
    pub embed_type: Option<candle_core::quantized::GgmlDType>,
    pub blocks: Vec<Block>,
    pub norm: Tensor, // (C)
    /// C → V; for tied models a view of the embedding (dense or quantized).
    pub lm_head: Linear,
    inv_freq: Vec<f32>,
    /// Activation dtype: f32 for quantized weights, and for bf16 weights on a CPU with
    /// AVX512-BF16 ([`Llama::autocast_bf16`]); otherwise the weights' own.
    pub dtype: DType,
    pub device: Device,
}

/// Which positions' logits to compute (the output projection is the most expensive layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position: (B, T, V).
    All,
    /// Only the last position: (B, 1, V).
    Last,
    /// Positions `n..T`: (B, T - n, V).
    From(usize),
}

impl Llama {
    /// Assemble a model from its parts.
    pub fn new(
        config: LlamaConfig,
        embed: Tensor,
        blocks: Vec<Block>,
        norm: Tensor,
        lm_head: Linear,
        dtype: DType,
    ) -> Self {
        let inv_freq = rope::inverse_frequencies(&config);
        let device = embed.device().clone();
        Llama {
            config,
            embed,
            embed_type: None,
            blocks,
            norm,
            lm_head,
            inv_freq,
            dtype,
            device,
        }
    }

    /// The dtype the dense weights are stored in (the embedding's: every dense model has one;
    /// quantized models hold it dequantized in f32).
    pub fn weights_dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// PyTorch's bf16 autocast on a CPU: the projections and the embedding stay bf16, the
    /// products run in [`super::gemm_bf16`]'s kernel with f32 sums, and everything else (norm
    /// weights, activations, attention, LoRA) is f32 — so element-wise work runs at f32 speed
    /// instead of converting every value. Only for a bf16 model on the CPU.
    pub fn autocast_bf16(&mut self) -> Result<()> {
        if self.weights_dtype() != DType::BF16 || !self.device.is_cpu() {
            return Ok(());
        }
        for b in &mut self.blocks {
            b.attn_norm = b.attn_norm.to_dtype(DType::F32)?;
            b.mlp_norm = b.mlp_norm.to_dtype(DType::F32)?;
        }
        self.norm = self.norm.to_dtype(DType::F32)?;
        self.dtype = DType::F32;
        Ok(())
    }

    /// The rotary inverse frequencies of one head (length head_dim/2).
    pub(super) fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Every weight under its Hugging Face name (`model.layers.0.self_attn.q_proj.weight`, ...),
    /// dense f32 (quantized weights are dequantized); `lm_head.weight` only when not tied.
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let f32 = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?) };
        let mut out = vec![("model.embed_tokens.weight".to_string(), f32(&self.embed)?)];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), f32(&b.attn_norm)?));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                f32(&b.mlp_norm)?,
            ));
            for t in Target::ALL {
                let (name, lin) = (t.path(), b.linear(t));
                out.push((format!("{p}.{name}.weight"), lin.dense_weight()?));
                if let Some(bias) = &lin.bias {
                    out.push((format!("{p}.{name}.bias"), f32(bias)?));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), f32(&self.norm)?));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.dense_weight()?));
        }
        Ok(out)
    }

    pub(super) fn rms_norm(&self, x: &Tensor, weight: &Tensor, pass: Pass) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        Ok(if pass.train && weight.is_variable() {
            // A norm weight being trained: the composed op, which differentiates the weight too.
            candle_nn::ops::rms_norm_slow(x, weight, eps)?
        } else if pass.train {
            super::fused::rms_norm(x, weight, eps)?
        } else {
            if plain_op("rms_norm") {
                candle_nn::ops::rms_norm_slow(x, weight, eps)?
            } else {
                candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)?
            }
        })
    }

    /// One projection of block `layer`, plus its LoRA update when the pass has one.
    pub(super) fn project(
        &self,
        layer: usize,
        target: Target,
        x: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        if let Some(observe) = pass.observe {
            observe(Site::Block(layer, target), x)?;
        }
        let lin = self.blocks[layer].linear(target);
        // Training a dense base without dropout: the base product and the update in one op.
        if pass.train && pass.dropout.is_none_or(|d| d.p == 0.0) {
            if let Some((adapter, pair)) =
                pass.adapter.and_then(|a| Some((a, a.pair(layer, target)?)))
            {
                if let Some(y) = lin.forward_frozen_lora(
                    x,
                    pair.a.as_tensor(),
                    pair.b.as_tensor(),
                    adapter.config.scale(),
                )? {
                    return Ok(y);
                }
            }
        }
        let y = if pass.train && pass.weight_grads {
            lin.forward_differentiable(x)?
        } else if pass.train {
            lin.forward_frozen(x)?
        } else {
            lin.forward(x)?
        };
        match pass.adapter.and_then(|a| Some((a, a.pair(layer, target)?))) {
            Some((adapter, pair)) => {
                let dropout = if pass.train { pass.dropout } else { None };
                Ok((y + adapter.delta(pair, x, dropout)?)?)
            }
            None => Ok(y),
        }
    }

    /// Logits for `ids` (B, T) placed after the `cache`'s positions; `pad_mask` (B, S) marks real
    /// tokens with 1 and left padding with 0 (None: no padding).
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        pad_mask: Option<&Tensor>,
        which: Logits,
    ) -> Result<Tensor> {
        self.forward_with(ids, cache, pad_mask, which, Pass::default())
    }

    /// [`Llama::forward_with`] for inference (no dropout), run on a rayon worker thread: the
    /// ~200 parallel matrix-vector products of a generated token then start from inside the pool
    /// instead of each waking a worker and putting the calling thread to sleep until it is done
    /// (a futex round trip per product, measured at ~15% of generation time). Off the CPU the
    /// products run on the device, so the pass stays on the calling thread.
    pub fn forward_in_pool(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        which: Logits,
        adapter: Option<&crate::lora::Adapter>,
    ) -> Result<Tensor> {
        let run = move || {
            let pass = Pass {
                adapter,
                ..Default::default()
            };
            self.forward_with(ids, cache, None, which, pass)
        };
        if rayon::current_thread_index().is_some() || !self.device.is_cpu() {
            run()
        } else {
            rayon::scope(|_| run())
        }
    }

    /// [`Llama::forward`] with an adapter (inference only: `pass.train` must be false).
    pub fn forward_with(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        pad_mask: Option<&Tensor>,
        which: Logits,
        pass: Pass,
    ) -> Result<Tensor> {
        debug_assert!(!pass.train, "use forward_train for training");
        let t = ids.dim(1)?;
        let mut owned = KvCache::default();
        let cache = cache.unwrap_or(&mut owned);
        let past = cache.len();
        if cache.layers.len() < self.blocks.len() {
            cache.layers.resize_with(self.blocks.len(), || None);
        }
        // One new position with no padding: attention reads the cache directly.
        let decode = t == 1 && pad_mask.is_none();
        let (cos, sin) = rope::tables(&self.inv_freq, past, t, self.dtype, &self.device)?;
        let mask = attention_mask(t, past, pad_mask, self.dtype, &self.device)?; // (B|1, 1, T, S)
        let mut x = self.embed(ids)?; // (B, T, C)
        for i in 0..self.blocks.len() {
            x = self.block(i, &x, &cos, &sin, &mask, &mut cache.layers[i], decode, pass)?;
        }
        self.logits(&x, which, pass)
    }

    /// The input (B, T, C) of every block in an inference pass over `ids` (B, T) with no cache
    /// and no padding: where [`Llama::forward_from_block`] picks up. A measure that changes one
    /// block's weights reruns only that block and the ones after it.
    pub fn block_inputs(&self, ids: &Tensor) -> Result<Vec<Tensor>> {
        let t = ids.dim(1)?;
        let (cos, sin) = rope::tables(&self.inv_freq, 0, t, self.dtype, &self.device)?;
        let mask = attention_mask(t, 0, None, self.dtype, &self.device)?;
        let mut x = self.embed(ids)?;
        let mut inputs = Vec::with_capacity(self.blocks.len());
        for i in 0..self.blocks.len() {
            inputs.push(x.clone());
            x = self.block(i, &x, &cos, &sin, &mask, &mut None, false, Pass::default())?;
        }
        Ok(inputs)
    }

    /// The logits of an inference pass that starts at block `start` with that block's input `x`
    /// (B, T, C) — from [`Llama::block_inputs`] — and runs the rest of the network: the same
    /// values [`Llama::forward`] computes when the blocks before `start` are unchanged.
    pub fn forward_from_block(&self, start: usize, x: &Tensor, which: Logits) -> Result<Tensor> {
        let t = x.dim(1)?;
        let (cos, sin) = rope::tables(&self.inv_freq, 0, t, self.dtype, &self.device)?;
        let mask = attention_mask(t, 0, None, self.dtype, &self.device)?;
        let mut x = x.clone();
        for i in start..self.blocks.len() {
            x = self.block(i, &x, &cos, &sin, &mask, &mut None, false, Pass::default())?;
        }
        self.logits(&x, which, Pass::default())
    }

    /// The final norm and output projection of the last block's output `x` (B, T, C), at the
    /// positions `which` asks for: (B, T|1|T−n, V), f32.
    pub(super) fn logits(&self, x: &Tensor, which: Logits, pass: Pass) -> Result<Tensor> {
        let t = x.dim(1)?;
        let x = match which {
            Logits::All => x.clone(),
            Logits::Last => x.narrow(1, t - 1, 1)?,
            Logits::From(n) => x.narrow(1, n.min(t - 1), t - n.min(t - 1))?,
        };
        let x = self.rms_norm(&x, &self.norm, pass)?;
        if let Some(observe) = pass.observe {
            observe(Site::Output, &x)?;
        }
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// The training forward pass: `ids` (B, T) at `positions` (B·T, restarting per packed
    /// example), attending causally within equal `segments` (B·T; None: the whole row); returns
    /// the logits (N, V) of the flat positions `rows` (B·T indices) only, since the output
    /// projection is the most expensive layer and only label positions need it.
    pub fn forward_train(
        &self,
        ids: &Tensor,
        positions: &[u32],
        segments: Option<&[u32]>,
        rows: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        let inputs = self.train_inputs(ids, positions, segments)?;
        let mut x = self.embed(ids)?;
        for i in 0..self.blocks.len() {
            x = self.train_block(i, &x, &inputs, pass)?;
        }
        self.train_logits(&x, rows, pass)
    }

    /// What every block of a training pass over `ids` (B, T) reads besides its input: the
    /// rotary tables at `positions` and the mask of `segments`.
    pub(super) fn train_inputs(
        &self,
        ids: &Tensor,
        positions: &[u32],
        segments: Option<&[u32]>,
    ) -> Result<TrainInputs> {
        let (b, t) = ids.dims2()?;
        let (cos, sin) = rope::tables_at(&self.inv_freq, positions, self.dtype, &self.device)?;
        let half = self.config.head_dim / 2;
        Ok(TrainInputs {
            cos: cos.reshape((b, 1, t, half))?,
            sin: sin.reshape((b, 1, t, half))?,
            mask: segment_mask(b, t, segments, self.dtype, &self.device)?, // (B|1, 1, T, T)
            segments: segments.map(<[u32]>::to_vec),
        })
    }

    /// Block `i` of a training pass: (B, T, C) → (B, T, C).
    pub(super) fn train_block(
        &self,
        i: usize,
        x: &Tensor,
        inputs: &TrainInputs,
        pass: Pass,
    ) -> Result<Tensor> {
        let TrainInputs {
            cos,
            sin,
            mask,
            segments,
        } = inputs;
        let layout = Some(TrainLayout {
            segments: segments.as_deref(),
        });
        self.block(
            i,
            x,
            cos,
            sin,
            mask,
            &mut None,
            false,
            Pass { layout, ..pass },
        )
    }

    /// The training pass after the last block: the final norm and output projection of the
    /// flat positions `rows` of `x` (B, T, C) only → (N, V), f32.
    pub(super) fn train_logits(&self, x: &Tensor, rows: &Tensor, pass: Pass) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let x = x.reshape((b * t, c))?.index_select(rows, 0)?; // (N, C)
        let x = self.rms_norm(&x, &self.norm, pass)?;
        if let Some(observe) = pass.observe {
            observe(Site::Output, &x)?;
        }
        let logits = if pass.train && pass.weight_grads {
            self.lm_head.forward_differentiable(&x)?
        } else if pass.train {
            self.lm_head.forward_frozen(&x)?
        } else {
            self.lm_head.forward(&x)?
        };
        Ok(logits.to_dtype(DType::F32)?) // (N, V)
    }

    /// Token embeddings: (B, T) → (B, T, C).
    pub(super) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .to_dtype(self.dtype)?
            .reshape((b, t, self.config.hidden_size))?)
    }

    /// Block `i`: attention then MLP, each with a residual connection. (B, T, C) → (B, T, C).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        i: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: &mut Option<LayerCache>,
        decode: bool,
        pass: Pass,
    ) -> Result<Tensor> {
        let block = &self.blocks[i];
        let h = self.rms_norm(x, &block.attn_norm, pass)?;
        let a = self.attention(i, &h, cos, sin, mask, cache, decode, pass)?;
        let x = (x + a)?;
        let h = self.rms_norm(&x, &block.mlp_norm, pass)?;
        let gate = self.project(i, Target::Gate, &h, pass)?; // (B, T, F)
        let up = self.project(i, Target::Up, &h, pass)?;
        let act = swiglu(&gate, &up, pass)?;
        let m = self.project(i, Target::Down, &act, pass)?; // (B, T, C)
        Ok((x + m)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: &mut Option<LayerCache>,
        decode: bool,
        pass: Pass,
    ) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let q = self.project(layer, Target::Q, h, pass)?;
        let k = self.project(layer, Target::K, h, pass)?;
        let v = self.project(layer, Target::V, h, pass)?;
        let (q, k, v) = self.heads(&q, &k, &v, b, t, cos, sin, pass)?;
        let (k, v) = if pass.train {
            (k, v)
        } else {
            LayerCache::append(cache, &k, &v)? // (B, Hkv, S, D)
        };
        let out = self.attend(&q, &k, &v, mask, cache.as_ref(), decode, pass)?;
        self.project(layer, Target::O, &out, pass)
    }

    /// The projected queries, keys and values (B, T, H·D) split into heads and rotated:
    /// q (B, Hq, T, D), k and v (B, Hkv, T, D).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn heads(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        b: usize,
        t: usize,
        cos: &Tensor,
        sin: &Tensor,
        pass: Pass,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (hq, hkv, d) = (
            self.config.num_attention_heads,
            self.config.num_key_value_heads,
            self.config.head_dim,
        );
        let q = q.reshape((b, t, hq, d))?.transpose(1, 2)?; // (B, Hq, T, D)
        let k = k.reshape((b, t, hkv, d))?.transpose(1, 2)?; // (B, Hkv, T, D)
        let v = v.reshape((b, t, hkv, d))?.transpose(1, 2)?.contiguous()?;
        // Training tables are per row (B, 1, T, D/2), which only the plain-ops rotation takes.
        let (q, k) = if pass.train || cos.rank() == 4 {
            match (
                super::fused::rope(&q, cos, sin),
                super::fused::rope(&k, cos, sin),
            ) {
                (Ok(q), Ok(k)) => (q, k),
                _ => (
                    rope::apply_differentiable(&q, cos, sin)?,
                    rope::apply_differentiable(&k, cos, sin)?,
                ),
            }
        } else if plain_op("rope") {
            (
                rope::apply_differentiable(&q, cos, sin)?,
                rope::apply_differentiable(&k, cos, sin)?,
            )
        } else {
            (rope::apply(&q, cos, sin)?, rope::apply(&k, cos, sin)?)
        };
        Ok((q, k, v))
    }

    /// Attention of the rotated queries `q` (B, Hq, T, D) over keys and values (B, Hkv, S, D),
    /// before the output projection: (B, T, Hq·D). With `decode` (one position, no padding) and
    /// a cache [`decode_attention`] can read, it reads the cache directly.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        cache: Option<&LayerCache>,
        decode: bool,
        pass: Pass,
    ) -> Result<Tensor> {
        let (b, hq, t, d) = q.dims4()?;
        let hkv = self.config.num_key_value_heads;
        let scale = 1.0 / (d as f64).sqrt();
        if let Some(c) = cache.filter(|c| decode && c.decodable()) {
            if !plain_op("attention") {
                return decode_attention(q, c, scale as f32); // (1, 1, Hq·D)
            }
        }
        // Training on the CPU: the fused attention, which keeps no (T, S) matrices.
        if let Some(layout) = pass.layout.filter(|_| pass.train) {
            if super::flash_attention::applies(q, k) && !plain_op("flash_attention") {
                let out =
                    super::flash_attention::attention(q, k, v, layout.segments, scale as f32)?;
                return Ok(out.transpose(1, 2)?.reshape((b, t, hq * d))?);
            }
        }
        // Grouped-query attention without copying keys and values per query head: the `group`
        // query heads sharing a key/value head are stacked along the time axis,
        // (B, Hq, T, D) → (B, Hkv, group·T, D), and multiplied with that head at once.
        let group = hq / hkv;
        let s_len = k.dim(2)?;
        let q = q.contiguous()?.reshape((b, hkv, group * t, d))?;
        let scores = q
            .matmul(&k.t()?.contiguous()?)? // (B, Hkv, group·T, S)
            .reshape((b, hq, t, s_len))?; // (B, Hq, T, S)
        let probs = if pass.train {
            super::fused::masked_softmax(&scores, scale, mask)?
        } else {
            let logits = (scores * scale)?.broadcast_add(mask)?;
            if plain_op("softmax") {
                candle_nn::ops::softmax(&logits, D::Minus1)?
            } else {
                candle_nn::ops::softmax_last_dim(&logits)?
            }
        };
        let out = probs
            .reshape((b, hkv, group * t, s_len))?
            .matmul(&v.contiguous()?)? // (B, Hkv, group·T, D)
            .reshape((b, hq, t, d))?; // (B, Hq, T, D)
        Ok(out.transpose(1, 2)?.reshape((b, t, hq * d))?) // (B, T, Hq·D)
    }
}

/// SiLU(gate) · up, the MLP's activation (B, T, F).
pub(super) fn swiglu(gate: &Tensor, up: &Tensor, pass: Pass) -> Result<Tensor> {
    Ok(if pass.train {
        super::fused::swiglu(gate, up)?
    } else if plain_op("silu") {
        (((gate.neg()?.exp()? + 1.0)?.recip()? * gate)? * up)?
    } else {
        (candle_nn::ops::silu(gate)? * up)?
    })
}

/// Whether inference runs `op` (rms_norm, rope, softmax, silu, attention, or all) composed from plain
/// operations instead of candle's fused kernel, as `TUNELAB_PLAIN_OPS=rope,softmax` asks: a
/// diagnostic for a device or dtype where a kernel misbehaves (the training pass composes them
/// anyway off the CPU).
fn plain_op(op: &str) -> bool {
    static OPS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    OPS.get_or_init(|| {
        std::env::var("TUNELAB_PLAIN_OPS")
            .map(|v| v.split(',').map(|o| o.trim().to_string()).collect())
            .unwrap_or_default()
    })
    .iter()
    .any(|o| o == op || o == "all")
}

/// Additive mask (B|1, 1, T, S): 0 where query i may see key j (j ≤ past + i, and j not padding),
/// a large negative number elsewhere.
pub fn attention_mask(
    t: usize,
    past: usize,
    pad_mask: Option<&Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let s = past + t;
    /// Large enough to zero a softmax term, small enough to stay finite in f16.
    const MASKED: f32 = -1e4;
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j <= past + i { 0.0 } else { MASKED }))
        .collect();
    let mut mask = Tensor::from_vec(causal, (1, 1, t, s), device)?;
    if let Some(pad) = pad_mask {
        let (b, ps) = pad.dims2()?;
        debug_assert_eq!(ps, s);
        let pad = pad.to_dtype(DType::F32)?.reshape((b, 1, 1, s))?;
        let pad_add = ((pad - 1.0)? * (-MASKED as f64))?; // 0 for real tokens, MASKED for padding
        mask = mask.broadcast_add(&pad_add)?;
    }
    Ok(mask.to_dtype(dtype)?)
}

/// Additive training mask (B|1, 1, T, T): causal, and when `segments` (B·T) is given, position j
/// is visible from i only when both belong to the same segment (LLaMA-Factory's neat packing).
pub fn segment_mask(
    b: usize,
    t: usize,
    segments: Option<&[u32]>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    const MASKED: f32 = -1e4;
    let mask = match segments {
        None => attention_mask(t, 0, None, DType::F32, device)?,
        Some(seg) => {
            let mut m = vec![MASKED; b * t * t];
            for r in 0..b {
                let s = &seg[r * t..(r + 1) * t];
                for i in 0..t {
                    for j in 0..=i {
                        if s[i] == s[j] {
                            m[(r * t + i) * t + j] = 0.0;
                        }
                    }
                }
            }
            Tensor::from_vec(m, (b, 1, t, t), device)?
        }
    };
    Ok(mask.to_dtype(dtype)?)
}

/// Row-wise log-softmax of logits (…, V), in f32.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(
        &logits.to_dtype(DType::F32)?,
        D::Minus1,
    )?)
}
