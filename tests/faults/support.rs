//! The fault suite's small tools: skipping loudly, and the demo load
//! generator run in the background while a fault happens.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Harness, BIN};

/// Says on stderr that `test` did not run, and why. Written to the stream
/// itself: the test harness swallows `eprintln!` of passing tests, and a skip
/// must show in every log.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {test}: {why}");
}

/// True (and a loud line on stderr) when this host cannot run a test that
/// needs root and `programs`.
pub fn skip_without_root(test: &str, programs: &[&str]) -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("needs root".to_string())
    } else {
        programs
            .iter()
            .find(|p| {
                Command::new(p)
                    .arg("-V")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_err()
            })
            .map(|p| format!("needs `{p}` on PATH"))
    };
    match why {
        Some(why) => {
            skipped(test, &why);
            true
        }
        None => false,
    }
}

/// Starts `gpufleet demo load` against one server; its JSON report is read
/// from stdout once it ends.
pub fn start_load(h: &Harness, port: i64, duration: &str) -> Child {
    Command::new(BIN)
        .args([
            "demo",
            "load",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--rps",
            "20",
            "--duration",
            duration,
            "--timeout",
            "20s",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(h.path("load.err")).unwrap())
        .spawn()
        .unwrap()
}

pub fn finish_load(mut load: Child, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    while load.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = load.kill();
            panic!("the load generator did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = load.wait_with_output().unwrap();
    assert!(out.status.success(), "demo load failed");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "demo load printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
