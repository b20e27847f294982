//! `meterstand demo` with a small fleet: embedded broker, simulated meters, the service.
//! The point of the demo is the analyst's view, so both tests fail unless it shows frozen
//! statistics: with `--exit` it must print its summary with rows of at least k connections
//! over every day it published and exit 0; left serving, the statistics command it prints
//! must answer such rows for the range it names, and Ctrl-C must end it with 0.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// `privacy.min_group_size` (the default the demo runs with).
const K: u64 = 10;
/// Enough connections for rows of k in several regions, and two days of history.
const DAYS: u64 = 2;
const FLEET: [&str; 4] = ["--meters", "300", "--days", "2"];

fn demo(dir: &Path, exit: bool) -> Command {
    let mut cmd = Command::new(METERSTAND);
    cmd.arg("demo")
        .args(FLEET)
        .args(exit.then_some("--exit"))
        .arg("--dir")
        .arg(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // Both tests run at once: a port of each one's own, not the default 8080.
        .env("METERSTAND__API__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    cmd
}

/// `(rows, days)` of the summary's count line, `(N rows … over M frozen days …)`.
fn frozen_counts(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with('(') && l.contains(" frozen days"))
        .unwrap_or_else(|| panic!("no count of frozen rows and days in:\n{stdout}"));
    let number = |text: &str| -> u64 {
        text.parse()
            .unwrap_or_else(|_| panic!("{text:?} in {line:?} is not a count"))
    };
    let rows = line[1..].split_whitespace().next().unwrap_or_default();
    let before_days = line.split(" frozen days").next().unwrap_or_default();
    let days = before_days.split_whitespace().last().unwrap_or_default();
    (number(rows), number(days))
}

/// The connections column of every table row the summary prints under "== what an
/// analyst sees" (`label connections consumption kWh per-connection kWh`).
fn sample_connections(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("== what an analyst sees"))
        .take_while(|l| !l.starts_with("== where to look"))
        .filter(|l| l.trim_end().ends_with("kWh"))
        .map(|l| {
            let column = l.split_whitespace().nth(1).unwrap_or_default();
            column
                .parse()
                .unwrap_or_else(|_| panic!("no connections column in {l:?}"))
        })
        .collect()
}

/// Checks a CSV answer of `/v1/statistics`: rows, each of at least k connections, over
/// every published day.
fn check_statistics_csv(csv: &str) {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} column in {header:?}"))
    };
    let (period, connections) = (column("period_start"), column("connections"));
    let mut days = BTreeSet::new();
    let mut rows = 0;
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let n: u64 = fields[connections].parse().expect("connections");
        assert!(n >= K, "a row of {n} < {K} connections: {line}\n{csv}");
        days.insert(fields[period].to_string());
        rows += 1;
    }
    assert!(rows > 0, "the statistics command answered no rows:\n{csv}");
    assert_eq!(
        days.len() as u64,
        DAYS,
        "rows for {} of the {DAYS} days:\n{csv}",
        days.len()
    );
}

#[test]
fn demo_with_a_small_fleet_prints_frozen_statistics_and_exits_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = demo(tmp.path(), true)
        .output()
        .expect("run meterstand demo");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo exited with {}: {stdout}{}",
        out.status,
        text(&out.stderr)
    );
    for expected in ["== ingested", "published readings", "== where to look"] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    let (rows, days) = frozen_counts(&stdout);
    assert!(
        rows > 0 && days == DAYS,
        "the analyst's view shows {rows} rows over {days} of {DAYS} days:\n{stdout}"
    );
    let sample = sample_connections(&stdout);
    assert!(
        sample.len() as u64 > DAYS,
        "no sample rows (a total per day and areas) in:\n{stdout}"
    );
    assert!(
        sample.iter().all(|&n| n >= K),
        "a sample row below {K} connections: {sample:?}\n{stdout}"
    );
}

#[test]
fn the_statistics_command_the_demo_prints_answers_rows_of_at_least_k() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stderr_file = tmp.path().join("demo.stderr");
    let stderr = || std::fs::read_to_string(&stderr_file).unwrap_or_default();
    let mut child = demo(tmp.path(), false)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_file).expect("stderr file"))
        .spawn()
        .expect("spawn meterstand demo");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut printed = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("serving until Ctrl-C") => break,
            Ok(line) => {
                printed.push_str(&line);
                printed.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the demo did not start serving within 240 s:\n{printed}{}",
                    stderr()
                );
            }
        }
    }
    let command = printed
        .lines()
        .find_map(|l| l.strip_prefix("statistics "))
        .unwrap_or_else(|| panic!("no statistics command in:\n{printed}"))
        .trim()
        .to_string();

    // The command's parts: the token file and the URL, fetched as the command would.
    let token_file = command
        .split("$(cat ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no token file in {command:?}"));
    let url = command
        .split('\'')
        .nth(1)
        .unwrap_or_else(|| panic!("no quoted URL in {command:?}"));
    let path_at = url
        .find("/v1/")
        .unwrap_or_else(|| panic!("no /v1/ in {url:?}"));
    let token = std::fs::read_to_string(token_file).expect("the analyst token file");
    let client = Client::with_http(Http::with_base(url[..path_at].to_string()));
    let answer = client.request("GET", &url[path_at..], Some(token.trim()), None);
    let Some((200, csv)) = answer else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command} answered {answer:?}\n{printed}{}", stderr());
    };
    check_statistics_csv(&csv);

    // And the command itself, pasted into a shell, where curl is installed.
    let has_curl = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_curl {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{command} --silent --show-error --fail"))
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{command}: {}{}",
            out.status,
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), csv, "curl and the test's client differ");
    } else {
        eprintln!("curl not installed: the printed command was checked through its parts only");
    }

    signal(&child, "INT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the demo exited with {status} after SIGINT"
    );
}
