//! Every script in `scripts/` runs to the end with exit code 0 (each one throws when a result it
//! checks is wrong), so the tutorials can never silently rot.

use std::path::Path;
use std::process::Command;

#[test]
fn every_script_in_scripts_runs_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts: Vec<_> = std::fs::read_dir(root.join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        // The quickstart has a test of its own, below.
        .filter(|p| !p.ends_with("quickstart.rhai"))
        .collect();
    scripts.sort();
    assert!(
        scripts.len() >= 2,
        "expected the quickstart and the tutorials"
    );
    let mut failures = Vec::new();
    for script in &scripts {
        let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .arg("run")
            .arg(script)
            .current_dir(root)
            .output()
            .unwrap();
        let status = if out.status.success() { "ok" } else { "FAILED" };
        println!("{status} {}", script.display());
        if !out.status.success() {
            failures.push(format!(
                "{}: exit {:?}\n{}",
                script.display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The quickstart walks the whole journey and says what it wrote where: the run folder, the
/// adapter, the GGUF exports and the quantization table all exist where its lines say.
#[test]
fn the_quickstart_covers_the_journey_and_says_where_it_wrote() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["run", "scripts/quickstart.rhai"])
        .current_dir(root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = stdout
        .lines()
        .find_map(|l| l.split("everything is in ").nth(1))
        .expect("the last line names the run folder");
    let run = root.join(run.trim());
    for (line, file) in [
        (
            "wrote the LoRA adapter as a PEFT folder",
            "export/adapter/adapter_config.json",
        ),
        (
            "wrote the tuned model as a GGUF (F16)",
            "export/tiny-tuned-F16.gguf",
        ),
        ("wrote Q8_0", "export/tiny-tuned-Q8_0.gguf"),
        ("wrote Q4_K_M", "export/tiny-tuned-Q4_K_M.gguf"),
        ("plots:", "loss_and_eval.png"),
    ] {
        assert!(stdout.contains(line), "no line \"{line}\" in\n{stdout}");
        assert!(
            run.join(file).is_file(),
            "{} is missing",
            run.join(file).display()
        );
    }
    assert!(run.join("trainer_log.jsonl").is_file());
    let table = stdout
        .lines()
        .skip_while(|l| !l.starts_with("preset"))
        .take(4)
        .collect::<Vec<_>>();
    assert!(
        table.len() == 4 && table[0].contains("KL divergence"),
        "{stdout}"
    );
    assert!(
        table[2].starts_with("Q8_0") && table[3].starts_with("Q4_K_M"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&run);
}

/// The benchmark scripts need big inputs; run each on a small fixture so they cannot rot.
#[test]
fn benchmark_scripts_run_on_small_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args([
            "run",
            "scripts/bench/data_load.rhai",
            "--",
            "path=tests/fixtures/formats/alpaca.jsonl",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(line["records"], 6);
    assert!(line["records_per_s"].as_i64().unwrap() > 0);
    assert!(line["peak_rss_mb"].as_f64().unwrap() > 0.0);

    // The inference benchmark on the tiny preset's HF folder (any model path works).
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny");
    let tiny = tunelab::model::load("tiny", &Default::default()).unwrap();
    tunelab::model::save::save_hf(&tiny, &folder, &f32_folder()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["run", "scripts/bench/infer.rhai", "--"])
        .arg(format!("model={}", folder.display()))
        .args(["pp=16", "tg=4", "reps=1"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines
        .iter()
        .all(|l| l["generate_tok_s"].as_f64().unwrap() > 0.0));

    // The training benchmark (its GPU run passes device=cuda) on the same folder.
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["run", "scripts/bench/sft.rhai", "--"])
        .arg(format!("model={}", folder.display()))
        .args(["batch=1", "seq=16", "steps=1", "targets=all", "device=cpu"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(line["dtype"], "f32");
    assert!(line["tokens_per_s"].as_f64().unwrap() > 0.0);

    // The mixed-precision study on tiny: every preset twice, three measures at five budgets.
    let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["run", "scripts/bench/auto_mix_study.rhai", "--"])
        .args([
            "model=tiny",
            "imatrix=tests/fixtures/imatrix/tiny.imatrix.gguf",
            "calibration=tests/fixtures/imatrix/calibration.txt",
            "heldout=data/instruct_en.json",
            "chunks=2",
            "ctx=64",
            "cal_ctx=64",
        ])
        .arg(format!("out={}", dir.path().display()))
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let files = rows.iter().filter(|r| r.get("kl_mean").is_some()).count();
    assert_eq!(files, 18 + 3 * 5, "{stdout}");
    let correlations = rows.iter().filter(|r| r.get("spearman").is_some()).count();
    assert_eq!(correlations, 3, "{stdout}");
    assert!(dir.path().join("frontier.svg").is_file());
}

/// Save options that keep f32 weights (the default turns them into bf16, as LLaMA-Factory does).
fn f32_folder() -> tunelab::model::save::SaveHfOptions {
    tunelab::model::save::SaveHfOptions {
        dtype: Some(candle_core::DType::F32),
        ..Default::default()
    }
}
