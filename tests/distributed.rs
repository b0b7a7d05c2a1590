//! Data-parallel training across processes under MPI (`cargo test --features mpi --test
//! distributed`; needs Open MPI's mpirun): ranks started by `tunelab launch` train what one
//! process trains, bit for bit; a checkpoint moves between world sizes; a dead or hanging rank
//! ends the job with its last checkpoint intact; ranks given different data refuse to start.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tunelab() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tunelab"));
    cmd.current_dir(root());
    cmd
}

/// `tunelab launch --nproc-per-node n -- words...`.
fn launch(n: usize, words: &[&str]) -> Command {
    let mut cmd = tunelab();
    cmd.args(["launch", "--nproc-per-node", &n.to_string(), "--"])
        .args(words);
    cmd
}

/// Run to the end, or kill it after `limit` (a hung job must fail the test, not the CI run).
fn finish(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_or_kill(child, limit);
    (out, started.elapsed())
}

/// Start `cmd` and wait (at most `LIMIT`) until `ready` holds; `what` names it in a failure.
fn start_and_await(cmd: &mut Command, what: &str, ready: impl Fn() -> bool) -> Child {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < LIMIT, "no {what} after {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn wait_or_kill(mut child: Child, limit: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}:\n{}",
        out.status,
        text(out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bytes(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The logged losses of a run (without times and throughput, which differ).
fn losses(out: &Path) -> Vec<String> {
    let log = std::fs::read_to_string(out.join("trainer_log.jsonl")).unwrap();
    log.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {} {}", v["current_steps"], v["loss"], v["eval_loss"])
        })
        .collect()
}

/// `tunelab launch` of 2 ranks running `source` (written to `dir/name`) with `out=OUT`; also the
/// script's path (to find its processes).
fn two_ranks_of(dir: &Path, name: &str, source: &str, out: &Path) -> (Command, String) {
    let script = dir.join(name);
    std::fs::write(&script, source).unwrap();
    let script = script.to_string_lossy().to_string();
    let cmd = launch(
        2,
        &["run", &script, "--", &format!("out={}", out.display())],
    );
    (cmd, script)
}

/// A LoRA run on tiny that goes on until stopped, saving every `save_steps`.
fn endless(save_steps: usize) -> String {
    format!(
        r#"sft(load_model("tiny"), dataset("identity"), #{{ max_steps: 100000, batch_size: 2,
            save_steps: {save_steps}, logging_steps: 2, out: ARGS.out, plot_loss: false, progress: false }});"#
    )
}

const LIMIT: Duration = Duration::from_secs(180);

#[test]
fn two_ranks_train_bit_for_bit_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let script = "scripts/11_distributed.rhai";
    let single = ok(&finish(
        {
            let mut c = tunelab();
            c.args(["run", script, "--", &format!("out={}", one.display())]);
            c
        },
        LIMIT,
    )
    .0);
    let ranks = ok(&finish(
        launch(2, &["run", script, "--", &format!("out={}", two.display())]),
        LIMIT,
    )
    .0);
    assert!(single.contains("1 rank(s) × 4 accumulation"), "{single}");
    assert!(ranks.contains("2 rank(s) × 2 accumulation"), "{ranks}");
    // Rank 0 prints for the job.
    assert_eq!(ranks.matches("rank 0 of 2").count(), 1, "{ranks}");
    assert!(!ranks.contains("rank 1 of 2"), "{ranks}");
    assert_eq!(losses(&one), losses(&two));
    assert_eq!(
        bytes(one.join("adapter_model.safetensors")),
        bytes(two.join("adapter_model.safetensors")),
        "the adapters differ"
    );
}

/// A small run that stops itself after `stop` steps (every rank decides alike from the same
/// log events) and resumes when asked.
const RESUMABLE: &str = r#"
let world = dist_world();
let stop = ARGS.get("stop") ?? 0;
let run = sft(load_model("tiny"), dataset("identity"), #{
    max_steps: 6, batch_size: 2, gradient_accumulation_steps: 4 / world, lr: 1e-2,
    logging_steps: 1, save_steps: 100, out: ARGS.out, resume: ARGS.get("resume") ?? false,
    lora: #{ dropout: 0.1 }, plot_loss: false, progress: false,
    on_log: |event| event.current_steps != stop,
});
print(`steps ${run.steps}`);
"#;

#[test]
fn a_checkpoint_of_two_ranks_resumes_on_one_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("resumable.rhai");
    std::fs::write(&script, RESUMABLE).unwrap();
    let script = script.to_string_lossy().to_string();
    let run = |ranks: usize, out: &Path, extra: &[&str]| {
        let out_arg = format!("out={}", out.display());
        let mut words = vec!["run", script.as_str(), "--", out_arg.as_str()];
        words.extend_from_slice(extra);
        let cmd = if ranks == 1 {
            let mut c = tunelab();
            c.args(&words);
            c
        } else {
            launch(ranks, &words)
        };
        ok(&finish(cmd, LIMIT).0)
    };
    let whole = dir.path().join("whole");
    run(1, &whole, &[]);

    let forth = dir.path().join("forth");
    assert!(run(2, &forth, &["stop=3"]).contains("steps 3"));
    assert!(forth.join("checkpoint-3").is_dir());
    run(1, &forth, &["resume=true"]);

    let back = dir.path().join("back");
    run(1, &back, &["stop=3"]);
    run(2, &back, &["resume=true"]);

    for resumed in [&forth, &back] {
        assert_eq!(losses(resumed), losses(&whole), "{}", resumed.display());
        assert_eq!(
            bytes(resumed.join("adapter_model.safetensors")),
            bytes(whole.join("adapter_model.safetensors")),
            "{} continued differently",
            resumed.display()
        );
    }
}

/// The pid of the process running `script` as MPI rank `rank`.
fn rank_pid(script: &str, rank: usize) -> Option<i32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(script) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_rank_ends_the_job_and_the_last_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (mut cmd, script) = two_ranks_of(dir.path(), "long.rhai", &endless(5), &out);
    let child = start_and_await(&mut cmd, "checkpoint-5", || {
        out.join("checkpoint-5").is_dir()
    });
    let pid = rank_pid(&script, 1).expect("rank 1 is running");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = Instant::now();
    let result = wait_or_kill(child, Duration::from_secs(60));
    assert!(!result.status.success(), "{}", text(&result));
    println!(
        "the job ended {:?} after rank 1 was killed",
        killed.elapsed()
    );
    let model = tunelab::model::load("tiny", &Default::default()).unwrap();
    tunelab::lora::peft::load(&out.join("checkpoint-5"), &model.llama).unwrap();
}

#[test]
fn ranks_given_different_data_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cmd, _) = two_ranks_of(
        dir.path(),
        "mismatch.rhai",
        r#"let name = if dist_rank() == 0 { "identity" } else { "instruct_en" };
        sft(load_model("tiny"), dataset(name), #{ max_steps: 2, out: ARGS.out, progress: false });"#,
        &dir.path().join("run"),
    );
    let (out, _) = finish(cmd, LIMIT);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("rank 1's training data differs from rank 0's"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_rank_left_waiting_is_stopped_by_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    // Rank 1 dawdles before training; rank 0 waits for it in sft's first collective.
    let (mut cmd, _) = two_ranks_of(
        dir.path(),
        "hang.rhai",
        r#"if dist_rank() == 1 { sleep(120); }
        sft(load_model("tiny"), dataset("identity"), #{ max_steps: 2, out: ARGS.out, progress: false });"#,
        &dir.path().join("run"),
    );
    cmd.env("TUNELAB_DIST_TIMEOUT", "3");
    let (out, took) = finish(cmd, Duration::from_secs(90));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("has waited"), "{}", text(&out));
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn ctrl_c_stops_every_rank_after_its_step_and_keeps_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (mut cmd, _) = two_ranks_of(dir.path(), "long.rhai", &endless(100000), &out);
    let log = out.join("trainer_log.jsonl");
    let child = start_and_await(&mut cmd, "two log lines", || {
        std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) >= 2
    });
    // Ctrl-C reaches the launcher, which passes it on to the ranks once.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let result = wait_or_kill(child, Duration::from_secs(60));
    assert_eq!(result.status.code(), Some(130), "{}", text(&result));
    assert!(
        text(&result).contains("interrupted: checkpoint"),
        "{}",
        text(&result)
    );
    let (_, latest) = tunelab::train::checkpoint::latest(&out).expect("a checkpoint");
    let model = tunelab::model::load("tiny", &Default::default()).unwrap();
    tunelab::lora::peft::load(&latest, &model.llama).unwrap();
}

#[test]
fn one_rank_through_the_engine_trains_bit_for_bit_what_a_plain_process_trains() {
    // The CPU twin of the GPU check's first step: a world of one, exchanging with itself.
    let dir = tempfile::tempdir().unwrap();
    let (plain, engine) = (dir.path().join("plain"), dir.path().join("engine"));
    let script = "scripts/11_distributed.rhai";
    let mut cmd = tunelab();
    cmd.args(["run", script, "--", &format!("out={}", plain.display())]);
    ok(&finish(cmd, LIMIT).0);
    let mut cmd = tunelab();
    cmd.args(["run", script, "--", &format!("out={}", engine.display())])
        .env("TUNELAB_DIST_ENGINE", "mpi")
        .env("RANK", "0")
        .env("WORLD_SIZE", "1");
    let out = ok(&finish(cmd, LIMIT).0);
    assert!(out.contains("× 1 ranks (mpi)"), "{out}");
    assert_eq!(losses(&plain), losses(&engine));
    assert_eq!(
        bytes(plain.join("adapter_model.safetensors")),
        bytes(engine.join("adapter_model.safetensors"))
    );
}

#[test]
fn a_rank_that_fails_alone_ends_the_job_at_once() {
    // Rank 0 cannot create its run folder (a file is in the way); rank 1 would wait for it in
    // the first exchange for the watchdog's 600 s if the failing rank did not end the job.
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, "in the way").unwrap();
    let (cmd, _) = two_ranks_of(
        dir.path(),
        "short.rhai",
        r#"sft(load_model("tiny"), dataset("identity"), #{ max_steps: 2, out: ARGS.out, progress: false });"#,
        &blocked.join("run"),
    );
    let (out, took) = finish(cmd, Duration::from_secs(120));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        took < Duration::from_secs(60),
        "took {took:?}:\n{}",
        text(&out)
    );
}
