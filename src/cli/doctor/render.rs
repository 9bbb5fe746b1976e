//! Findings as text, and the exit code.

use std::fmt::Write as _;

use super::{Finding, Level};

/// Plain text, one line per finding; a problem's or warning's fix follows on
/// an indented `fix:` line.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.level {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Problem => "FIX",
        };
        let _ = writeln!(s, "{tag:<4} {}", f.what);
        if let Some(fix) = &f.fix {
            for (i, line) in fix.lines().enumerate() {
                let lead = if i == 0 { "     fix: " } else { "          " };
                let _ = writeln!(s, "{lead}{line}");
            }
        }
    }
    let count = |level| findings.iter().filter(|f| f.level == level).count();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let (problems, warnings) = (count(Level::Problem), count(Level::Warn));
    if problems == 0 && warnings == 0 {
        s.push_str("doctor: all checks passed\n");
    } else {
        let _ = writeln!(
            s,
            "doctor: {}, {}",
            plural(problems, "problem"),
            plural(warnings, "warning")
        );
    }
    s
}

/// 0 when nothing must be fixed, 1 otherwise.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.level == Level::Problem))
}
