//! The units config values are written in: sizes (`"512MiB"`), durations
//! (`"30s"`) and free space (`"10%"` or a size).

use std::time::Duration;

use super::FreeSpace;

/// A value that is not what its key takes; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(String);

/// Parses sizes like `512MiB`, `20GiB`, `1.5GB`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, BadValue> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" | "ki" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" | "mi" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" | "gi" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" | "ti" => 1 << 40,
        other => {
            return Err(bad(format!(
                "{s:?} has unknown size unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            )))
        }
    };
    let n: f64 = num.parse().map_err(|_| {
        bad(format!(
            "{s:?} is not a size such as \"512MiB\" or \"20GiB\""
        ))
    })?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad(format!("{s:?} is out of range")));
    }
    Ok(bytes as u64)
}

/// Parses durations like `500ms`, `30s`, `5m`, `1h`, `1d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, BadValue> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs: f64 = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(bad(format!(
                "{s:?} has unknown duration unit {other:?} (use ms, s, m, h, d)"
            )))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| bad(format!("{s:?} is not a duration such as \"30s\" or \"5m\"")))?;
    let total = n * secs;
    if !total.is_finite() || !(0.0..=1e10).contains(&total) {
        return Err(bad(format!("{s:?} is out of range")));
    }
    Ok(Duration::from_secs_f64(total))
}

/// `"10%"` of the file system, or a size such as `"5GiB"`.
pub fn parse_free_space(s: &str) -> Result<FreeSpace, BadValue> {
    match s.trim().strip_suffix('%') {
        Some(p) => match p.trim().parse::<f64>() {
            Ok(v) if (0.0..=90.0).contains(&v) => Ok(FreeSpace::Percent(v)),
            _ => Err(bad(format!(
                "{s:?} must be a percentage from 0% to 90%, or a size"
            ))),
        },
        None => parse_size(s).map(FreeSpace::Bytes),
    }
}

fn bad(msg: String) -> BadValue {
    BadValue(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("-1GiB").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn free_space() {
        assert_eq!(parse_free_space("10%").unwrap(), FreeSpace::Percent(10.0));
        assert_eq!(parse_free_space("1GiB").unwrap(), FreeSpace::Bytes(1 << 30));
        assert!(parse_free_space("95%").is_err());
    }
}
