//! Resource use of a process from `/proc`: resident memory and CPU seconds.

use std::sync::OnceLock;

/// RSS and CPU of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Resident set size in KiB (`VmRSS`).
    pub rss_kb: u64,
    /// User + system CPU seconds since the process started.
    pub cpu_secs: f64,
}

/// Reads the usage of `pid` (`None` if the process is gone).
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Usage {
        rss_kb: parse_rss_kb(&status)?,
        cpu_secs: parse_cpu_ticks(&stat)? as f64 / clock_ticks() as f64,
    })
}

/// The summed usage of several processes (a server and its Redis, two instances…).
pub fn usage_sum(pids: &[u32]) -> Usage {
    pids.iter()
        .filter_map(|&pid| usage(pid))
        .fold(Usage::default(), |a, b| Usage {
            rss_kb: a.rss_kb + b.rss_kb,
            cpu_secs: a.cpu_secs + b.cpu_secs,
        })
}

/// This process's own usage (the generator must show it is not the bottleneck).
pub fn own() -> Usage {
    usage(std::process::id()).unwrap_or_default()
}

fn parse_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the
    // last ')'. utime and stime are fields 14 and 15, i.e. 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> u64 {
    // sysconf needs unsafe (forbidden here); getconf answers the same once per run.
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn parses_rss_from_status() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t   1234 kB\nThreads:\t2\n";
        assert_eq!(parse_rss_kb(status), Some(1234));
    }

    #[test]
    fn own_usage_is_readable() {
        let me = own();
        assert!(me.rss_kb > 0);
        assert!(me.cpu_secs >= 0.0);
    }
}
