//! Dot products of Q4_1, Q5_0 and Q5_1 weights with 8-bit activations (Q8_1, Q8_0, Q8_1 blocks),
//! for the ggml-mode products (`ggml::ggml_matmul`). candle dots these three formats with
//! scalar code on x86, bit by bit out of the packed bytes, which made a whole-text `quant_report`
//! with `activations: "ggml"` take minutes per preset. Here each weight row is unpacked once
//! into 32 small integer codes per block and then dotted with every activation row of a band as
//! plain integer arrays, which the compiler vectorizes (with AVX2 where the CPU has it).
//!
//! The sums are formed exactly as candle's (ggml's reference) scalar kernels form them, the
//! integer sum per block and then `sumi · d_w · d_a (+ m_w · s_a)` block after block, so the
//! results are bit-identical to `GgmlType::vec_dot` (tested).

use crate::ggml::blocks::f16_at;
use candle_core::quantized::GgmlDType;

/// One of the three formats, with its byte layout and its activation partner's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dot32 {
    /// d, m (f16), 16 bytes of 4-bit codes; activations in Q8_1 (d, s = d·Σq, 32 codes).
    Q4_1,
    /// d (f16), 4 bytes of fifth bits, 16 bytes of 4-bit codes, centred on 16; Q8_0 activations.
    Q5_0,
    /// d, m (f16), 4 bytes of fifth bits, 16 bytes of 4-bit codes; Q8_1 activations.
    Q5_1,
}

/// Codes per block.
const QK: usize = 32;

impl Dot32 {
    pub fn of(dtype: GgmlDType) -> Option<Dot32> {
        match dtype {
            GgmlDType::Q4_1 => Some(Dot32::Q4_1),
            GgmlDType::Q5_0 => Some(Dot32::Q5_0),
            GgmlDType::Q5_1 => Some(Dot32::Q5_1),
            _ => None,
        }
    }

    /// Bytes of one weight block.
    pub fn block_bytes(self) -> usize {
        match self {
            Dot32::Q4_1 => 20,
            Dot32::Q5_0 => 22,
            Dot32::Q5_1 => 24,
        }
    }

    /// Bytes of one activation block: Q8_0 (d, 32 codes) or Q8_1 (d, s, 32 codes).
    pub fn activation_bytes(self) -> usize {
        match self {
            Dot32::Q5_0 => 34,
            Dot32::Q4_1 | Dot32::Q5_1 => 36,
        }
    }
}

/// Blocks unpacked: 32 codes per block, each block's scale, and its second term: for a weight row
/// the minimum `m` (0 for Q5_0), for activation rows the Q8_1 sum `s` (0 for Q8_0).
#[derive(Default)]
pub struct Unpacked {
    codes: Vec<i8>,
    scale: Vec<f32>,
    min: Vec<f32>,
}

impl Unpacked {
    /// Unpack the weight row `bytes` (whole blocks of `kind`) into this buffer.
    pub fn unpack_weights(&mut self, kind: Dot32, bytes: &[u8]) {
        let blocks = bytes.len() / kind.block_bytes();
        self.codes.resize(blocks * QK, 0);
        self.scale.clear();
        self.min.clear();
        for (block, codes) in bytes
            .chunks_exact(kind.block_bytes())
            .zip(self.codes.chunks_exact_mut(QK))
        {
            self.scale.push(f16_at(block, 0));
            let (high, low, offset) = match kind {
                Dot32::Q4_1 => (0u32, &block[4..20], 0i32),
                Dot32::Q5_0 => (
                    u32::from_le_bytes(block[2..6].try_into().unwrap()),
                    &block[6..22],
                    16,
                ),
                Dot32::Q5_1 => (
                    u32::from_le_bytes(block[4..8].try_into().unwrap()),
                    &block[8..24],
                    0,
                ),
            };
            self.min.push(if kind == Dot32::Q5_0 {
                0.0
            } else {
                f16_at(block, 2)
            });
            for (j, &byte) in low.iter().enumerate() {
                let fifth_0 = ((high >> j) & 1) << 4;
                let fifth_1 = ((high >> (j + 16)) & 1) << 4;
                codes[j] = (((byte & 0x0F) as u32 | fifth_0) as i32 - offset) as i8;
                codes[j + QK / 2] = (((byte >> 4) as u32 | fifth_1) as i32 - offset) as i8;
            }
        }
    }

    /// Unpack activation rows (`bytes`: whole Q8_0 or Q8_1 blocks, as `kind` dots with): their
    /// codes, each block's scale, and for Q8_1 each block's `s` (in `min`).
    pub fn unpack_activations(&mut self, kind: Dot32, bytes: &[u8]) {
        let step = kind.activation_bytes();
        let codes_at = step - QK;
        self.codes.clear();
        self.scale.clear();
        self.min.clear();
        for block in bytes.chunks_exact(step) {
            self.codes
                .extend(block[codes_at..].iter().map(|&b| b as i8));
            self.scale.push(f16_at(block, 0));
            self.min.push(if kind == Dot32::Q5_0 {
                0.0
            } else {
                f16_at(block, 2)
            });
        }
    }

    /// Σ w·x of this unpacked weight row with activation row `row` of `activations` (rows of
    /// as many blocks, from [`Unpacked::unpack_activations`]).
    pub fn dot(&self, kind: Dot32, activations: &Unpacked, row: usize) -> f32 {
        let blocks = self.scale.len();
        let a = ActivationRow {
            codes: &activations.codes[row * blocks * QK..(row + 1) * blocks * QK],
            scale: &activations.scale[row * blocks..(row + 1) * blocks],
            sum: &activations.min[row * blocks..(row + 1) * blocks],
        };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, the only feature `dot_avx2` is compiled for.
            return unsafe { self.dot_avx2(kind, &a) };
        }
        self.dot_body(kind, &a)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn dot_avx2(&self, kind: Dot32, a: &ActivationRow) -> f32 {
        self.dot_body(kind, a)
    }

    #[inline(always)]
    fn dot_body(&self, kind: Dot32, a: &ActivationRow) -> f32 {
        let mut sum = 0f32;
        for (b, (w, x)) in self
            .codes
            .chunks_exact(QK)
            .zip(a.codes.chunks_exact(QK))
            .enumerate()
        {
            let (w, x): (&[i8; QK], &[i8; QK]) = (w.try_into().unwrap(), x.try_into().unwrap());
            let mut sumi = 0i32;
            for i in 0..QK {
                sumi += (w[i] as i16 * x[i] as i16) as i32;
            }
            sum += match kind {
                Dot32::Q5_0 => sumi as f32 * self.scale[b] * a.scale[b],
                Dot32::Q4_1 | Dot32::Q5_1 => {
                    sumi as f32 * self.scale[b] * a.scale[b] + self.min[b] * a.sum[b]
                }
            };
        }
        sum
    }
}

/// One activation row's codes, block scales and (Q8_1) block sums `s`.
struct ActivationRow<'a> {
    codes: &'a [i8],
    scale: &'a [f32],
    sum: &'a [f32],
}
