//! What push-peer leaves on a terminal: run under a pseudo-terminal
//! (util-linux `script`) and rendered as the terminal shows it (vt100), the
//! bars must not have erased the result lines, nor left stale copies of
//! themselves.

mod common;

use std::process::Command;

use common::peers::{Listener, trust};
use common::seed::{random_layer, seed_generated};
use common::{Env, in_ci};

/// Runs `args` (a rimg command line) on an 80x30 pseudo-terminal and
/// returns the screen it leaves.
fn on_terminal(env: &Env, args: &[&str]) -> String {
    let rimg = env!("CARGO_BIN_EXE_rimg");
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let line: Vec<String> = [rimg, "--root", &env.root().to_string_lossy()]
        .into_iter()
        .chain(args.iter().copied())
        .map(quote)
        .collect();
    let shell = format!("stty cols 80 rows 30; {}", line.join(" "));
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &shell, "/dev/null"])
        .env("RIMG_CONFIG", env.config())
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .output()
        .expect("script runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut parser = vt100::Parser::new(30, 80, 0);
    // The pty turns \n into \r\n already; the terminal sees the same.
    parser.process(&out.stdout);
    // Row by row: a row written to its last column counts as wrapped in
    // `contents()`, which would join it to the next.
    let rows: Vec<String> = parser.screen().rows(0, 80).collect();
    rows.join("\n").trim_end().to_string()
}

fn have_script() -> bool {
    let ok = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || !in_ci(),
        "util-linux `script` is required under CI=true"
    );
    if !ok {
        eprintln!("skipping: util-linux `script` is missing");
    }
    ok
}

#[test]
fn bars_leave_the_loaded_lines_and_no_stale_copies() {
    if !have_script() {
        return;
    }
    let (sender, receiver) = (Env::new(), Env::new());
    let layers = vec![
        random_layer("a", 3 << 20, 11),
        random_layer("b", 2 << 20, 12),
        random_layer("c", 1 << 20, 13),
    ];
    seed_generated(&sender.root(), "term:1", &layers);
    trust(&receiver, &sender);
    let listener = Listener::start(&receiver, &[]);
    // Slow enough for the bars to be redrawn many times.
    let screen = on_terminal(
        &sender,
        &[
            "push-peer",
            "--accept-new",
            "--bwlimit",
            "3M",
            "--streams",
            "2",
            "term:1",
            &listener.addr,
        ],
    );
    let loaded = format!("Loaded image: term:1 on {}", listener.addr);
    assert!(screen.contains(&loaded), "{screen}");
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    let totals = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("total"))
        .count();
    assert_eq!(totals, 1, "one total line:\n{screen}");
    // Each blob ends with one line of its own, "sent".
    let sent = lines.iter().filter(|l| l.contains(" sent (")).count();
    assert_eq!(sent, 4, "three layers and the config, once each:\n{screen}");
    assert!(
        !screen.contains('['),
        "no bar is left half-drawn:\n{screen}"
    );
}
