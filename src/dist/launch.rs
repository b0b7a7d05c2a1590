//! `tunelab launch --nproc-per-node N -- run script.rhai`: start N ranks of a tunelab command on
//! this machine, as `torchrun --nproc-per-node N --no-python tunelab …` would.
//!
//! CPU ranks talk over MPI, whose own launcher wires them together, so this launcher starts the
//! ranks through `mpirun` and supervises it: Ctrl-C is passed on once (each rank then stops
//! after its current step and rank 0 keeps a checkpoint), a rank that fails makes mpirun end the
//! job, and the launcher exits with the job's status. Several nodes are mpirun's or Slurm's job:
//! `mpirun -np 8 --hostfile hosts tunelab run x.rhai`, or `srun --mpi=pmix -n 8 tunelab run x.rhai`.

use std::process::Command;
use std::time::Duration;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};

/// What `tunelab launch` was asked for (torchrun's flag names).
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// The `mpirun` command line that starts `options.nproc_per_node` ranks of `exe args`.
pub fn mpirun_command(options: &LaunchOptions, exe: &str, args: &[String]) -> Result<Vec<String>> {
    if options.nproc_per_node == 0 {
        return Err(Error::msg("launch: --nproc-per-node must be at least 1"));
    }
    if options.nnodes > 1 {
        return Err(Error::msg(format!(
            "launch: --nnodes {}: CPU ranks on several nodes are started by MPI's own launcher, which knows the hosts: `mpirun -np {} --hostfile HOSTS {exe} {}` or, under Slurm, `srun --mpi=pmix -n {} {exe} {}`",
            options.nnodes,
            options.nnodes * options.nproc_per_node,
            args.join(" "),
            options.nnodes * options.nproc_per_node,
            args.join(" ")
        )));
    }
    if args.is_empty() {
        return Err(Error::msg(
            "launch: name the tunelab command each rank runs after --, e.g. tunelab launch --nproc-per-node 2 -- run script.rhai",
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd: Vec<String> = vec![
        "mpirun".into(),
        "-np".into(),
        options.nproc_per_node.to_string(),
    ];
    // Each rank runs cores/N threads of its own; pinning a rank to one core would starve them.
    cmd.extend(["--bind-to".into(), "none".into()]);
    if options.nproc_per_node > cores {
        cmd.push("--oversubscribe".into());
    }
    // Open MPI refuses to run as root unless told (containers and CI machines often are root).
    if unsafe { libc::geteuid() } == 0 {
        cmd.push("--allow-run-as-root".into());
    }
    for var in ["MASTER_ADDR", "MASTER_PORT"] {
        cmd.extend(["-x".into(), var.into()]);
    }
    cmd.push(exe.to_string());
    cmd.extend(args.iter().cloned());
    Ok(cmd)
}

/// Start the ranks and supervise them until the job ends; returns its exit status.
pub fn launch(options: &LaunchOptions, args: &[String], cancel: &CancelToken) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::io("the tunelab executable", e))?;
    let cmd = mpirun_command(options, &exe.to_string_lossy(), args)?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(&cmd[0])
            .args(&cmd[1..])
            .env("MASTER_ADDR", &options.master_addr)
            .env("MASTER_PORT", options.master_port.to_string())
            // A group of its own: the terminal's Ctrl-C reaches the launcher alone, which passes
            // it on once (two would make each rank quit without its checkpoint).
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::msg(format!(
                    "launch: could not start mpirun ({e}); install Open MPI (Debian: apt install openmpi-bin)"
                ))
            })?
    };
    let group = child.id() as i32;
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::io("mpirun", e))? {
            return Ok(status.code().unwrap_or(1));
        }
        if cancel.is_cancelled() && !forwarded {
            // To the ranks, not to mpirun: mpirun ends a job it is interrupted in at once,
            // while a rank stops after its step and rank 0 keeps a checkpoint.
            let ranks = children_of(group);
            if ranks.is_empty() {
                unsafe { libc::kill(-group, libc::SIGINT) };
            }
            for pid in ranks {
                unsafe { libc::kill(pid, libc::SIGINT) };
            }
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The processes whose parent is `parent` (Linux's /proc; empty elsewhere).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (name) state ppid …": the name may hold spaces and parentheses.
            let after = &stat[stat.rfind(')')? + 1..];
            let ppid: i32 = after.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(n: usize, nodes: usize) -> LaunchOptions {
        LaunchOptions {
            nproc_per_node: n,
            nnodes: nodes,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
        }
    }

    #[test]
    fn ranks_start_through_mpirun_with_the_command_after_the_dashes() {
        let args = vec!["run".to_string(), "x.rhai".to_string()];
        let cmd = mpirun_command(&options(2, 1), "/bin/tunelab", &args).unwrap();
        assert_eq!(&cmd[..3], ["mpirun", "-np", "2"]);
        assert!(cmd.windows(2).any(|w| w == ["--bind-to", "none"]));
        assert_eq!(&cmd[cmd.len() - 3..], ["/bin/tunelab", "run", "x.rhai"]);
        let many = mpirun_command(&options(1000, 1), "t", &args).unwrap();
        assert!(many.contains(&"--oversubscribe".to_string()));
    }

    #[test]
    fn a_process_is_found_among_its_parents_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        assert!(children_of(me).contains(&(child.id() as i32)));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn several_nodes_and_missing_commands_are_explained() {
        let args = vec!["run".to_string(), "x.rhai".to_string()];
        let e = mpirun_command(&options(4, 2), "tunelab", &args).unwrap_err();
        assert!(e.to_string().contains("mpirun -np 8 --hostfile"), "{e}");
        let e = mpirun_command(&options(2, 1), "tunelab", &[]).unwrap_err();
        assert!(e.to_string().contains("after --"), "{e}");
        assert!(mpirun_command(&options(0, 1), "tunelab", &args).is_err());
    }
}
