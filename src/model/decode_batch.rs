//! One generation step for many sequences at once: each row is one sequence's next token, its
//! own KV cache and its own LoRA adapter (or none). The weight products run once for the whole
//! batch — the weights are read from memory once per step instead of once per sequence, which is
//! where batching gets its throughput — while attention, rotary positions and adapter updates
//! run per row, since each row has its own history length and adapter.
//!
//! Batch invariance: a row's logits are bit for bit those of [`super::Llama::forward_in_pool`]
//! decoding that sequence alone, whatever else is in the batch. The products' kernels compute
//! each activation row on its own for up to [`FUSED_MAX_ROWS`] rows (more would switch to a
//! GEMM with a different summation order), so larger batches are cut into chunks of that many;
//! adapter updates are computed one row at a time, as a lone sequence computes them.

use candle_core::Tensor;

use super::kv_cache::{KvCache, LayerCache};
use super::linear::FUSED_MAX_ROWS;
use super::llama::{attention_mask, swiglu, Llama, Logits, Pass};
use super::rope;
use crate::error::Result;
use crate::lora::{Adapter, Target};

/// One sequence's part of a decoding step.
pub struct DecodeRow<'a> {
    /// The token to feed (the one sampled at the previous step).
    pub token: u32,
    /// The sequence's cache, holding every earlier position; the new one is appended.
    pub cache: &'a mut KvCache,
    /// The adapter this sequence runs with.
    pub adapter: Option<&'a Adapter>,
}

impl Llama {
    /// Feed each row's token at the position after its cache; returns each row's logits (V
    /// values, f32), in row order.
    pub fn decode_batch(&self, rows: &mut [DecodeRow]) -> Result<Vec<Vec<f32>>> {
        let run = |rows: &mut [DecodeRow]| -> Result<Vec<Vec<f32>>> {
            let mut out = Vec::with_capacity(rows.len());
            for chunk in rows.chunks_mut(FUSED_MAX_ROWS) {
                out.extend(self.decode_chunk(chunk)?);
            }
            Ok(out)
        };
        // As forward_in_pool: start the many small products from inside the thread pool.
        if rayon::current_thread_index().is_some() || !self.device.is_cpu() {
            run(rows)
        } else {
            rayon::scope(|_| run(rows))
        }
    }

    /// [`Llama::decode_batch`] for at most [`FUSED_MAX_ROWS`] rows.
    fn decode_chunk(&self, rows: &mut [DecodeRow]) -> Result<Vec<Vec<f32>>> {
        let b = rows.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let pass = Pass::default();
        let ids: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let ids = Tensor::from_vec(ids, (b, 1), &self.device)?;
        // Per row: rotary tables and an all-visible mask at its own position.
        let mut positions = Vec::with_capacity(b);
        for row in rows.iter_mut() {
            let past = row.cache.len();
            if row.cache.layers.len() < self.blocks.len() {
                row.cache.layers.resize_with(self.blocks.len(), || None);
            }
            let (cos, sin) = rope::tables(self.inv_freq(), past, 1, self.dtype, &self.device)?;
            let mask = attention_mask(1, past, None, self.dtype, &self.device)?;
            positions.push((cos, sin, mask));
        }
        let adapters: Vec<Option<&Adapter>> = rows.iter().map(|r| r.adapter).collect();
        let mut x = self.embed(&ids)?; // (B, 1, C)
        for layer in 0..self.blocks.len() {
            let block = &self.blocks[layer];
            let h = self.rms_norm(&x, &block.attn_norm, pass)?;
            let q = self.project_rows(layer, Target::Q, &h, &adapters)?;
            let k = self.project_rows(layer, Target::K, &h, &adapters)?;
            let v = self.project_rows(layer, Target::V, &h, &adapters)?;
            let mut outs = Vec::with_capacity(b);
            for (r, row) in rows.iter_mut().enumerate() {
                let (cos, sin, mask) = &positions[r];
                let (qr, kr, vr) = self.heads(
                    &q.narrow(0, r, 1)?,
                    &k.narrow(0, r, 1)?,
                    &v.narrow(0, r, 1)?,
                    1,
                    1,
                    cos,
                    sin,
                    pass,
                )?;
                let slot = &mut row.cache.layers[layer];
                let (k_all, v_all) = LayerCache::append(slot, &kr, &vr)?;
                outs.push(self.attend(&qr, &k_all, &v_all, mask, slot.as_ref(), true, pass)?);
            }
            let attended = Tensor::cat(&outs, 0)?; // (B, 1, Hq·D)
            let a = self.project_rows(layer, Target::O, &attended, &adapters)?;
            x = (x + a)?;
            let h = self.rms_norm(&x, &block.mlp_norm, pass)?;
            let gate = self.project_rows(layer, Target::Gate, &h, &adapters)?;
            let up = self.project_rows(layer, Target::Up, &h, &adapters)?;
            let act = swiglu(&gate, &up, pass)?;
            let m = self.project_rows(layer, Target::Down, &act, &adapters)?;
            x = (x + m)?;
        }
        let logits = self.logits(&x, Logits::Last, pass)?; // (B, 1, V)
        Ok(logits.squeeze(1)?.to_vec2::<f32>()?)
    }

    /// Projection `target` of block `layer` for rows `x` (B, 1, in): the base product for all
    /// rows at once, then each row's adapter update computed for that row alone.
    fn project_rows(
        &self,
        layer: usize,
        target: Target,
        x: &Tensor,
        adapters: &[Option<&Adapter>],
    ) -> Result<Tensor> {
        let y = self.project(layer, target, x, Pass::default())?;
        let adapted = |a: &Option<&Adapter>| a.is_some_and(|a| a.pair(layer, target).is_some());
        if !adapters.iter().any(adapted) {
            return Ok(y);
        }
        let mut rows = Vec::with_capacity(adapters.len());
        for (r, adapter) in adapters.iter().enumerate() {
            let yr = y.narrow(0, r, 1)?;
            rows.push(
                match adapter.and_then(|a| Some((a, a.pair(layer, target)?))) {
                    Some((a, pair)) => (yr + a.delta(pair, &x.narrow(0, r, 1)?, None)?)?,
                    None => yr,
                },
            );
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraConfig;
    use crate::model::LoadOptions;
    use candle_core::Device;

    /// Decode `tokens` after `prompt` alone through forward_in_pool; the logits of each step.
    fn alone(
        llama: &Llama,
        prompt: &[u32],
        tokens: &[u32],
        adapter: Option<&Adapter>,
    ) -> Vec<Vec<f32>> {
        let mut cache = KvCache::default();
        let ids = Tensor::new(prompt, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        llama
            .forward_in_pool(&ids, Some(&mut cache), Logits::Last, adapter)
            .unwrap();
        tokens
            .iter()
            .map(|&t| {
                let ids = Tensor::new(&[[t]], &Device::Cpu).unwrap();
                let l = llama
                    .forward_in_pool(&ids, Some(&mut cache), Logits::Last, adapter)
                    .unwrap();
                l.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect()
    }

    /// Rows of different lengths, with and without an adapter, in batches larger than a chunk:
    /// each row's logits equal, bit for bit, those of its sequence decoded alone.
    #[test]
    fn each_row_matches_its_sequence_decoded_alone() {
        let model = crate::model::load("tiny", &LoadOptions::default()).unwrap();
        let llama = &model.llama;
        let config = LoraConfig {
            rank: 4,
            ..Default::default()
        };
        let mut adapter = Adapter::new(llama, config, 7, "tiny").unwrap();
        // A fresh adapter's B is zero; give it values so the update shows.
        for (_, var) in adapter.named_vars() {
            let noise = Tensor::randn(0f32, 0.05, var.shape(), &Device::Cpu).unwrap();
            var.set(&noise).unwrap();
        }
        adapter.template = None;
        let n = FUSED_MAX_ROWS + 3;
        let prompts: Vec<Vec<u32>> = (0..n)
            .map(|i| {
                (0..3 + i as u32 % 5)
                    .map(|j| 3 + (i as u32 * 31 + j * 7) % 200)
                    .collect()
            })
            .collect();
        let steps: Vec<Vec<u32>> = (0..n)
            .map(|i| (0..3).map(|j| 5 + (i as u32 * 13 + j * 17) % 150).collect())
            .collect();
        let uses = |i: usize| (i % 3 == 1).then_some(&adapter);
        let mut caches: Vec<KvCache> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut cache = KvCache::default();
                let ids = Tensor::new(p.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                llama
                    .forward_in_pool(&ids, Some(&mut cache), Logits::Last, uses(i))
                    .unwrap();
                cache
            })
            .collect();
        let mut batched: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
        let per_step: Vec<Vec<u32>> = (0..3)
            .map(|j| steps.iter().map(|s| s[j]).collect())
            .collect();
        for tokens in &per_step {
            let mut rows: Vec<DecodeRow> = caches
                .iter_mut()
                .enumerate()
                .map(|(i, cache)| DecodeRow {
                    token: tokens[i],
                    cache,
                    adapter: uses(i),
                })
                .collect();
            for (i, logits) in llama
                .decode_batch(&mut rows)
                .unwrap()
                .into_iter()
                .enumerate()
            {
                batched[i].push(logits);
            }
        }
        for i in 0..n {
            let want = alone(llama, &prompts[i], &steps[i], uses(i));
            assert!(
                batched[i] == want,
                "row {i} differs from its sequence alone"
            );
        }
        // The adapter changed what its rows computed.
        assert!(alone(llama, &prompts[1], &steps[1], None) != batched[1]);
    }
}
