//! Beyond one process: data-parallel training on existing engines.
//!
//! - [`env`]: which rank this process is, from torchrun's, mpirun's or Slurm's variables.
//! - [`mpi`]: the MPI engine between CPU processes (feature `mpi`).
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

/// Join the job this process was started in, if any (see the module docs).
pub fn init() -> Result<Session> {
    let Some(launch) = env::from_process()? else {
        return Ok(Session::default());
    };
    if launch.world == 1 {
        return Ok(Session {
            launch: Some(launch),
            ..Default::default()
        });
    }
    share_cores(launch.local_world);
    join(launch)
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
fn join(launch: env::Launch) -> Result<Session> {
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
fn join(launch: env::Launch) -> Result<Session> {
    Err(Error::msg(format!(
        "{} started this process as rank {} of {}, but this tunelab was built without a distributed engine: build it with `cargo build --release --features mpi` (CPU ranks over Open MPI; see docs/distributed.md)",
        launch.launcher.name(),
        launch.rank,
        launch.world
    )))
}
