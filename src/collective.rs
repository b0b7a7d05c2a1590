//! The collective operations a data-parallel run needs, and the one this process joined.
//!
//! Training (`crate::train`) sums its gradients over every rank through a [`Collective`]; the
//! engines that implement it (MPI between CPU processes, NCCL between GPUs) live in `crate::dist`,
//! a floor above, which installs one here at start-up ([`install`]). Code on any floor asks
//! [`current`]: `None` is a single process, and everything then runs exactly as it always did.
//!
//! Every rank must call the same operations in the same order with the same sizes; a mismatch
//! would hang a real engine, so the trainer checks what the ranks agree on before its first step.

use std::sync::OnceLock;

use candle_core::Tensor;

use crate::error::Result;

/// One process's handle on a group of `world` cooperating processes.
pub trait Collective: Send + Sync {
    /// This process's place, 0 ≤ rank < world.
    fn rank(&self) -> usize;
    /// How many processes take part.
    fn world(&self) -> usize;
    /// The engine's name for messages ("mpi", "nccl").
    fn engine(&self) -> &'static str;
    /// The element-wise sum over all ranks of a 1-D f32 or f64 tensor (the same length and dtype
    /// on every rank); every rank receives the sum.
    fn all_reduce_sum(&self, values: &Tensor) -> Result<Tensor>;
    /// Every rank's `values` (the same length on every rank), in rank order.
    fn all_gather(&self, values: &[u64]) -> Result<Vec<Vec<u64>>>;
    /// Wait until every rank has arrived.
    fn barrier(&self) -> Result<()>;
}

static CURRENT: OnceLock<Box<dyn Collective>> = OnceLock::new();

/// Make `collective` this process's group (once, at start-up; a second call is ignored and
/// returns false).
pub fn install(collective: Box<dyn Collective>) -> bool {
    CURRENT.set(collective).is_ok()
}

/// The group this process joined, if it runs as one of several ranks.
pub fn current() -> Option<&'static dyn Collective> {
    CURRENT.get().map(|c| c.as_ref())
}

static GPU: OnceLock<usize> = OnceLock::new();

/// Record the GPU this rank was given (by the NCCL engine, at start-up): a model loaded on
/// `"cuda"` without an ordinal goes there.
pub fn set_gpu(ordinal: usize) {
    let _ = GPU.set(ordinal);
}

/// The GPU this rank was given, if any.
pub fn gpu() -> Option<usize> {
    GPU.get().copied()
}

/// This process's rank and the world size: (0, 1) for a single process.
pub fn rank_and_world() -> (usize, usize) {
    current().map_or((0, 1), |c| (c.rank(), c.world()))
}

/// Whether this process writes files and prints: rank 0, or a single process.
pub fn is_main() -> bool {
    rank_and_world().0 == 0
}

/// Several ranks as threads of one process, for tests of the code above (the real engines are in
/// `crate::dist`): each call posts this rank's values on a shared board and returns once every
/// rank has posted. Sums are taken in rank order in f32, as an engine would.
pub mod in_process {
    use super::*;
    use candle_core::DType;
    use std::sync::{Arc, Barrier, Mutex};

    /// The state the simulated ranks share.
    pub struct Board {
        world: usize,
        barrier: Barrier,
        slots: Mutex<Vec<Vec<f64>>>,
    }

    /// One simulated rank.
    pub struct ThreadRank {
        pub rank: usize,
        pub board: Arc<Board>,
    }

    /// `world` ranks sharing one board.
    pub fn group(world: usize) -> Vec<ThreadRank> {
        let board = Arc::new(Board {
            world,
            barrier: Barrier::new(world),
            slots: Mutex::new(vec![Vec::new(); world]),
        });
        (0..world)
            .map(|rank| ThreadRank {
                rank,
                board: board.clone(),
            })
            .collect()
    }

    impl ThreadRank {
        fn exchange(&self, mine: Vec<f64>) -> Vec<Vec<f64>> {
            self.board.slots.lock().unwrap()[self.rank] = mine;
            self.board.barrier.wait();
            let all = self.board.slots.lock().unwrap().clone();
            self.board.barrier.wait();
            all
        }
    }

    impl Collective for ThreadRank {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            self.board.world
        }
        fn engine(&self) -> &'static str {
            "in-process"
        }
        fn all_reduce_sum(&self, values: &Tensor) -> Result<Tensor> {
            let all = self.exchange(values.to_dtype(DType::F64)?.to_vec1::<f64>()?);
            let sum = match values.dtype() {
                DType::F32 => {
                    let s: Vec<f32> = (0..all[0].len())
                        .map(|i| all.iter().map(|v| v[i] as f32).sum())
                        .collect();
                    Tensor::from_vec(s, values.dims(), values.device())?
                }
                _ => {
                    let s: Vec<f64> = (0..all[0].len())
                        .map(|i| all.iter().map(|v| v[i]).sum())
                        .collect();
                    Tensor::from_vec(s, values.dims(), values.device())?.to_dtype(values.dtype())?
                }
            };
            Ok(sum)
        }
        fn all_gather(&self, values: &[u64]) -> Result<Vec<Vec<u64>>> {
            let all = self.exchange(values.iter().map(|&v| f64::from_bits(v)).collect());
            Ok(all
                .into_iter()
                .map(|v| v.into_iter().map(f64::to_bits).collect())
                .collect())
        }
        fn barrier(&self) -> Result<()> {
            self.board.barrier.wait();
            Ok(())
        }
    }
}
