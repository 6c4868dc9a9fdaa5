//! CPU time of the server process and of PostgreSQL's processes, read from `/proc`, so a
//! run can report CPU per event. On a machine where the load generator shares the cores,
//! throughput moves ±15 % between identical runs; CPU per event moves far less, so it is
//! the figure to compare when judging a change.

/// Clock ticks of user plus system time in a `/proc/…/stat` line (fields 14 and 15,
/// counted after the parenthesised command name, which may hold spaces).
fn ticks_of(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU seconds of process `pid` so far (None once it is gone or off Linux).
pub fn process_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ticks_of(&stat)? as f64 / ticks_per_second())
}

/// CPU seconds of every running process named `postgres` (server and backends). Two
/// limits, fine for the benchmark's throwaway cluster with a fixed pool: a backend that
/// exits during a run takes its ticks with it, and any other PostgreSQL on the machine
/// is counted too.
pub fn postgres_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let ticks: u64 = dir
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.contains("(postgres)"))
        .filter_map(|s| ticks_of(&s))
        .sum();
    ticks as f64 / ticks_per_second()
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on (asked of `getconf` once).
fn ticks_per_second() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_user_and_system_ticks_past_a_name_with_spaces() {
        let stat = "42 (tokio rt) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0";
        assert_eq!(super::ticks_of(stat), Some(325));
    }
}
