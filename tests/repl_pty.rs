//! The REPL driven through a real pseudo-terminal, as a person types into it: multi-line input,
//! `:help`, Ctrl-C cancelling a running `loop {}` and a native wait, the session surviving that,
//! Ctrl-C clearing a half-typed line, and Ctrl-D leaving.

use std::process::Command;
use std::time::{Duration, Instant};

use rexpect::session::{spawn_command, PtySession};

/// Long enough for a slow CI machine to start the binary; cancellation is timed separately.
const TIMEOUT_MS: u64 = 20_000;
const PROMPT: &str = "tunelab> ";
/// What rustyline writes (bracketed paste off) when Enter hands the typed line to the REPL.
const LINE_HANDED_OVER: &str = "\x1b[?2004l";

fn start() -> (PtySession, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tunelab"));
    cmd.env("TUNELAB_HISTORY", home.path().join("history.txt"))
        .env("TERM", "xterm");
    let mut p = spawn_command(cmd, Some(TIMEOUT_MS)).expect("spawn tunelab in a pty");
    p.exp_string(PROMPT).expect("first prompt");
    (p, home)
}

/// Sends `line` and waits until it has run. The prompt alone is not proof: rustyline redraws the
/// typed line (prompt included) when Enter arrives, and bytes sent before it has handed the
/// line over are dropped with its read buffer. So the line ends by printing a marker that only
/// its output contains (the echo shows the marker split in two), then the next prompt.
fn run_line(p: &mut PtySession, line: &str) {
    p.send_line(&format!("{line} print(\"line\" + \"-done\");"))
        .unwrap();
    p.exp_string("line-done").unwrap();
    p.exp_string(PROMPT).unwrap();
}

#[test]
fn repl_session_multiline_help_and_ctrl_c() {
    let (mut p, home) = start();

    run_line(&mut p, "let x = 40;");

    // An unfinished definition waits for more lines, then defines the function.
    p.send_line("fn add2(v) {").unwrap();
    p.send_line("    v + 2").unwrap();
    p.send_line("}").unwrap();
    p.exp_string(PROMPT).unwrap();
    p.send_line("add2(x)").unwrap();
    p.exp_string("=> 42").unwrap();
    p.exp_string(PROMPT).unwrap();

    // An unfinished array literal continues on the next line.
    p.send_line("let xs = [1, 2,").unwrap();
    p.send_line("3];").unwrap();
    p.exp_string(PROMPT).unwrap();

    p.send_line(":help").unwrap();
    p.exp_string("Functions by area").unwrap();
    p.exp_string("lab/assert").unwrap();
    p.exp_string(PROMPT).unwrap();
    p.send_line(":help sleep").unwrap();
    p.exp_string("Ctrl-C").unwrap();
    p.exp_string(PROMPT).unwrap();

    // Ctrl-C cancels an endless Rhai loop within a second, and the session survives.
    p.send_line("loop {}").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pressed = Instant::now();
    p.send_control('c').unwrap();
    p.exp_string("cancelled (Ctrl-C)").unwrap();
    let took = pressed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "loop {{}} took {took:?} to cancel"
    );
    p.exp_string(PROMPT).unwrap();
    p.send_line("x + xs.len()").unwrap();
    p.exp_string("=> 43").unwrap();
    p.exp_string(PROMPT).unwrap();

    // Ctrl-C also stops a long native function that watches the shared cancel flag.
    p.send_line("sleep(60)").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pressed = Instant::now();
    p.send_control('c').unwrap();
    p.exp_string("cancelled (Ctrl-C)").unwrap();
    assert!(pressed.elapsed() < Duration::from_secs(1));
    p.exp_string(PROMPT).unwrap();

    // Ctrl-C at the prompt clears the half-typed line instead of running it or exiting.
    p.send("let never = ").unwrap();
    p.send_control('c').unwrap();
    p.exp_string(PROMPT).unwrap();
    p.send_line("add2(1)").unwrap();
    p.exp_string("=> 3").unwrap();
    p.exp_string(PROMPT).unwrap();

    // Ctrl-D leaves, and the history was saved.
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    let history = std::fs::read_to_string(home.path().join("history.txt")).unwrap();
    assert!(history.contains("add2(x)"), "{history}");
}

#[test]
fn repl_chat_mode_talks_to_a_session_until_end() {
    let (mut p, _home) = start();
    run_line(
        &mut p,
        "let c = chat(load_model(\"tiny\"), #{ max_new_tokens: 4, temperature: 1.0, seed: 2 });",
    );
    p.send_line(":chat c").unwrap();
    p.exp_string("chatting with `c`").unwrap();
    p.exp_string("you> ").unwrap();
    p.send_line("hello there").unwrap();
    // The reply is random text; rustyline switches bracketed paste off when it hands a line over,
    // so the prompt after that is the next turn's, not the redraw of this one.
    p.exp_string(LINE_HANDED_OVER).unwrap();
    p.exp_string("you> ").unwrap();
    p.send_line(":end").unwrap();
    p.exp_string(PROMPT).unwrap();
    p.send_line("c.history().len()").unwrap();
    p.exp_string("=> 2").unwrap();
    p.send_line(":quit").unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn repl_errors_show_line_and_caret_and_keep_the_session() {
    let (mut p, _home) = start();
    run_line(&mut p, "let y = 5;");
    p.send_line("y + nope()").unwrap();
    p.exp_string("<repl>:1:5: Function not found: nope")
        .unwrap();
    p.exp_string("^").unwrap();
    p.exp_string(PROMPT).unwrap();
    p.send_line("y * 2").unwrap();
    p.exp_string("=> 10").unwrap();
    p.send_line(":quit").unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn ctrl_c_during_training_keeps_a_checkpoint_and_the_session() {
    let (mut p, home) = start();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
    let out = home.path().join("run");
    run_line(
        &mut p,
        &format!(
            "let cfg = #{{ out: \"{}\", max_steps: 40, batch_size: 2, gradient_accumulation_steps: 1, logging_steps: 1, lr: 1e-3 }};",
            out.display()
        ),
    );
    run_line(
        &mut p,
        &format!(
            "let m = load_model(\"tiny\"); let ds = dataset(\"identity\", #{{ dir: \"{data}\" }});"
        ),
    );
    p.send_line("let run = sft(m, ds, cfg);").unwrap();
    p.exp_string("step 3/").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("interrupted: checkpoint").unwrap();
    p.exp_string("cancelled (Ctrl-C)").unwrap();
    p.exp_string(PROMPT).unwrap();
    // The session survives, and the checkpoint resumes.
    p.send_line("cfg.resume = true; let run = sft(m, ds, cfg); run.steps")
        .unwrap();
    p.exp_string("resuming from").unwrap();
    p.exp_string("=> 40").unwrap();
    p.exp_string(PROMPT).unwrap();
    p.send_line(":quit").unwrap();
    p.exp_eof().unwrap();
}
