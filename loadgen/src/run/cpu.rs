//! This process's CPU time, from `/proc/self/stat` (Linux), to report the load generator's
//! share of a machine it shares with the server.

/// Clock ticks per second of `/proc` times. `USER_HZ` is 100 on every mainstream Linux
/// architecture; reading `sysconf(_SC_CLK_TCK)` would need libc and unsafe code.
const USER_HZ: f64 = 100.0;

/// User plus system CPU seconds of this process so far; `None` where `/proc` is unavailable.
pub(crate) fn process_seconds() -> Option<f64> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// This process's resident memory in MiB (`VmRSS` of `/proc/self/status`); `None` where
/// `/proc` is unavailable.
pub(crate) fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Fields 14 (utime) and 15 (stime) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may contain spaces, so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime_after_the_command_name() {
        let line =
            "4242 (gate wardn) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(line), Some(3.0));
        assert_eq!(parse_stat("garbage"), None);
        assert!(process_seconds().is_none_or(|s| s >= 0.0));
        assert!(resident_mib().is_none_or(|m| m > 0.0));
    }
}
