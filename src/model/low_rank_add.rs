//! y += s · U·V in place, for a product of low rank: U (M, r) and V (r, N) with r small, as
//! LoRA's update `(x Aᵀ) Bᵀ` and its backward `(g B) A` are (r = the adapter's rank).
//!
//! A general matrix product with an inner dimension of 8 spends its time writing its (M, N)
//! result, not multiplying, and the LoRA layer would then allocate that result only to add it
//! to the frozen product. Here each row of y takes r scaled rows of V where it lies, rows in
//! parallel, compiled for AVX-512 or AVX2 where the CPU has them (the same operations in the
//! same order on every CPU: a multiply and an add, never a fused multiply-add).
//!
//! [`add_low_rank_reference`] is the plain loop the fast one is tested against.

use rayon::prelude::*;

use super::vec_exp::dispatch;

/// Rows of y per parallel task: 16 rows of 1536 values are 96 KiB.
const TASK_ROWS: usize = 16;

/// y (M, N) += scale · u (M, r) · v (r, N), all row-major. Panics if the lengths disagree.
pub fn add_low_rank(y: &mut [f32], u: &[f32], v: &[f32], rank: usize, scale: f32) {
    let (m, n) = shape(y, u, v, rank);
    if m == 0 || n == 0 {
        return;
    }
    y.par_chunks_mut(TASK_ROWS * n)
        .zip(u.par_chunks(TASK_ROWS * rank))
        .for_each(|(y, u)| {
            dispatch(
                #[inline(always)]
                || {
                    for (y, u) in y.chunks_exact_mut(n).zip(u.chunks_exact(rank)) {
                        for (&c, v) in u.iter().zip(v.chunks_exact(n)) {
                            let c = c * scale;
                            for (y, v) in y.iter_mut().zip(v) {
                                *y += c * v;
                            }
                        }
                    }
                },
            )
        });
}

/// [`add_low_rank`] one value at a time.
pub fn add_low_rank_reference(y: &mut [f32], u: &[f32], v: &[f32], rank: usize, scale: f32) {
    let (m, n) = shape(y, u, v, rank);
    for i in 0..m {
        for j in 0..n {
            for t in 0..rank {
                y[i * n + j] += (scale * u[i * rank + t]) * v[t * n + j];
            }
        }
    }
}

/// (M, N) from the lengths, checked.
fn shape(y: &[f32], u: &[f32], v: &[f32], rank: usize) -> (usize, usize) {
    assert!(
        rank > 0 && v.len().is_multiple_of(rank),
        "add_low_rank: v is not (rank, N)"
    );
    let n = v.len() / rank;
    let m = y.len().checked_div(n).unwrap_or(0);
    assert!(
        y.len() == m * n && u.len() == m * rank,
        "add_low_rank: y (M, N), u (M, r) and v (r, N) disagree"
    );
    (m, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                h as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn agrees_with_the_plain_loop_bit_for_bit() {
        // Rows across task boundaries, widths not a multiple of 16, ranks 1 and 8.
        for (m, n, r) in [(1, 1, 1), (17, 33, 8), (40, 96, 3), (5, 1536, 8)] {
            let (u, v) = (values(m * r, 1), values(r * n, 2));
            let mut fast = values(m * n, 3);
            let mut slow = fast.clone();
            add_low_rank(&mut fast, &u, &v, r, 0.75);
            add_low_rank_reference(&mut slow, &u, &v, r, 0.75);
            // The same operations in the same order: equal to the last bit.
            assert_eq!(fast, slow, "({m}, {n}, rank {r})");
        }
    }

    #[test]
    #[should_panic(expected = "disagree")]
    fn refuses_shapes_that_disagree() {
        add_low_rank(&mut [0.0; 6], &[0.0; 3], &[0.0; 4], 2, 1.0);
    }
}
