//! `tunelab launch --nproc-per-node N -- run script.rhai`: start N ranks of a tunelab command on
//! this machine, as `torchrun --nproc-per-node N --no-python tunelab …` would.
//!
//! - GPU ranks (a build with NCCL on a machine with GPUs): the launcher starts the N processes
//!   itself with torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//!   `MASTER_ADDR`, `MASTER_PORT`, …), one per GPU, on one node or — with `--nnodes`,
//!   `--node-rank`, `--master-addr` — on each of several.
//! - CPU ranks talk over MPI, whose own launcher wires them together, so the launcher starts
//!   them through `mpirun`. Several CPU nodes are mpirun's or Slurm's job:
//!   `mpirun -np 8 --hostfile hosts tunelab run x.rhai`, or `srun --mpi=pmix -n 8 tunelab run x.rhai`.
//!
//! Either way it supervises: Ctrl-C is passed on to each rank once (each stops after its current
//! step and rank 0 keeps a checkpoint); when a rank fails the others are stopped (SIGTERM, then
//! SIGKILL after 10 s); the launcher exits with the first failure's status.

use std::process::Command;
use std::time::Duration;

use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Engine;
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

/// Ctrl-C presses the launcher has seen.
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

/// The launcher's Ctrl-C: the first is passed on to the ranks (each stops after its step, rank
/// 0 keeps a checkpoint); the second stops them at once (SIGTERM, then SIGKILL) — never leaving
/// them running without their launcher.
pub fn install_ctrl_c(cancel: &CancelToken) {
    let cancel = cancel.clone();
    let installed = ctrlc::set_handler(move || {
        INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        cancel.cancel();
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not reach the ranks cleanly: {e}");
    }
}

/// A launch needs ranks and a command for them.
fn check(options: &LaunchOptions, args: &[String]) -> Result<()> {
    if options.nproc_per_node == 0 {
        return Err(Error::msg("launch: --nproc-per-node must be at least 1"));
    }
    if args.is_empty() {
        return Err(Error::msg(
            "launch: name the tunelab command each rank runs after --, e.g. tunelab launch --nproc-per-node 2 -- run script.rhai",
        ));
    }
    if options.node_rank >= options.nnodes {
        return Err(Error::msg(format!(
            "launch: --node-rank {} must be below --nnodes {}",
            options.node_rank, options.nnodes
        )));
    }
    Ok(())
}

/// The `mpirun` command line that starts `options.nproc_per_node` ranks of `exe args`.
pub fn mpirun_command(options: &LaunchOptions, exe: &str, args: &[String]) -> Result<Vec<String>> {
    check(options, args)?;
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
    let mut cmd: Vec<String> = vec![
        "mpirun".into(),
        "-np".into(),
        options.nproc_per_node.to_string(),
    ];
    // Each rank runs cores/N threads of its own; pinning a rank to one core would starve them.
    cmd.extend(["--bind-to".into(), "none".into()]);
    // Open MPI counts physical cores as slots: on a machine of two hyperthreads on one core,
    // `-np 2` would be refused. The ranks already share the cores (cores/N threads each).
    cmd.push("--oversubscribe".into());
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

/// The variables torchrun gives local rank `i` of `options` (GPU ranks).
pub fn rank_env(options: &LaunchOptions, i: usize) -> Vec<(String, String)> {
    let n = options.nproc_per_node;
    let mut vars = vec![
        ("RANK", (options.node_rank * n + i).to_string()),
        ("WORLD_SIZE", (options.nnodes * n).to_string()),
        ("LOCAL_RANK", i.to_string()),
        ("LOCAL_WORLD_SIZE", n.to_string()),
        ("GROUP_RANK", options.node_rank.to_string()),
        ("MASTER_ADDR", options.master_addr.clone()),
        ("MASTER_PORT", options.master_port.to_string()),
        ("TUNELAB_DIST_ENGINE", "nccl".to_string()),
    ];
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        vars.push(("OMP_NUM_THREADS", "1".to_string()));
    }
    vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// A process in a group of its own: the terminal's Ctrl-C reaches the launcher alone, which
/// passes it on once (two would make a rank quit without its checkpoint).
fn spawn(cmd: &mut Command, what: &str) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .spawn()
        .map_err(|e| Error::msg(format!("launch: could not start {what} ({e})")))
}

/// Start the ranks and supervise them until the job ends; returns its exit status.
pub fn launch(options: &LaunchOptions, args: &[String], cancel: &CancelToken) -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::io("the tunelab executable", e))?;
    let exe = exe.to_string_lossy().to_string();
    match Engine::choose()? {
        Engine::Mpi => {
            if !cfg!(feature = "mpi") {
                return Err(Error::msg(
                    "launch: CPU ranks talk over MPI, and this tunelab was built without it: build it with `cargo build --release --features mpi` (Open MPI; see docs/distributed.md)",
                ));
            }
            let cmd = mpirun_command(options, &exe, args)?;
            let mut mpirun = Command::new(&cmd[0]);
            // Open MPI's shared-memory transport reads other processes' memory directly (CMA),
            // which containers without ptrace rights refuse ("Read -1, … errno = 1"); copying
            // through shared memory works everywhere and costs nothing at LoRA's sizes.
            if std::env::var_os("OMPI_MCA_btl_vader_single_copy_mechanism").is_none() {
                mpirun.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
            }
            let mpirun = spawn(
                mpirun
                    .args(&cmd[1..])
                    .env("MASTER_ADDR", &options.master_addr)
                    .env("MASTER_PORT", options.master_port.to_string())
                    .env("TUNELAB_DIST_ENGINE", "mpi"),
                "mpirun (install Open MPI; Debian: apt install openmpi-bin)",
            )?;
            // Ctrl-C goes to the ranks, not to mpirun: mpirun ends a job it is interrupted in
            // at once, while a rank stops after its step and rank 0 keeps a checkpoint.
            supervise(vec![mpirun], cancel, |c| children_of(c.id() as i32))
        }
        Engine::Nccl => {
            check(options, args)?;
            let mut ranks = Vec::with_capacity(options.nproc_per_node);
            for i in 0..options.nproc_per_node {
                let mut cmd = Command::new(&exe);
                cmd.args(args).envs(rank_env(options, i));
                match spawn(&mut cmd, &format!("rank {i}")) {
                    Ok(child) => ranks.push(child),
                    Err(e) => {
                        stop_all(&mut ranks);
                        return Err(e);
                    }
                }
            }
            supervise(ranks, cancel, |c| vec![c.id() as i32])
        }
    }
}

/// Wait for `children`; pass Ctrl-C on once to the processes `targets` names for each; when one
/// fails, stop the rest. The first failure's status, or 0.
pub fn supervise(
    mut children: Vec<Child>,
    cancel: &CancelToken,
    targets: impl Fn(&Child) -> Vec<i32>,
) -> Result<i32> {
    let mut running: Vec<bool> = vec![true; children.len()];
    let mut forwarded = false;
    loop {
        for (i, child) in children.iter_mut().enumerate() {
            if !running[i] {
                continue;
            }
            if let Some(status) = child.try_wait().map_err(|e| Error::io("a rank", e))? {
                running[i] = false;
                let code = status.code().unwrap_or(128 + status_signal(&status));
                if code != 0 {
                    if running.iter().any(|&r| r) {
                        eprintln!(
                            "tunelab launch: a rank exited with status {code}; stopping the others"
                        );
                    }
                    stop_all(&mut children);
                    return Ok(code);
                }
            }
        }
        if running.iter().all(|&r| !r) {
            return Ok(0);
        }
        if INTERRUPTS.load(Ordering::SeqCst) >= 2 {
            eprintln!("tunelab launch: Ctrl-C again: stopping every rank now");
            stop_all(&mut children);
            return Ok(130);
        }
        if cancel.is_cancelled() && !forwarded {
            for (i, child) in children.iter().enumerate() {
                if running[i] {
                    let pids = targets(child);
                    if pids.is_empty() {
                        unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
                    }
                    for pid in pids {
                        unsafe { libc::kill(pid, libc::SIGINT) };
                    }
                }
            }
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The signal that ended a process (0 if none).
fn status_signal(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().unwrap_or(0)
}

/// SIGTERM every child still running, then SIGKILL whatever is left after 10 s.
fn stop_all(children: &mut [Child]) {
    for child in children.iter() {
        unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for child in children.iter_mut() {
        while child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
    fn gpu_ranks_get_torchruns_variables() {
        let mut o = options(4, 2);
        o.node_rank = 1;
        let env: std::collections::HashMap<String, String> = rank_env(&o, 2).into_iter().collect();
        assert_eq!(env["RANK"], "6");
        assert_eq!(env["WORLD_SIZE"], "8");
        assert_eq!(env["LOCAL_RANK"], "2");
        assert_eq!(env["LOCAL_WORLD_SIZE"], "4");
        assert_eq!(env["MASTER_PORT"], "29500");
        let get = |k: &str| env.get(k).cloned();
        let launch = crate::dist::env::discover(&get).unwrap().unwrap();
        assert_eq!((launch.rank, launch.world, launch.local_rank), (6, 8, 2));
    }

    #[test]
    fn a_failed_rank_stops_the_others_and_gives_its_status() {
        let started = std::time::Instant::now();
        let children = vec![
            spawn(Command::new("sleep").arg("30"), "sleep").unwrap(),
            spawn(Command::new("sh").args(["-c", "sleep 0.3; exit 3"]), "sh").unwrap(),
        ];
        let code = supervise(children, &CancelToken::new(), |c| vec![c.id() as i32]).unwrap();
        assert_eq!(code, 3);
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "{:?}",
            started.elapsed()
        );
        let ok = vec![spawn(Command::new("true").arg(""), "true").unwrap()];
        assert_eq!(supervise(ok, &CancelToken::new(), |_| vec![]).unwrap(), 0);
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
