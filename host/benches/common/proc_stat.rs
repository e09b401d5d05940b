//! CPU time and context switches from `/proc`, for the benchmarks that print where time goes.

use std::collections::BTreeMap;

use anyhow::Context as _;

/// CPU seconds and context switches (voluntary and involuntary) of threads of one name.
#[derive(Clone, Copy, Default)]
pub struct ThreadUse {
    pub cpu: f64,
    pub context_switches: u64,
}

/// User + system seconds of `/proc/<pid>/stat`: (the process, its waited-for children).
pub fn process_cpu_seconds(pid: &str) -> anyhow::Result<(f64, f64)> {
    let (_, fields) = stat_fields(&format!("/proc/{pid}/stat"))?;
    // utime stime cutime cstime: the 12th to 15th fields after the command name.
    let ticks: Vec<f64> =
        fields.split_whitespace().skip(11).take(4).map(|field| field.parse().unwrap_or(0.0)).collect();
    anyhow::ensure!(ticks.len() == 4, "/proc/{pid}/stat is short");
    Ok(((ticks[0] + ticks[1]) / USER_HZ, (ticks[2] + ticks[3]) / USER_HZ))
}

const USER_HZ: f64 = 100.0;

/// The command name of a `stat` file and the fields after it.
fn stat_fields(path: &str) -> anyhow::Result<(String, String)> {
    let stat = std::fs::read_to_string(path)?;
    let (head, fields) = stat.rsplit_once(')').context("a stat file names a command")?;
    let name = head.split_once('(').map_or("", |(_, name)| name);
    Ok((name.to_string(), fields.to_string()))
}

/// Seconds all CPUs of the machine have been idle (idle and waiting for I/O), from `/proc/stat`.
#[allow(dead_code)] // not every benchmark prints it
pub fn idle_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().find(|line| line.starts_with("cpu ")).context("/proc/stat has a cpu line")?;
    // user nice system idle iowait …
    let idle: f64 = cpu.split_whitespace().skip(4).take(2).filter_map(|field| field.parse::<f64>().ok()).sum();
    Ok(idle / USER_HZ)
}

/// CPU and context switches of the threads of process `pid` (`self` for this one), summed by
/// name (without the numbers some names end in: `sqlx-sqlite-worker-3`).
pub fn thread_use(pid: &str) -> BTreeMap<String, ThreadUse> {
    let mut by_name = BTreeMap::<String, ThreadUse>::new();
    for thread in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let (Ok((name, fields)), Ok(status)) = (
            stat_fields(&thread.path().join("stat").to_string_lossy()),
            std::fs::read_to_string(thread.path().join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let ticks: f64 = fields.split_whitespace().skip(11).take(2).filter_map(|field| field.parse::<f64>().ok()).sum();
        let switches: u64 = status
            .lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(key, _)| key.ends_with("ctxt_switches"))
            .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
            .sum();
        let name = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-').to_string();
        let entry = by_name.entry(name).or_default();
        entry.cpu += ticks / USER_HZ;
        entry.context_switches += switches;
    }
    by_name
}
