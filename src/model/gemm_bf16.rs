//! bf16 matrix products on CPUs with AVX512-BF16: C = A·B with A and B in bfloat16 and the
//! sums in f32, as PyTorch's bf16 autocast computes a linear layer on such a CPU.
//!
//! The instruction (`vdpbf16ps`) multiplies *pairs* of bf16 values and adds both products to one
//! f32 lane, so the two values of a pair must be neighbours along the summed dimension. A's rows
//! already are (a row-major (M, R) matrix summed over R); B is packed once per product so that
//! each 32-bit word holds B[2p][c] and B[2p+1][c], in panels of 48 columns (three registers).
//! The kernel keeps an 8 × 48 block of C in 24 registers and, per pair of R, loads three words
//! of B and broadcasts one word of A per row: 24 multiply-adds per 11 loads.
//!
//! [`matmul_reference`] is the plain triple loop the fast kernel is tested against. Callers ask
//! [`available`] first; without the instructions they use candle's matmul.
//!
//! Shapes: A (M, R) row-major; B (R, C) as [`PackedB`]; C (M, C) row-major.

use half::bf16;
use rayon::prelude::*;

/// Columns of C per panel: three 16-lane registers.
const PANEL: usize = 48;
/// Rows of C per kernel call.
const ROWS: usize = 8;
/// Rows of C per parallel task (several kernel calls share a panel of B from cache).
const TASK_ROWS: usize = 64;

/// Whether this CPU has the instructions (checked once). `TUNELAB_NO_BF16_KERNEL=1` answers no,
/// to try the fallback on a CPU that has them.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            std::env::var_os("TUNELAB_NO_BF16_KERNEL").is_none_or(|v| v != "1")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// B (R, C) rearranged for the kernel: panels of 48 columns, each a run of R/2 (rounded up)
/// rows of 48 words, word c of row p holding B[2p][c] (low half) and B[2p+1][c] (high half).
/// Columns past C and the row past an odd R are zeros.
#[derive(Debug)]
pub struct PackedB {
    words: Vec<u32>,
    pairs: usize,
    cols: usize,
}

impl PackedB {
    /// B = Wᵀ for a row-major `w` of shape (C, R): the weight of `x Wᵀ`.
    pub fn transposed(w: &[bf16], cols: usize, rows: usize) -> PackedB {
        assert_eq!(w.len(), cols * rows, "PackedB::transposed: shape");
        PackedB::pack(rows, cols, |r, c| w[c * rows + r])
    }

    /// B itself, row-major of shape (R, C): the weight of the backward `g W`.
    pub fn rows(w: &[bf16], rows: usize, cols: usize) -> PackedB {
        assert_eq!(w.len(), cols * rows, "PackedB::rows: shape");
        PackedB::pack(rows, cols, |r, c| w[r * cols + c])
    }

    fn pack(rows: usize, cols: usize, at: impl Fn(usize, usize) -> bf16 + Sync) -> PackedB {
        let pairs = rows.div_ceil(2);
        let panels = cols.div_ceil(PANEL);
        let mut words = vec![0u32; panels * pairs * PANEL];
        words
            .par_chunks_mut(pairs * PANEL)
            .enumerate()
            .for_each(|(panel, out)| {
                for p in 0..pairs {
                    for j in 0..PANEL {
                        let c = panel * PANEL + j;
                        if c >= cols {
                            break;
                        }
                        let low = at(2 * p, c).to_bits() as u32;
                        let high = if 2 * p + 1 < rows {
                            at(2 * p + 1, c).to_bits() as u32
                        } else {
                            0
                        };
                        out[p * PANEL + j] = low | (high << 16);
                    }
                }
            });
        PackedB { words, pairs, cols }
    }

    /// R, the summed dimension.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// `values` rounded to bf16 (nearest even), in parallel.
pub fn to_bf16(values: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; values.len()];
    out.par_chunks_mut(1 << 14)
        .zip(values.par_chunks(1 << 14))
        .for_each(|(o, v)| {
            #[cfg(target_arch = "x86_64")]
            if available() {
                // SAFETY: the instructions are there; both slices hold v.len() values.
                unsafe { round_chunk(v, o) };
                return;
            }
            for (o, v) in o.iter_mut().zip(v) {
                *o = bf16::from_f32(*v);
            }
        });
    out
}

/// [`to_bf16`]'s inner loop, 16 values per instruction (`vcvtneps2bf16`: nearest even, as
/// half's `from_f32` for finite values).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_chunk(values: &[f32], out: &mut [bf16]) {
    use std::arch::x86_64::*;
    let whole = values.len() / 16 * 16;
    for i in (0..whole).step_by(16) {
        let v = _mm512_loadu_ps(values.as_ptr().add(i));
        let r: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, r);
    }
    for i in whole..values.len() {
        out[i] = half::bf16::from_f32(values[i]);
    }
}

/// C = A·B in f32 the plain way: A (M, R) row-major, B given by `b(r, c)`.
pub fn matmul_reference(
    a: &[bf16],
    m: usize,
    r: usize,
    c: usize,
    b: impl Fn(usize, usize) -> bf16,
) -> Vec<f32> {
    let mut out = vec![0f32; m * c];
    for i in 0..m {
        for j in 0..c {
            let mut sum = 0f32;
            for k in 0..r {
                sum += a[i * r + k].to_f32() * b(k, j).to_f32();
            }
            out[i * c + j] = sum;
        }
    }
    out
}

/// What the kernel writes C as.
pub trait Output: Copy + Default + Send + Sync {
    /// Store 16 sums at `dst`, the first `n` of them (n ≤ 16).
    ///
    /// # Safety
    /// `dst` must be valid for `n` writes; the CPU must have AVX512-BF16.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store(dst: *mut Self, sums: std::arch::x86_64::__m512, n: usize);
}

impl Output for f32 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store(dst: *mut f32, sums: std::arch::x86_64::__m512, n: usize) {
        use std::arch::x86_64::*;
        if n == 16 {
            _mm512_storeu_ps(dst, sums);
        } else {
            _mm512_mask_storeu_ps(dst, ((1u32 << n) - 1) as u16, sums);
        }
    }
}

impl Output for bf16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn store(dst: *mut bf16, sums: std::arch::x86_64::__m512, n: usize) {
        use std::arch::x86_64::*;
        // Round to nearest even, as half::bf16::from_f32 and PyTorch do.
        let packed: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(sums));
        _mm256_mask_storeu_epi16(dst as *mut i16, ((1u32 << n) - 1) as u16, packed);
    }
}

/// C = A·B: A (M, R) row-major bf16, B packed with R rows; C (M, B's columns) in `T`.
/// Panics if the CPU lacks the instructions (ask [`available`]) or the shapes disagree.
pub fn matmul<T: Output>(a: &[bf16], m: usize, b: &PackedB) -> Vec<T> {
    assert!(available(), "gemm_bf16::matmul needs AVX512-BF16");
    let r = a.len() / m.max(1);
    assert!(
        a.len() == m * r && r.div_ceil(2) == b.pairs,
        "gemm_bf16::matmul: shapes"
    );
    let mut out = vec![T::default(); m * b.cols];
    #[cfg(target_arch = "x86_64")]
    out.par_chunks_mut(TASK_ROWS * b.cols)
        .enumerate()
        .for_each(|(task, c)| {
            let first = task * TASK_ROWS;
            let rows = c.len() / b.cols;
            // SAFETY: `available()` was checked; the slices hold the rows and columns used.
            unsafe { task_rows(&a[first * r..(first + rows) * r], rows, r, b, c) };
        });
    out
}

/// One task: `rows` rows of A and C, every panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn task_rows<T: Output>(a: &[bf16], rows: usize, r: usize, b: &PackedB, c: &mut [T]) {
    let panels = b.cols.div_ceil(PANEL);
    for panel in 0..panels {
        let b_panel = &b.words[panel * b.pairs * PANEL..(panel + 1) * b.pairs * PANEL];
        let width = (b.cols - panel * PANEL).min(PANEL);
        let mut i = 0;
        while i < rows {
            let n = (rows - i).min(ROWS);
            let c_block = c.as_mut_ptr().add(i * b.cols + panel * PANEL);
            let a_block = a.as_ptr().add(i * r);
            match n {
                8 => kernel::<T, 8>(a_block, r, b_panel, c_block, b.cols, width),
                7 => kernel::<T, 7>(a_block, r, b_panel, c_block, b.cols, width),
                6 => kernel::<T, 6>(a_block, r, b_panel, c_block, b.cols, width),
                5 => kernel::<T, 5>(a_block, r, b_panel, c_block, b.cols, width),
                4 => kernel::<T, 4>(a_block, r, b_panel, c_block, b.cols, width),
                3 => kernel::<T, 3>(a_block, r, b_panel, c_block, b.cols, width),
                2 => kernel::<T, 2>(a_block, r, b_panel, c_block, b.cols, width),
                _ => kernel::<T, 1>(a_block, r, b_panel, c_block, b.cols, width),
            }
            i += n;
        }
    }
}

/// An MR × 48 block of C (only its first `width` columns written) from MR rows of A (each `r`
/// long, starting at `a`) and one panel of B.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn kernel<T: Output, const MR: usize>(
    a: *const bf16,
    r: usize,
    b_panel: &[u32],
    c: *mut T,
    c_stride: usize,
    width: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 3]; MR];
    let full_pairs = r / 2;
    let b = b_panel.as_ptr();
    for p in 0..full_pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * PANEL) as *const _));
        let b1: __m512bh =
            std::mem::transmute(_mm512_loadu_si512(b.add(p * PANEL + 16) as *const _));
        let b2: __m512bh =
            std::mem::transmute(_mm512_loadu_si512(b.add(p * PANEL + 32) as *const _));
        for (i, acc) in acc.iter_mut().enumerate() {
            // The pair A[i][2p], A[i][2p+1] as one 32-bit word, in every lane.
            let word = (a.add(i * r + 2 * p) as *const u32).read_unaligned();
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], ai, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], ai, b1);
            acc[2] = _mm512_dpbf16_ps(acc[2], ai, b2);
        }
    }
    if r % 2 == 1 {
        // The last row of A alone; B's packed high halves there are zeros.
        let p = full_pairs;
        let bs = [0, 16, 32].map(|o| {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                b.add(p * PANEL + o) as *const _
            ))
        });
        for (i, acc) in acc.iter_mut().enumerate() {
            let word = (*a.add(i * r + 2 * p)).to_bits() as u32;
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
            for (s, bv) in acc.iter_mut().zip(bs) {
                *s = _mm512_dpbf16_ps(*s, ai, bv);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let row = c.add(i * c_stride);
        for (v, sums) in acc.iter().enumerate() {
            let n = width.saturating_sub(v * 16).min(16);
            if n > 0 {
                T::store(row.add(v * 16), *sums, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<bf16> {
        (0..n)
            .map(|i| {
                let x = ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32;
                bf16::from_f32(x * 2.0 - 1.0)
            })
            .collect()
    }

    /// Sums of products of bf16 values agree with the plain loop to f32 summation order.
    fn close(fast: &[f32], slow: &[f32], r: usize) {
        assert_eq!(fast.len(), slow.len());
        for (i, (f, s)) in fast.iter().zip(slow).enumerate() {
            assert!((f - s).abs() <= 1e-5 * r as f32, "element {i}: {f} vs {s}");
        }
    }

    #[test]
    fn the_kernel_agrees_with_the_plain_loop_for_every_edge() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        // Rows not a multiple of 8 or 64, columns not of 48, an odd and an even summed length.
        for (m, r, c) in [
            (1, 1, 1),
            (13, 7, 50),
            (70, 64, 96),
            (9, 33, 17),
            (130, 576, 49),
        ] {
            let a = values(m * r, 1);
            let w = values(c * r, 2); // (C, R): B = Wᵀ
            let fast: Vec<f32> = matmul(&a, m, &PackedB::transposed(&w, c, r));
            close(
                &fast,
                &matmul_reference(&a, m, r, c, |k, j| w[j * r + k]),
                r,
            );
            let b = values(r * c, 3); // (R, C) as it is
            let fast: Vec<f32> = matmul(&a, m, &PackedB::rows(&b, r, c));
            close(
                &fast,
                &matmul_reference(&a, m, r, c, |k, j| b[k * c + j]),
                r,
            );
            // f32 rows rounded on the way in (autocast) give the same sums as bf16 rows.
            let a32: Vec<f32> = a.iter().map(|v| v.to_f32() + 1e-4 * v.to_f32()).collect();
            assert_eq!(
                to_bf16(&a32),
                a32.iter().map(|v| bf16::from_f32(*v)).collect::<Vec<_>>()
            );
            // bf16 output: the f32 result rounded to nearest even.
            let rounded: Vec<bf16> = matmul(&a, m, &PackedB::rows(&b, r, c));
            for (x, y) in rounded.iter().zip(&fast) {
                assert_eq!(*x, bf16::from_f32(*y));
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// The fastest of 10 runs of `f`, in seconds.
    fn best(mut f: impl FnMut()) -> f64 {
        (0..10)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    }

    /// `cargo test --release --lib gemm_bf16::speed -- --ignored --nocapture`: the kernel's rate
    /// and the packing's cost at SmolLM2's MLP shape (batch 4 × 256 tokens).
    #[test]
    #[ignore]
    fn rate_at_smollm2_shapes() {
        if !available() {
            return;
        }
        let (m, k, n) = (1024, 576, 1536);
        let a = vec![bf16::from_f32(0.5); m * k];
        let w = vec![bf16::from_f32(0.25); n * k];
        let x = vec![0.5f32; m * k];
        let pack_t = best(|| drop(std::hint::black_box(PackedB::transposed(&w, n, k))));
        let pack_r = best(|| drop(std::hint::black_box(PackedB::rows(&w, n, k))));
        let convert = best(|| drop(std::hint::black_box(to_bf16(&x))));
        let packed = PackedB::transposed(&w, n, k);
        let product = best(|| drop(std::hint::black_box(matmul::<f32>(&a, m, &packed))));
        eprintln!(
            "pack (transposed) {:.2} ms, pack (rows) {:.2} ms, f32→bf16 {:.2} ms, matmul {:.2} ms = {:.1} GMAC/s",
            pack_t * 1e3,
            pack_r * 1e3,
            convert * 1e3,
            product * 1e3,
            (m * n * k) as f64 / product / 1e9
        );
    }
}
