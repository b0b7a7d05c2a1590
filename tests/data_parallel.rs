//! Data-parallel training: W ranks with k accumulation steps compute what one process with W·k
//! computes — the same losses and adapter — with LoRA dropout on. The ranks here are threads
//! sharing an in-process collective; `tests/distributed.rs` runs the same under `mpirun`.

#[path = "support/tiny.rs"]
#[allow(dead_code)]
mod tiny;

use std::path::PathBuf;

use tunelab::cancel::CancelToken;
use tunelab::collective::in_process;
use tunelab::collective::Collective;
use tunelab::output::Output;
use tunelab::train::{sft, Hooks, Run, SftConfig};

use tiny::{shipped, tiny};

fn cfg(out: PathBuf, accumulation: usize) -> SftConfig {
    let mut cfg = SftConfig {
        learning_rate: 1e-2,
        max_steps: Some(6),
        batch_size: 2,
        gradient_accumulation_steps: accumulation,
        cutoff_len: 256,
        logging_steps: 1,
        save_steps: 3,
        val_size: 0.1,
        eval_steps: Some(3),
        out: Some(out),
        ..Default::default()
    };
    cfg.lora.dropout = 0.1;
    cfg
}

/// What each rank's `on_log` answers: `answer(rank, step)`.
type Answer = fn(usize, u64) -> tunelab::Result<bool>;

/// One run per rank, each on its own thread, in rank order: rank r trains on `data[r % len]`,
/// with an `on_log` when `answer` is given.
fn run_each_rank(
    world: usize,
    cfg: &SftConfig,
    data: &[&str],
    answer: Option<Answer>,
) -> Vec<tunelab::Result<Run>> {
    let group = in_process::group(world);
    let model = tiny();
    let sets: Vec<_> = data.iter().map(|name| shipped(name)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .iter()
            .map(|rank| {
                let (model, ds, cfg) = (&model, &sets[rank.rank % sets.len()], cfg.clone());
                s.spawn(move || {
                    let cancel = CancelToken::new();
                    let out = Output::capture();
                    let mut on_log =
                        |ev: &serde_json::Map<String, serde_json::Value>| -> tunelab::Result<bool> {
                            answer.expect("only called when given")(
                                rank.rank,
                                ev["current_steps"].as_u64().unwrap(),
                            )
                        };
                    let hooks = Hooks {
                        on_log: match answer {
                            Some(_) => Some(&mut on_log),
                            None => None,
                        },
                        cancel: &cancel,
                        output: &out,
                        progress_bar: false,
                        collective: Some(rank as &dyn Collective),
                    };
                    sft(model, ds, &cfg, hooks)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `world` ranks training on the identity data.
fn run_ranks(world: usize, cfg: &SftConfig) -> Vec<tunelab::Result<Run>> {
    run_each_rank(world, cfg, &["identity"], None)
}

fn max_relative_diff(a: &[(usize, f64)], b: &[(usize, f64)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.0, y.0);
            (x.1 - y.1).abs() / y.1.abs().max(1e-9)
        })
        .fold(0.0, f64::max)
}

/// The largest relative difference ‖a − b‖ / ‖b‖ over the adapter's tensors.
fn adapter_relative_diff(a: &Run, b: &Run) -> f32 {
    let (a, b) = (a.adapter.as_ref().unwrap(), b.adapter.as_ref().unwrap());
    let norm = |t: &candle_core::Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in a.named_vars().iter().zip(b.named_vars().iter()) {
        assert_eq!(na, nb);
        let diff = norm(&(va.as_tensor() - vb.as_tensor()).unwrap());
        worst = worst.max(diff / norm(vb.as_tensor()).max(1e-12));
    }
    worst
}

#[test]
fn two_ranks_of_two_compute_what_one_rank_of_four_computes() {
    let dir = tempfile::tempdir().unwrap();
    let single = run_ranks(1, &cfg(dir.path().join("one"), 4))
        .pop()
        .unwrap()
        .unwrap();
    let mut runs = run_ranks(2, &cfg(dir.path().join("two"), 2));
    let rank1 = runs.pop().unwrap().unwrap();
    let rank0 = runs.pop().unwrap().unwrap();

    assert_eq!(rank0.steps, 6);
    assert_eq!(rank0.total_tokens, single.total_tokens);
    let loss = max_relative_diff(&rank0.loss, &single.loss);
    assert!(loss < 1e-5, "losses differ by {loss:e} (relative)");
    let eval = max_relative_diff(&rank0.eval_loss, &single.eval_loss);
    assert!(eval < 1e-5, "eval losses differ by {eval:e}");
    let adapter = adapter_relative_diff(&rank0, &single);
    eprintln!(
        "two ranks against one: losses {loss:e}, eval {eval:e}, adapter {adapter:e} (relative)"
    );
    assert!(adapter < 1e-5, "adapters differ by {adapter:e} (relative)");
    assert_eq!(
        adapter_relative_diff(&rank1, &rank0),
        0.0,
        "every rank holds the same adapter"
    );
    assert_eq!(rank1.loss, rank0.loss);

    // Rank 0 alone wrote the run: one log, with the global token count.
    let log = std::fs::read_to_string(rank0.out.join("trainer_log.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), 6);
    assert!(rank0.out.join("adapter_model.safetensors").is_file());
    let args = std::fs::read_to_string(rank0.out.join("training_args.json")).unwrap();
    assert!(args.contains("\"world_size\": 2"), "{args}");
}

#[test]
fn two_ranks_of_one_are_bitwise_one_rank_of_two() {
    // Summing two gradients is one addition in either case: nothing may differ at all.
    let dir = tempfile::tempdir().unwrap();
    let single = run_ranks(1, &cfg(dir.path().join("one"), 2))
        .remove(0)
        .unwrap();
    let two = run_ranks(2, &cfg(dir.path().join("two"), 1))
        .remove(0)
        .unwrap();
    assert_eq!(adapter_relative_diff(&two, &single), 0.0);
    assert_eq!(two.eval_loss, single.eval_loss);
}

#[test]
fn a_two_rank_checkpoint_resumes_as_one_rank_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let whole = run_ranks(2, &cfg(dir.path().join("whole"), 2))
        .remove(0)
        .unwrap();

    // The two-rank run's folder as it stood at step 3.
    let part = dir.path().join("part");
    copy_checkpoint(&whole.out, &part, 3);
    // One rank of four continues from the two-rank checkpoint.
    let resumed = run_ranks(
        1,
        &SftConfig {
            resume: true,
            ..cfg(part.clone(), 4)
        },
    )
    .remove(0)
    .unwrap();
    let d = max_relative_diff(&resumed.loss[3..], &whole.loss[3..]);
    assert!(d < 1e-5, "resumed losses differ by {d:e}");
    let a = adapter_relative_diff(&resumed, &whole);
    assert!(a < 1e-5, "resumed adapter differs by {a:e}");

    // And back: a one-rank checkpoint continued by two ranks.
    let back = dir.path().join("back");
    copy_checkpoint(&resumed.out, &back, 3);
    let two = run_ranks(
        2,
        &SftConfig {
            resume: true,
            ..cfg(back, 2)
        },
    )
    .remove(0)
    .unwrap();
    let a = adapter_relative_diff(&two, &whole);
    assert!(a < 1e-5, "adapter after resuming back differs by {a:e}");
}

/// A run folder holding only `from`'s checkpoint at `step` (and its log), as if it stopped there.
fn copy_checkpoint(from: &std::path::Path, to: &std::path::Path, step: usize) {
    let name = format!("checkpoint-{step}");
    std::fs::create_dir_all(to.join(&name)).unwrap();
    for entry in std::fs::read_dir(from.join(&name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(&name).join(entry.file_name())).unwrap();
    }
    std::fs::copy(from.join("trainer_log.jsonl"), to.join("trainer_log.jsonl")).unwrap();
}

#[test]
fn ranks_given_different_data_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let runs = run_each_rank(
        2,
        &cfg(dir.path().join("run"), 1),
        &["identity", "instruct_en"],
        None,
    );
    for run in runs {
        let e = run.unwrap_err().to_string();
        assert!(
            e.contains("rank 1's training data differs from rank 0's"),
            "{e}"
        );
    }
}

#[test]
fn one_ranks_callback_stops_or_fails_every_rank_at_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    // Rank 1 alone says stop at step 2 (its events differ in times, so answers may differ).
    let runs = run_each_rank(
        2,
        &cfg(dir.path().join("stop"), 1),
        &["identity"],
        Some(|rank, step| Ok(!(rank == 1 && step == 2))),
    );
    for run in runs {
        let run = run.unwrap();
        assert_eq!(run.steps, 2);
        assert_eq!(run.stopped, tunelab::train::StopReason::StoppedByCallback);
    }
    // Rank 1's callback fails at step 2: both ranks fail there instead of one waiting forever.
    let runs = run_each_rank(
        2,
        &cfg(dir.path().join("fail"), 1),
        &["identity"],
        Some(|rank, step| {
            if rank == 1 && step == 2 {
                Err(tunelab::Error::msg("the callback broke"))
            } else {
                Ok(true)
            }
        }),
    );
    let errors: Vec<String> = runs
        .into_iter()
        .map(|r| r.unwrap_err().to_string())
        .collect();
    assert!(
        errors[0].contains("on_log failed on another rank"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("the callback broke"), "{}", errors[1]);
}
