//! The key/value cache of inference, and attention for one new token read straight from it.
//!
//! Per block, keys and values of every position so far live in buffers with room to grow
//! (B, Hkv, capacity, D), doubled when full, so a new token is written in place; concatenating
//! tensors instead copied the whole history of every block at every token (with a transposed
//! copy for the scores on top: ~10% of SmolLM2's generation time).
//!
//! [`decode_attention`] is attention for a single query position with no padding (generation
//! after the prompt) on the CPU in f32: per query head, the scores against the cached keys of its
//! key/value head, softmax, and the weighted sum of the cached values, without building the
//! (B, H, T, S) tensors the general path multiplies. Tested against the general path.

use candle_core::{DType, Device, Storage, Tensor};

use crate::error::Result;

/// Keys and values of the positions seen so far, per block.
#[derive(Debug, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<LayerCache>>,
}

/// One block's keys and values: positions `0..len` of buffers (B, Hkv, capacity, D).
#[derive(Debug)]
pub struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl Clone for KvCache {
    /// A copy that owns its buffers (appending to one never shows in the other).
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|c| LayerCache {
                    k: c.k.copy().expect("copying a cache buffer"),
                    v: c.v.copy().expect("copying a cache buffer"),
                    len: c.len,
                })
            })
            .collect();
        KvCache { layers }
    }
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |c| c.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.layers.clear();
    }
}

/// Smallest capacity a buffer starts with.
const MIN_CAPACITY: usize = 64;

impl LayerCache {
    /// Append `k` and `v` (B, Hkv, T, D) to `slot` (starting it when empty); returns every cached
    /// position's keys and values, (B, Hkv, S, D) views of the buffers.
    pub fn append(
        slot: &mut Option<LayerCache>,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        let len = slot.as_ref().map_or(0, |c| c.len);
        let capacity = slot.as_ref().map_or(0, |c| c.k.dim(2).unwrap_or(0));
        if len + t > capacity {
            let grown = (2 * capacity).max(len + t).max(MIN_CAPACITY);
            let k_buf = Tensor::zeros((b, h, grown, d), k.dtype(), k.device())?;
            let v_buf = Tensor::zeros((b, h, grown, d), v.dtype(), v.device())?;
            if let Some(old) = slot.as_ref() {
                k_buf.slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                v_buf.slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            *slot = Some(LayerCache {
                k: k_buf,
                v: v_buf,
                len,
            });
        }
        let cache = slot.as_mut().expect("started above");
        cache.k.slice_set(&k.contiguous()?, 2, len)?;
        cache.v.slice_set(&v.contiguous()?, 2, len)?;
        cache.len = len + t;
        Ok((
            cache.k.narrow(2, 0, cache.len)?,
            cache.v.narrow(2, 0, cache.len)?,
        ))
    }

    /// Whether [`decode_attention`] can read this cache.
    pub fn decodable(&self) -> bool {
        matches!(self.k.device(), Device::Cpu)
            && self.k.dtype() == DType::F32
            && self.k.dim(0).is_ok_and(|b| b == 1)
    }
}

/// The f32 contents of a CPU tensor that is one contiguous buffer.
fn cpu_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Attention of one query position `q` (1, Hq, 1, D), already rotated, over every cached
/// position of `cache` (batch 1, no padding, CPU f32); returns (1, 1, Hq·D).
pub fn decode_attention(q: &Tensor, cache: &LayerCache, scale: f32) -> Result<Tensor> {
    let (_, hq, _, d) = q.dims4()?;
    let (_, hkv, capacity, _) = cache.k.dims4()?;
    let group = hq / hkv;
    let s_len = cache.len;
    let q = cpu_f32(q)?;
    let (k_guard, _) = cache.k.storage_and_layout();
    let (v_guard, _) = cache.v.storage_and_layout();
    let (Storage::Cpu(k_store), Storage::Cpu(v_store)) = (&*k_guard, &*v_guard) else {
        unreachable!("decodable() checked the device")
    };
    // The buffers are made by `append` (contiguous, offset 0).
    let keys = k_store.as_slice::<f32>()?;
    let values = v_store.as_slice::<f32>()?;
    let mut out = vec![0f32; hq * d];
    let mut probs = vec![0f32; s_len];
    for head in 0..hq {
        let kv = head / group;
        let base = kv * capacity * d;
        let qh = &q[head * d..(head + 1) * d];
        let mut max = f32::NEG_INFINITY;
        for (s, p) in probs.iter_mut().enumerate() {
            let key = &keys[base + s * d..base + (s + 1) * d];
            *p = super::matvec_f32::dot(qh, key) * scale;
            max = max.max(*p);
        }
        let mut total = 0f32;
        for p in probs.iter_mut() {
            *p = (*p - max).exp();
            total += *p;
        }
        let oh = &mut out[head * d..(head + 1) * d];
        for (s, p) in probs.iter().enumerate() {
            let value = &values[base + s * d..base + (s + 1) * d];
            let w = p / total;
            for (o, v) in oh.iter_mut().zip(value) {
                *o += w * v;
            }
        }
    }
    Ok(Tensor::from_vec(out, (1, 1, hq * d), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoadOptions, Logits};

    /// Token by token through the cache (the prompt, then single positions read by
    /// `decode_attention`, past the first growth of the buffers) gives the logits of one pass
    /// over the whole sequence.
    #[test]
    fn cached_decoding_matches_the_full_pass() {
        let model = crate::model::load("tiny", &LoadOptions::default()).unwrap();
        let ids: Vec<u32> = (0..80u32).map(|i| (i * 7919) % 500 + 3).collect();
        let all = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let full = model.llama.forward(&all, None, None, Logits::All).unwrap(); // (1, T, V)
        let mut cache = KvCache::default();
        let prompt = all.narrow(1, 0, 5).unwrap();
        model
            .llama
            .forward(&prompt, Some(&mut cache), None, Logits::Last)
            .unwrap();
        let mut worst = 0f32;
        for pos in 5..ids.len() {
            let one = all.narrow(1, pos, 1).unwrap();
            let step = model
                .llama
                .forward(&one, Some(&mut cache), None, Logits::Last)
                .unwrap();
            let want = full.narrow(1, pos, 1).unwrap();
            let diff = (step - &want).unwrap().abs().unwrap().max_all().unwrap();
            worst = worst.max(diff.to_scalar::<f32>().unwrap());
        }
        assert_eq!(cache.len(), ids.len());
        assert!(worst < 1e-4, "largest logit difference {worst}");
    }

    #[test]
    fn a_cloned_cache_is_independent() {
        let model = crate::model::load("tiny", &LoadOptions::default()).unwrap();
        let run = |cache: &mut KvCache, id: u32| {
            let t = Tensor::new(&[[id]], &Device::Cpu).unwrap();
            model
                .llama
                .forward(&t, Some(cache), None, Logits::Last)
                .unwrap()
        };
        let prompt = Tensor::new(&[[5u32, 6, 7]], &Device::Cpu).unwrap();
        let mut cache = KvCache::default();
        model
            .llama
            .forward(&prompt, Some(&mut cache), None, Logits::Last)
            .unwrap();
        let mut copy = cache.clone();
        run(&mut cache, 9); // position 3 of the original
        run(&mut copy, 11); // position 3 of the copy: must not overwrite the original's
        let after = run(&mut cache, 13);
        let mut fresh = KvCache::default();
        model
            .llama
            .forward(&prompt, Some(&mut fresh), None, Logits::Last)
            .unwrap();
        run(&mut fresh, 9);
        let want = run(&mut fresh, 13);
        let diff = (after - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!((cache.len(), copy.len()), (5, 4));
    }
}
