//! Which rank this process is, read from the variables the launchers users already use set.
//!
//! One order covers them (specs/distributed.md §6): torchrun's `RANK`/`WORLD_SIZE` (also what
//! `tunelab launch` sets), then Open MPI's `OMPI_COMM_WORLD_*` and MPICH's `PMI_RANK`/`PMI_SIZE`
//! (mpirun), then Slurm's `SLURM_PROCID`/`SLURM_STEP_NUM_TASKS` (an srun step). None of them: a single process.

use crate::error::{Error, Result};

/// Who started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun, or `tunelab launch` (the same variables).
    Torchrun,
    /// mpirun / mpiexec.
    Mpirun,
    /// Slurm's srun.
    Slurm,
}

impl Launcher {
    pub fn name(self) -> &'static str {
        match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Mpirun => "mpirun",
            Launcher::Slurm => "srun",
        }
    }
}

/// This process's place in a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: usize,
    pub world: usize,
    /// The rank on this node, and how many ranks this node runs.
    pub local_rank: usize,
    pub local_world: usize,
    /// Where rank 0 can be reached (torchrun's `MASTER_ADDR`/`MASTER_PORT`; for Slurm the first
    /// node of the job and 15000 + the job id's last four digits, as Lightning does).
    pub master_addr: Option<String>,
    pub master_port: Option<u16>,
}

/// The launch described by `var` (an environment lookup), or `None` for a plain process.
pub fn discover(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
    let number = |name: &str| -> Result<Option<usize>> {
        match var(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                Error::msg(format!(
                    "environment variable {name}={v:?} is not a whole number; unset it or give the launcher's value"
                ))
            }),
        }
    };
    let launch = if let (Some(rank), Some(world)) = (number("RANK")?, number("WORLD_SIZE")?) {
        Launch {
            launcher: Launcher::Torchrun,
            rank,
            world,
            local_rank: number("LOCAL_RANK")?.unwrap_or(rank),
            local_world: number("LOCAL_WORLD_SIZE")?.unwrap_or(world),
            master_addr: var("MASTER_ADDR"),
            master_port: port(var("MASTER_PORT"))?,
        }
    } else if let (Some(rank), Some(world)) = (
        number("OMPI_COMM_WORLD_RANK")?,
        number("OMPI_COMM_WORLD_SIZE")?,
    ) {
        Launch {
            launcher: Launcher::Mpirun,
            rank,
            world,
            local_rank: number("OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(rank),
            local_world: number("OMPI_COMM_WORLD_LOCAL_SIZE")?.unwrap_or(world),
            master_addr: var("MASTER_ADDR"),
            master_port: port(var("MASTER_PORT"))?,
        }
    } else if let (Some(rank), Some(world)) = (number("PMI_RANK")?, number("PMI_SIZE")?) {
        Launch {
            launcher: Launcher::Mpirun,
            rank,
            world,
            local_rank: number("MPI_LOCALRANKID")?.unwrap_or(rank),
            local_world: number("MPI_LOCALNRANKS")?.unwrap_or(world),
            master_addr: var("MASTER_ADDR"),
            master_port: port(var("MASTER_PORT"))?,
        }
    } else if let (Some(rank), Some(world)) =
        // Only inside an srun step: a batch script also has SLURM_PROCID and SLURM_NTASKS.
        (number("SLURM_PROCID")?, number("SLURM_STEP_NUM_TASKS")?)
    {
        let job = var("SLURM_JOB_ID").unwrap_or_default();
        let digits: String = job.chars().filter(|c| c.is_ascii_digit()).collect();
        let tail = &digits[digits.len().saturating_sub(4)..];
        let default_port = 15000 + tail.parse::<u16>().unwrap_or(0);
        Launch {
            launcher: Launcher::Slurm,
            rank,
            world,
            local_rank: number("SLURM_LOCALID")?.unwrap_or(0),
            local_world: ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"]
                .iter()
                .find_map(|name| leading_number(&var(name)?))
                .unwrap_or(1),
            master_addr: var("MASTER_ADDR")
                .or_else(|| var("SLURM_JOB_NODELIST").map(|l| first_host(&l))),
            master_port: port(var("MASTER_PORT"))?.or(Some(default_port)),
        }
    } else {
        return Ok(None);
    };
    if launch.world == 0 || launch.rank >= launch.world {
        return Err(Error::msg(format!(
            "{} says rank {} of a world of {}: a rank must be below the world size",
            launch.launcher.name(),
            launch.rank,
            launch.world
        )));
    }
    Ok(Some(launch))
}

/// The first count of a Slurm tasks-per-node list: `4(x2),3` → 4.
fn leading_number(text: &str) -> Option<usize> {
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// `MASTER_PORT` as a port number.
fn port(v: Option<String>) -> Result<Option<u16>> {
    v.map(|p| {
        p.trim().parse::<u16>().map_err(|_| {
            Error::msg(format!(
                "environment variable MASTER_PORT={p:?} is not a port number (1-65535)"
            ))
        })
    })
    .transpose()
}

/// The first host of a Slurm node list: `node[05-09,12],gpu1` → `node05`.
pub fn first_host(list: &str) -> String {
    // The first entry ends at the first comma outside brackets.
    let mut depth = 0;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let first = &list[..end];
    match first.split_once('[') {
        None => first.to_string(),
        Some((prefix, range)) => {
            let start: String = range
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            format!("{prefix}{start}")
        }
    }
}

/// What this process's environment says.
pub fn from_process() -> Result<Option<Launch>> {
    discover(&|name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        discover(&|name| map.get(name).cloned())
    }

    #[test]
    fn torchrun_variables_come_first() {
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Torchrun);
        assert_eq!((l.rank, l.world, l.local_rank, l.local_world), (3, 8, 1, 2));
        assert_eq!(l.master_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(l.master_port, Some(29500));
    }

    #[test]
    fn mpirun_mpich_and_slurm_are_recognised() {
        let l = launch(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.launcher, l.rank, l.world), (Launcher::Mpirun, 1, 2));
        let l = launch(&[("PMI_RANK", "0"), ("PMI_SIZE", "4")])
            .unwrap()
            .unwrap();
        assert_eq!((l.launcher, l.world), (Launcher::Mpirun, 4));
        let l = launch(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_STEP_TASKS_PER_NODE", "4(x2)"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_ID", "1234567"),
            ("SLURM_JOB_NODELIST", "gpu[05-09,12],cpu1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.launcher, l.rank, l.local_rank), (Launcher::Slurm, 5, 1));
        assert_eq!(l.local_world, 4);
        // A batch script (no srun step) is a plain process.
        assert_eq!(
            launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")]).unwrap(),
            None
        );
        assert_eq!(l.master_addr.as_deref(), Some("gpu05"));
        assert_eq!(l.master_port, Some(15000 + 4567));
        assert_eq!(launch(&[]).unwrap(), None);
    }

    #[test]
    fn bad_values_are_named() {
        let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("RANK=\"x\""), "{e}");
        let e = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("rank 2 of a world of 2"), "{e}");
        let e =
            launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "99999")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT"), "{e}");
    }

    #[test]
    fn slurm_node_lists_give_their_first_host() {
        assert_eq!(first_host("node1"), "node1");
        assert_eq!(first_host("node1,node2"), "node1");
        assert_eq!(first_host("node[05-09,12]"), "node05");
        assert_eq!(first_host("a[3,4],b[1-2]"), "a3");
    }
}
