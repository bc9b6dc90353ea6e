//! The `gauntlet` binary as an operator runs it: config errors at start, serving, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn gauntlet() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gauntlet"));
    // Outcome logs go to a directory of their own, not the checkout's.
    let outcomes = std::env::temp_dir().join(format!("gauntlet-cli-test-{}", std::process::id()));
    command.current_dir(common::root()).env_remove("RUST_LOG").env("GAUNTLET_OUTCOMES__DIR", outcomes);
    command
}

#[test]
fn invalid_config_fails_at_start_naming_the_key() {
    // (flags, environment, stderr must contain)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&["--listen", "not-an-address"], &[], "`listen`"),
        (&[], &[("GAUNTLET_MAX_REQUEST_BYTES", "many")], "`max_request_bytes`"),
        (&["--set", "models.diabetes.champion=9"], &[], "diabetes/9"),
        (&["--set", "inline_max_micros=3"], &[], "inline_max_micros"),
    ];
    for (args, env, needle) in cases {
        let output = gauntlet()
            .args(["serve", "--config", "gauntlet.toml"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn serves_then_exits_zero_on_sigterm() {
    let mut child = gauntlet()
        .args(["serve", "--config", "gauntlet.toml", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The address it bound is in its log.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(&line).ok()?;
            entry["fields"]["address"].as_str().map(str::to_owned)
        })
        .expect("the gateway logs the address it serves on");
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    write!(stream, "GET /v2/health/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}
