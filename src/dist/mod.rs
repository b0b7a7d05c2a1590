//! Beyond one process: data-parallel training on existing engines.
//!
//! - [`env`]: which rank this process is, from torchrun's, mpirun's or Slurm's variables.
//! - [`mpi`]: the MPI engine between CPU processes (feature `mpi`).
//! - [`nccl`]: the NCCL engine between GPUs (feature `nccl`); [`rendezvous`]: how its ranks get
//!   rank 0's NCCL id.
//! - [`watchdog`]: a rank that waits too long for the others stops, so the job ends.
//! - [`launch`]: `tunelab launch`, the torchrun-like launcher.
//!
//! [`init`] runs first thing in `main`: for a process started as one of several ranks it joins
//! the engine, installs the group as [`crate::collective::current`] (which training and the
//! script functions `dist_rank()`, `dist_world()`, `is_main()`, `barrier()` use), and shares the
//! node's cores between its ranks. A plain process joins nothing and runs as it always did.

pub mod env;
pub mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;
pub mod watchdog;

use crate::error::{Error, Result};

/// What a rank holds until the end of `main`: dropping it shuts the engine down (MPI_Finalize).
#[derive(Default)]
pub struct Session {
    #[cfg(feature = "mpi")]
    _universe: Option<::mpi::environment::Universe>,
    /// This process's launch, if it is one of several ranks.
    pub launch: Option<env::Launch>,
}

impl Session {
    /// A session that holds no engine of its own.
    fn of(launch: env::Launch) -> Session {
        Session {
            #[cfg(feature = "mpi")]
            _universe: None,
            launch: Some(launch),
        }
    }
}

/// The engines ranks can talk over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Open MPI between CPU processes.
    Mpi,
    /// NCCL between GPUs.
    Nccl,
}

impl Engine {
    /// `TUNELAB_DIST_ENGINE` (`mpi` or `nccl`), if set.
    pub fn from_env() -> Result<Option<Engine>> {
        match std::env::var("TUNELAB_DIST_ENGINE").ok().as_deref() {
            None | Some("") | Some("auto") => Ok(None),
            Some("mpi") => Ok(Some(Engine::Mpi)),
            Some("nccl") => Ok(Some(Engine::Nccl)),
            Some(other) => Err(Error::msg(format!(
                "TUNELAB_DIST_ENGINE={other:?}: use mpi (CPU ranks) or nccl (GPU ranks), or leave it unset"
            ))),
        }
    }

    /// The engine for this build and machine: `TUNELAB_DIST_ENGINE` if set; otherwise NCCL when
    /// it is built in and a GPU is visible, else MPI.
    pub fn choose() -> Result<Engine> {
        Ok(match Engine::from_env()? {
            Some(engine) => engine,
            None if gpus_visible() => Engine::Nccl,
            None => Engine::Mpi,
        })
    }
}

/// Whether this build has NCCL and the machine a GPU for it.
fn gpus_visible() -> bool {
    #[cfg(feature = "nccl")]
    {
        candle_core::cuda_backend::cudarc::driver::CudaContext::device_count().is_ok_and(|n| n > 0)
    }
    #[cfg(not(feature = "nccl"))]
    {
        false
    }
}

/// Join the job this process was started in, if any (see the module docs). A launch of one rank
/// joins only when `TUNELAB_DIST_ENGINE` asks (to check an engine on one device).
pub fn init() -> Result<Session> {
    let Some(launch) = env::from_process()? else {
        return Ok(Session::default());
    };
    if launch.world == 1 && Engine::from_env()?.is_none() {
        return Ok(Session::of(launch));
    }
    match Engine::choose()? {
        Engine::Mpi => {
            share_cores(launch.local_world);
            join_mpi(launch)
        }
        Engine::Nccl => join_nccl(launch),
    }
}

/// Each of a node's ranks gets an equal share of its cores for matrix products, unless the user
/// chose (`RAYON_NUM_THREADS`); run before any thread pool starts.
fn share_cores(local_world: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var(
            "RAYON_NUM_THREADS",
            (cores / local_world.max(1)).max(1).to_string(),
        );
    }
}

#[cfg(feature = "mpi")]
fn join_mpi(launch: env::Launch) -> Result<Session> {
    let (universe, group) = mpi::start()?;
    use crate::collective::Collective;
    if group.world() != launch.world || group.rank() != launch.rank {
        return Err(Error::msg(format!(
            "{} started this process as rank {} of {}, but MPI sees rank {} of {}: {}",
            launch.launcher.name(),
            launch.rank,
            launch.world,
            group.rank(),
            group.world(),
            match launch.launcher {
                env::Launcher::Slurm => "start it with srun --mpi=pmix so that Slurm's tasks form one MPI job",
                _ => "CPU ranks talk over MPI: start them with mpirun -np N, or tunelab launch --nproc-per-node N (which runs mpirun)",
            }
        )));
    }
    crate::collective::install(Box::new(group));
    Ok(Session {
        _universe: Some(universe),
        launch: Some(launch),
    })
}

#[cfg(not(feature = "mpi"))]
fn join_mpi(launch: env::Launch) -> Result<Session> {
    Err(Error::msg(format!(
        "{} started this process as rank {} of {}, but this tunelab was built without MPI, the engine of CPU ranks: build it with `cargo build --release --features mpi` (Open MPI; see docs/distributed.md){}",
        launch.launcher.name(),
        launch.rank,
        launch.world,
        if cfg!(feature = "nccl") { ", or give the ranks GPUs (NCCL)" } else { "" }
    )))
}

#[cfg(feature = "nccl")]
fn join_nccl(launch: env::Launch) -> Result<Session> {
    let group = nccl::start(&launch)?;
    crate::collective::install(Box::new(group));
    Ok(Session::of(launch))
}

#[cfg(not(feature = "nccl"))]
fn join_nccl(launch: env::Launch) -> Result<Session> {
    Err(Error::msg(format!(
        "rank {} of {} asks for NCCL, but this tunelab was built without it: build it with `scripts/build-cuda.sh --features nccl` (see docs/distributed.md)",
        launch.rank, launch.world
    )))
}
