//! The NCCL engine (feature `nccl`): data-parallel ranks on GPUs, one process per GPU, started by
//! torchrun, `srun` or `tunelab launch`.
//!
//! Rank `r` uses GPU `LOCAL_RANK mod (visible GPUs)` (under `srun --gpus-per-task=1` each task
//! sees one GPU, its device 0). Rank 0 creates NCCL's unique id and hands it to the others over
//! the [`rendezvous`](super::rendezvous); each rank then joins the communicator on candle's own
//! stream for that GPU, so NCCL's sums queue behind the kernels that computed the gradients with
//! no extra synchronisation (as mistral.rs does). Sums run in place on a device copy of the
//! buffer; host values (evaluation sums, the agreement hashes) are copied to the GPU and back.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaContext;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, DType, Device, InplaceOp1, Layout, Tensor};

use super::env::Launch;
use super::rendezvous;
use super::watchdog::{timeout_from_env, Watchdog};
use crate::collective::Collective;
use crate::error::{Error, Result};

/// This process's place among the GPU ranks.
pub struct NcclGroup {
    rank: usize,
    world: usize,
    device: Device,
    comm: Mutex<Comm>,
    watchdog: Watchdog,
}

// SAFETY: `Comm` holds NCCL's communicator pointer, which NCCL allows to be used from any thread
// as long as calls on it do not overlap; every call here goes through the `Mutex`.
unsafe impl Send for NcclGroup {}
unsafe impl Sync for NcclGroup {}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::msg(format!(
        "NCCL {what} failed ({e:?}); rerun with NCCL_DEBUG=INFO to see why (in a sandbox try NCCL_CUMEM_ENABLE=0)"
    ))
}

/// The GPU ordinal rank `local_rank` uses when `count` GPUs are visible.
pub fn gpu_for(local_rank: usize, count: usize) -> usize {
    local_rank % count.max(1)
}

/// Join the GPU ranks of `launch`.
pub fn start(launch: &Launch) -> Result<NcclGroup> {
    let count = CudaContext::device_count().map_err(|e| {
        Error::msg(format!(
            "this rank asks for NCCL but no GPU answers ({e:?}); on CPUs run the ranks under MPI (TUNELAB_DIST_ENGINE=mpi)"
        ))
    })? as usize;
    if count == 0 {
        return Err(Error::msg(
            "this rank asks for NCCL but sees no GPU; on CPUs run the ranks under MPI (TUNELAB_DIST_ENGINE=mpi)",
        ));
    }
    if launch.world > launch.local_world && launch.master_addr.is_none() {
        return Err(Error::msg(format!(
            "{} ranks on several machines need MASTER_ADDR (rank 0's host) and MASTER_PORT in every rank's environment",
            launch.world
        )));
    }
    let ordinal = gpu_for(launch.local_rank, count);
    crate::collective::set_gpu(ordinal);
    let device = crate::model::cuda_device(ordinal)?;
    let Device::Cuda(cuda) = &device else {
        unreachable!("cuda_device opens a CUDA device")
    };
    let timeout = timeout_from_env();
    let agent_store = std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v == "True");
    let (host, port) = rendezvous::address(launch, agent_store);
    let id = if launch.rank == 0 {
        let id = Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
        let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
        rendezvous::serve(port, launch.world, &bytes, timeout)?;
        id
    } else {
        let bytes = rendezvous::call(&host, port, launch.rank, launch.world, timeout)?;
        let internal: [std::ffi::c_char; 128] = bytes
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| Error::msg("rendezvous: rank 0 sent an NCCL id that is not 128 bytes"))?;
        Id::uninit(internal)
    };
    let watchdog = Watchdog::start(launch.rank, timeout);
    let comm = {
        let _timed = watchdog.watch("joining the NCCL communicator");
        Comm::from_rank(cuda.cuda_stream(), launch.rank, launch.world, id)
            .map_err(|e| nccl_error("ncclCommInitRank", e))?
    };
    Ok(NcclGroup {
        rank: launch.rank,
        world: launch.world,
        device,
        comm: Mutex::new(comm),
        watchdog,
    })
}

/// The in-place sum of a contiguous device buffer over the ranks.
struct SumInPlace<'a> {
    comm: &'a Comm,
}

impl InplaceOp1 for SumInPlace<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("the NCCL sum runs on GPU buffers only")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            candle_core::bail!("the NCCL sum needs a contiguous buffer from its start");
        }
        let failed = |e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}"));
        match storage.dtype() {
            DType::F32 => {
                let slice = storage.as_cuda_slice_mut::<f32>()?;
                self.comm
                    .all_reduce_in_place(slice, &ReduceOp::Sum)
                    .map_err(failed)?;
            }
            DType::F64 => {
                let slice = storage.as_cuda_slice_mut::<f64>()?;
                self.comm
                    .all_reduce_in_place(slice, &ReduceOp::Sum)
                    .map_err(failed)?;
            }
            DType::BF16 => {
                let slice = storage.as_cuda_slice_mut::<half::bf16>()?;
                self.comm
                    .all_reduce_in_place(slice, &ReduceOp::Sum)
                    .map_err(failed)?;
            }
            other => candle_core::bail!("the NCCL sum takes f32, f64 or bf16, not {other:?}"),
        }
        Ok(())
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn engine(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&self, values: &Tensor) -> Result<Tensor> {
        let _timed = self.watchdog.watch("an all-reduce");
        self.sum(values)
    }

    fn all_gather(&self, values: &[u64]) -> Result<Vec<Vec<u64>>> {
        if values.is_empty() {
            // Nothing to send (and a zero-byte device allocation is an error).
            return Ok(vec![Vec::new(); self.world]);
        }
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        let _timed = self.watchdog.watch("an all-gather");
        let stream = comm.stream();
        let send = stream
            .clone_htod(values)
            .map_err(|e| nccl_error("copy to the GPU", e))?;
        let mut all = stream
            .alloc_zeros::<u64>(values.len() * self.world)
            .map_err(|e| nccl_error("alloc", e))?;
        comm.all_gather(&send, &mut all)
            .map_err(|e| nccl_error("ncclAllGather", e))?;
        let all = stream
            .clone_dtoh(&all)
            .map_err(|e| nccl_error("copy from the GPU", e))?;
        Ok(all
            .chunks(values.len().max(1))
            .map(<[u64]>::to_vec)
            .collect())
    }

    fn barrier(&self) -> Result<()> {
        // NCCL has no barrier: a one-value sum waits for every rank just the same. Not watched:
        // a script's barrier may wait while rank 0 exports for minutes.
        let one = Tensor::new(&[1f32], &Device::Cpu)?;
        self.sum(&one).map(|_| ())
    }
}

impl NcclGroup {
    /// The sum over the ranks, unwatched (a barrier may wait as long as the slowest rank works).
    fn sum(&self, values: &Tensor) -> Result<Tensor> {
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        // A fresh contiguous copy on this rank's GPU (the caller's tensor stays as it was).
        let buffer = values.to_device(&self.device)?.copy()?;
        buffer.inplace_op1(&SumInPlace { comm: &comm })?;
        // Wait here (under the caller's watchdog, if any) rather than at the next read.
        self.device.synchronize()?;
        Ok(buffer.to_device(values.device())?)
    }
}
