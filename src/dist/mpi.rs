//! The MPI engine (Open MPI through rsmpi, the `mpi` feature): data-parallel ranks on CPUs, one
//! process per rank, started by `mpirun`, `srun --mpi=pmix` or `tunelab launch`.
//!
//! Collectives run on the thread that called them, one at a time (MPI initialised with
//! `Serialized` threading and a lock here); each is timed by the [`Watchdog`].

use std::sync::Mutex;

use candle_core::{DType, Tensor};
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use super::watchdog::Watchdog;
use crate::collective::Collective;
use crate::error::{Error, Result};

/// This process's place in the MPI world.
pub struct MpiGroup {
    rank: usize,
    world: usize,
    watchdog: Watchdog,
    /// One collective at a time (MPI `Serialized`).
    lock: Mutex<()>,
}

/// Start MPI; the universe finalises MPI when dropped (at the end of `main`).
pub fn start() -> Result<(Universe, MpiGroup)> {
    let (universe, _) = mpi::initialize_with_threading(Threading::Serialized)
        .ok_or_else(|| Error::msg("MPI was already initialised in this process"))?;
    let world = universe.world();
    let group = MpiGroup {
        rank: world.rank() as usize,
        world: world.size() as usize,
        watchdog: Watchdog::start(world.rank() as usize, super::watchdog::timeout_from_env()),
        lock: Mutex::new(()),
    };
    Ok((universe, group))
}

impl MpiGroup {
    fn serial(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collective for MpiGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn engine(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum(&self, values: &Tensor) -> Result<Tensor> {
        let _one = self.serial();
        let _timed = self.watchdog.watch("an all-reduce");
        let world = SimpleCommunicator::world();
        let out = match values.dtype() {
            DType::F64 => {
                let send = values.to_vec1::<f64>()?;
                let mut sum = vec![0f64; send.len()];
                world.all_reduce_into(&send[..], &mut sum[..], SystemOperation::sum());
                Tensor::from_vec(sum, values.dims(), values.device())?
            }
            dtype => {
                let send = values.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let mut sum = vec![0f32; send.len()];
                world.all_reduce_into(&send[..], &mut sum[..], SystemOperation::sum());
                Tensor::from_vec(sum, values.dims(), values.device())?.to_dtype(dtype)?
            }
        };
        Ok(out)
    }

    fn all_gather(&self, values: &[u64]) -> Result<Vec<Vec<u64>>> {
        let _one = self.serial();
        let _timed = self.watchdog.watch("an all-gather");
        let mut all = vec![0u64; values.len() * self.world];
        SimpleCommunicator::world().all_gather_into(values, &mut all[..]);
        Ok(all
            .chunks(values.len().max(1))
            .map(<[u64]>::to_vec)
            .collect())
    }

    fn barrier(&self) -> Result<()> {
        // Not watched: a script's barrier may wait while rank 0 exports for minutes.
        let _one = self.serial();
        SimpleCommunicator::world().barrier();
        Ok(())
    }
}
