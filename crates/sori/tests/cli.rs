//! The binary as an operator runs it: `channel create --json`, `migrate`, first `serve`
//! printing credentials, graceful shutdown on SIGTERM, one server per SQLite store.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn sori(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sori"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("--data-dir")
        .arg(dir);
    c
}

#[test]
fn channel_create_prints_credentials_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = sori(dir.path()).args(["migrate"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sori(dir.path())
        .args([
            "channel",
            "create",
            "--name",
            "Shop",
            "--owner-email",
            "boss@shop.example",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "channelId",
        "pluginKey",
        "accessKey",
        "accessSecret",
        "writeKey",
        "memberHashSecret",
    ] {
        assert!(
            v[k].as_str().is_some_and(|s| !s.is_empty()),
            "{k} missing in {v}"
        );
    }
    assert_eq!(v["owner"]["email"], "boss@shop.example");
    assert!(v["owner"]["password"].as_str().unwrap().len() >= 8);
    let bad = sori(dir.path())
        .args([
            "channel",
            "create",
            "--name",
            "X",
            "--time-zone",
            "Mars/Base",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("timeZone"));
}

#[test]
fn serve_prints_first_credentials_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = sori(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("Sori is listening") {
            break;
        }
    }
    assert!(seen.contains("accessSecret"), "{seen}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");

    // A second start on the same data does not create another channel.
    let out = sori(dir.path())
        .args(["channel", "create", "--name", "Two", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["channelId"], "2");

    // Serve's own flags before `serve` (their old place) are named with the fix.
    let out = sori(dir.path())
        .args(["--listen", "127.0.0.1:0", "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sori serve --listen"), "{err}");

    // Serve's own flags are refused by the other commands rather than ignored.
    let out = sori(dir.path())
        .args(["import", "users", "x.csv", "--rate-limit", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--rate-limit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `sori serve` on a free port with extra flags; returns the child once it listens,
/// and what it printed up to then.
fn serving(dir: &std::path::Path, global: &[&str]) -> (std::process::Child, String) {
    let mut child = sori(dir)
        .args(global)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("Sori is listening") {
            return (child, seen);
        }
    }
    let ended = child.wait().unwrap();
    panic!("sori serve ended ({ended}) before it listened: {seen}");
}

fn terminate(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Two nodes starting at once on a fresh PostgreSQL database (replicas of a new
/// deployment) create one default channel between them, not one each.
#[tokio::test]
async fn two_first_starts_create_one_channel() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_pg_database().await;
    let flags = ["--database-url", url.as_str()];
    let nodes: Vec<_> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..2)
            .map(|_| s.spawn(|| serving(dir.path(), &flags)))
            .collect();
        starting.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = nodes
        .iter()
        .filter(|(_, seen)| seen.contains("created. These secrets"))
        .count();
    for (node, _) in nodes {
        terminate(node);
    }
    assert_eq!(created, 1, "one node printed the first channel's secrets");
    let out = sori(dir.path())
        .args(flags)
        .args(["channel", "create", "--name", "Next", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["channelId"], "2", "only channel 1 existed");
}

/// A second `sori serve` on a SQLite store that a server is using stops at once with a
/// message naming the cause, and changes nothing; the CLI's other commands still run
/// beside the server, and once it stops the store serves again.
#[test]
fn a_second_server_on_one_sqlite_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, seen) = serving(dir.path(), &[]);
    assert!(seen.contains("accessSecret"), "{seen}");
    let out = sori(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another `sori serve` is running on this store"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("accessSecret"),
        "the refused server printed credentials"
    );
    // The same store by another name (a symbolic link to its directory) is the same store.
    let elsewhere = tempfile::tempdir().unwrap();
    let link = elsewhere.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let out = sori(&link)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second server through a link");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another `sori serve`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sori(dir.path())
        .args(["channel", "create", "--name", "Beside", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    terminate(first);
    let (again, seen) = serving(dir.path(), &[]);
    assert!(
        !seen.contains("accessSecret"),
        "a second default channel: {seen}"
    );
    terminate(again);
}

/// A first start that cannot take its port makes no channel (its secrets would never be
/// shown); the next start does. `channel list` names the channels that commands ask to
/// pick from.
#[test]
fn a_taken_port_makes_no_channel_and_channels_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = sori(dir.path())
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("binding"));
    // The store was made, without a channel.
    let out = sori(dir.path()).args(["channel", "list"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "no channel yet");

    let (child, seen) = serving(dir.path(), &[]);
    assert!(seen.contains("accessSecret"), "{seen}");
    terminate(child);
    let out = sori(dir.path())
        .args(["channel", "create", "--name", "Shop two", "--json"])
        .output()
        .unwrap();
    let two: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = sori(dir.path())
        .args(["channel", "list", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_i64().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [(1, "Default"), (2, "Shop two")]);
    assert_eq!(list[1]["pluginKey"], two["pluginKey"]);
    assert_eq!(list[1]["accessKey"], two["accessKey"]);
    assert!(list[1].get("accessSecret").is_none());
    let text = sori(dir.path()).args(["channel", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().nth(1).unwrap().starts_with("2\tShop two\t"),
        "{text}"
    );

    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, "memberId\nm1\n").unwrap();
    let out = sori(dir.path())
        .args(["import", "users"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--channel: 1 (Default), 2 (Shop two)"),
        "{err}"
    );
}

/// With `--log-format json` every fatal error is one JSON line on standard error, a
/// configuration file that cannot be read included.
#[test]
fn fatal_errors_are_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "listn = \"127.0.0.1:1\"\n").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = typo.to_str().unwrap();
    let nowhere = format!("sqlite://{}/missing/x.db", dir.path().display());
    for (args, says) in [
        (
            vec![
                "--log-format",
                "json",
                "--database-url",
                &nowhere,
                "migrate",
            ],
            "missing of the SQLite database does not exist",
        ),
        (
            vec!["--log-format", "json", "--config", config, "serve"],
            "listn",
        ),
        (
            vec!["--log-format", "json", "serve", "--listen", &addr],
            "binding",
        ),
    ] {
        let out = sori(dir.path()).args(&args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<serde_json::Value> = err
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let last = lines.last().unwrap();
        assert_eq!(last["fields"]["message"], "sori stopped", "{err}");
        assert!(
            last["fields"]["error"].as_str().unwrap().contains(says),
            "{err}"
        );
    }
}
