//! The `tunelab` binary as a user drives it: exit codes, diagnostics on stderr, ARGS, stdin mode,
//! and the `tunelab test` runner. Each test spawns the real binary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

#[path = "support/skip.rs"]
mod skip;

const BIN: &str = env!("CARGO_BIN_EXE_tunelab");

/// Run `tunelab ARGS...` in `dir`, feeding `stdin`.
fn tunelab_in(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tunelab");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn tunelab(args: &[&str]) -> Output {
    tunelab_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, "")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Print expected and actual between rulers when a check fails.
macro_rules! check {
    ($cond:expr, $out:expr) => {
        if !$cond {
            panic!(
                "\n---- check failed: {} ----\nstatus: {:?}\n---- stdout ----\n{}\n---- stderr ----\n{}\n--------",
                stringify!($cond),
                $out.status.code(),
                text(&$out.stdout),
                text(&$out.stderr)
            );
        }
    };
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

#[test]
fn piped_stdin_runs_as_a_script_and_prints_the_final_value() {
    let dir = tempfile::tempdir().unwrap();
    let out = tunelab_in(dir.path(), &[], "let x = 40;\nx + 2\n");
    check!(out.status.code() == Some(0), out);
    check!(text(&out.stdout) == "42\n", out);
}

#[test]
fn error_on_line_3_exits_1_with_file_line_and_caret() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.rhai",
        "let a = 1;\nlet b = 2;\nlet c = a + nope(b);\n",
    );
    let out = tunelab_in(dir.path(), &["run", "bad.rhai"], "");
    check!(out.status.code() == Some(1), out);
    let err = text(&out.stderr);
    check!(
        err.starts_with("bad.rhai:3:13: Function not found: nope"),
        out
    );
    check!(
        err.contains("  3 | let c = a + nope(b);\n    |             ^\n"),
        out
    );
    check!(out.stdout.is_empty(), out);
}

#[test]
fn syntax_error_exits_1_and_is_located() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "syntax.rhai", "let a = 1;\nlet = 2;\n");
    let out = tunelab_in(dir.path(), &["run", "syntax.rhai"], "");
    check!(out.status.code() == Some(1), out);
    check!(text(&out.stderr).starts_with("syntax.rhai:2:"), out);
}

#[test]
fn error_inside_an_imported_module_names_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "util.rhai",
        "fn check(x) {\n    if x > 1 {\n        throw `too big: ${x}`;\n    }\n}\n",
    );
    write(
        dir.path(),
        "main.rhai",
        "import \"./util\" as u;\nu::check(1);\nu::check(5);\n",
    );
    let out = tunelab_in(dir.path(), &["run", "main.rhai"], "");
    check!(out.status.code() == Some(1), out);
    let err = text(&out.stderr);
    check!(err.starts_with("main.rhai:3:4: too big: 5"), out);
    check!(err.contains("in function 'check' at util.rhai:3:9"), out);
    check!(err.contains("        throw `too big: ${x}`;"), out);
}

#[test]
fn failed_stdlib_assertion_points_at_the_callers_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.rhai",
        "import \"lab/assert\" as t;\n\nt::assert_eq(2 + 2, 5);\n",
    );
    let out = tunelab_in(dir.path(), &["run", "a.rhai"], "");
    check!(out.status.code() == Some(1), out);
    let err = text(&out.stderr);
    check!(
        err.starts_with("a.rhai:3:4: assert_eq failed: expected 5, got 4"),
        out
    );
    check!(err.contains("at stdlib/assert.rhai:"), out);
}

#[test]
fn args_after_double_dash_reach_the_script_typed() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "args.rhai",
        "#!/usr/bin/env -S tunelab run\nprint(`${ARGS.lr * 2} ${ARGS.epochs + 1} ${ARGS.fast} ${ARGS.name}`);\n",
    );
    let out = tunelab_in(
        dir.path(),
        &[
            "run",
            "args.rhai",
            "--",
            "lr=0.5",
            "epochs=3",
            "fast=true",
            "name=demo",
        ],
        "",
    );
    check!(out.status.code() == Some(0), out);
    check!(text(&out.stdout) == "1.0 4 true demo\n", out);
}

#[test]
fn usage_and_io_errors_exit_2() {
    let out = tunelab(&["run", "no/such/script.rhai"]);
    check!(out.status.code() == Some(2), out);
    check!(text(&out.stderr).contains("no/such/script.rhai"), out);

    let out = tunelab(&["run", "scripts/00_hello.rhai", "--", "not-a-pair"]);
    check!(out.status.code() == Some(2), out);
    check!(
        text(&out.stderr).contains("\"not-a-pair\" is not key=value"),
        out
    );

    let out = tunelab(&["frobnicate"]);
    check!(out.status.code() == Some(2), out);

    let out = tunelab(&["test", "no/such/folder"]);
    check!(out.status.code() == Some(2), out);
}

#[test]
fn non_utf8_script_is_an_error_naming_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("latin1.rhai"), b"print(\"caf\xe9\");").unwrap();
    let out = tunelab_in(dir.path(), &["run", "latin1.rhai"], "");
    check!(out.status.code() == Some(1), out);
    check!(
        text(&out.stderr).contains("latin1.rhai: byte 10: not valid UTF-8"),
        out
    );
}

#[test]
fn test_runner_reports_one_pass_one_fail_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "good.rhai",
        "import \"lab/assert\" as t;\nt::assert_eq(1 + 1, 2);\n",
    );
    write(
        dir.path(),
        "bad.rhai",
        "import \"lab/assert\" as t;\nt::assert_eq(1 + 1, 3);\n",
    );
    let out = tunelab_in(
        dir.path(),
        &["test", ".", "--junit", "report/junit.xml"],
        "",
    );
    check!(out.status.code() == Some(1), out);
    let stdout = text(&out.stdout);
    check!(stdout.lines().last() == Some("1 passed, 1 failed"), out);
    check!(stdout.contains("FAILED  bad.rhai ("), out);
    check!(
        stdout.contains("        bad.rhai:2:4: assert_eq failed: expected 3, got 2"),
        out
    );
    check!(stdout.contains("ok      good.rhai ("), out);
    let xml = std::fs::read_to_string(dir.path().join("report/junit.xml")).unwrap();
    assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
}

#[test]
fn test_runner_default_folder_is_tests_scripts_and_passes() {
    let out = tunelab(&["test"]);
    check!(out.status.code() == Some(0), out);
    let stdout = text(&out.stdout);
    check!(
        stdout.contains("ok      tests/scripts/assert_lib.rhai"),
        out
    );
    check!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.ends_with(" passed, 0 failed")),
        out
    );
}

#[test]
fn version_lists_candle_and_rhai() {
    let out = tunelab(&["--version"]);
    check!(out.status.code() == Some(0), out);
    let stdout = text(&out.stdout);
    check!(stdout.starts_with("tunelab "), out);
    check!(stdout.contains("candle-core 0.11"), out);
    check!(stdout.contains("rhai 1."), out);
}

#[test]
fn broken_pipe_is_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "loud.rhai",
        "for i in 0..200000 { print(`line ${i}`); }\n",
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("'{BIN}' run loud.rhai | head -n 1"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    check!(text(&out.stdout) == "line 0\n", out);
    check!(!text(&out.stderr).contains("panicked"), out);
}

/// The closing line of `cargo test` counts the skip notes by what they need, names the command,
/// and clears them so the next run starts afresh.
#[test]
fn skipped_tests_are_counted_into_one_closing_line() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(skip::summarize_and_clear(dir.path()), None);
    for (name, note) in [
        ("models__a", "SmolLM2\trun scripts/fetch-smollm2.sh\n"),
        ("models__b", "SmolLM2\trun scripts/fetch-smollm2.sh\n"),
        (
            "data__c",
            "LLaMA-Factory's demo data\tset TUNELAB_LF_DATA\n",
        ),
    ] {
        std::fs::write(dir.path().join(name), note).unwrap();
    }
    let line = skip::summarize_and_clear(dir.path()).unwrap();
    assert!(line.starts_with("skipped 3 test(s)"), "{line}");
    assert!(
        line.contains("2 need SmolLM2: run scripts/fetch-smollm2.sh"),
        "{line}"
    );
    assert!(
        line.contains("1 need LLaMA-Factory's demo data: set TUNELAB_LF_DATA"),
        "{line}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A file that makes a third-party decoder panic gives the one error line naming the file, and
/// nothing of the panic (its message is caught and becomes that line).
#[test]
fn a_corrupt_parquet_file_prints_one_error_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Byte 157 of the fixture lies in a page's bit-packed run: 0xff sends it past its buffer,
    // where the arrow-buffer crate panics (found by tests/mutation.rs).
    let mut bytes = std::fs::read(root.join("tests/fixtures/formats/alpaca.parquet")).unwrap();
    bytes[157] = 0xff;
    std::fs::write(dir.path().join("bad.parquet"), bytes).unwrap();
    write(dir.path(), "s.rhai", "dataset(\"bad.parquet\")\n");
    let out = tunelab_in(dir.path(), &["run", "s.rhai"], "");
    let err = text(&out.stderr);
    check!(out.status.code() == Some(1), out);
    check!(
        err.starts_with("s.rhai:1:1: bad.parquet: ") && err.contains("corrupt Parquet data"),
        out
    );
    check!(!err.contains("panicked"), out);
}

/// Without a distributed engine built in, a launch or a rank says how to build one, at once.
#[cfg(not(feature = "mpi"))]
#[test]
fn ranks_without_an_engine_say_how_to_build_one() {
    let out = tunelab(&[
        "launch",
        "--nproc-per-node",
        "2",
        "--",
        "run",
        "scripts/00_hello.rhai",
    ]);
    check!(!out.status.success(), out);
    check!(text(&out.stderr).contains("--features mpi"), out);

    let out = Command::new(BIN)
        .args(["run", "scripts/00_hello.rhai"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .output()
        .unwrap();
    check!(!out.status.success(), out);
    check!(
        text(&out.stderr).contains("rank 1 of 2, but this tunelab was built without MPI"),
        out
    );
}
