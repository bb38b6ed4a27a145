//! What every benchmark binary needs: numbers from the command line, and a
//! process's memory and CPU time and the machine's load as `/proc` tells them.

/// Checks the command line before anything starts: `--help` (or `-h`) prints
/// `usage` and exits 0; a flag not in `known` is named on stderr and exits 2,
/// so that a typo never silently runs a long benchmark with the defaults.
pub fn check_flags(usage: &str, known: &[&str]) {
    for argument in std::env::args().skip(1) {
        if argument == "--help" || argument == "-h" {
            println!("{usage}");
            std::process::exit(0);
        }
        if argument.starts_with("--") && !known.contains(&argument.as_str()) {
            eprintln!("unknown flag {argument}: the flags are {} (--help)", known.join(", "));
            std::process::exit(2);
        }
    }
}

/// The number after `name` on the command line (`--agents 1000`), or `default`.
pub fn argument(name: &str, default: usize) -> usize {
    let arguments: Vec<String> = std::env::args().collect();
    arguments
        .iter()
        .position(|argument| argument == name)
        .and_then(|index| arguments.get(index + 1))
        .map(|value| value.parse().unwrap_or_else(|_| panic!("{name} takes a number")))
        .unwrap_or(default)
}

/// Whether `name` (a switch such as `--json`) is on the command line.
pub fn switch(name: &str) -> bool {
    std::env::args().any(|argument| argument == name)
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident memory now (`VmRSS`), in MiB.
    pub rss_mib: f64,
    /// The highest resident memory since the process started (`VmHWM`), in MiB.
    pub peak_rss_mib: f64,
    /// CPU seconds of the process itself (utime + stime).
    pub cpu_seconds: f64,
    /// CPU seconds of its children that it has waited for, and of theirs
    /// (cutime + cstime): programs the process ran to completion.
    #[allow(dead_code)] // fleet-bench does not read it
    pub children_cpu_seconds: f64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`; zeros for a process
/// that has gone.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: the first is
    // field 3 (state), so utime (14), stime (15), cutime (16) and cstime (17)
    // are at 11 to 14.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |index: usize| -> f64 { fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) };
    Usage {
        rss_mib: kib("VmRSS:") / 1024.0,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
        cpu_seconds: (ticks(11) + ticks(12)) / TICKS_PER_SECOND,
        children_cpu_seconds: (ticks(13) + ticks(14)) / TICKS_PER_SECOND,
    }
}

/// (resident memory in MiB, CPU seconds used so far) of a process.
#[allow(dead_code)] // the short form fleet-bench uses
pub fn process_usage(pid: u32) -> (f64, f64) {
    let usage = usage(pid);
    (usage.rss_mib, usage.cpu_seconds)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` writes them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
