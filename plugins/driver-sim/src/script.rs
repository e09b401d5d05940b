//! Simulated `exec`: interprets a tiny, documented subset of shell, one command per line.
//!
//! - `echo WORDS` prints `WORDS` (surrounding quotes removed) to stdout; with a trailing `>&2`
//!   to stderr;
//! - `hostname` prints the instance's name;
//! - `sleep SECONDS` (fractions allowed) takes that long; once the total exceeds a non-zero
//!   timeout, the run stops there with `timed-out`, exit code 124 and only the timeout elapsed;
//! - `exit N` stops with exit code `N` (a non-numeric `N` gives exit code 2);
//! - empty lines and `#` comments are skipped; any other command succeeds without output.
//!
//! The exit code is 0 unless an `exit` or a timeout says otherwise.

use std::time::Duration;

/// What a simulated run produced, and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptOutcome {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub timed_out: bool,
    pub elapsed: Duration,
}

pub const TIMEOUT_EXIT_CODE: i32 = 124;

/// Runs `script` on an instance named `hostname`. A zero `timeout` means no timeout.
pub fn simulate_script(script: &str, hostname: &str, timeout: Duration) -> ScriptOutcome {
    let mut outcome = ScriptOutcome {
        stdout: String::new(),
        stderr: String::new(),
        exit_code: 0,
        timed_out: false,
        elapsed: Duration::ZERO,
    };
    for line in script.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (command, arguments) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let arguments = arguments.trim();
        match command {
            "echo" => match arguments.strip_suffix(">&2") {
                Some(to_stderr) => push_line(&mut outcome.stderr, unquote(to_stderr.trim())),
                None => push_line(&mut outcome.stdout, unquote(arguments)),
            },
            "hostname" => push_line(&mut outcome.stdout, hostname),
            "sleep" => {
                let seconds: f64 = arguments.parse().unwrap_or(0.0);
                let wanted = Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX);
                let total = outcome.elapsed.saturating_add(wanted);
                if !timeout.is_zero() && total > timeout {
                    outcome.elapsed = timeout;
                    outcome.timed_out = true;
                    outcome.exit_code = TIMEOUT_EXIT_CODE;
                    push_line(&mut outcome.stderr, &format!("timed out after {} ms", timeout.as_millis()));
                    return outcome;
                }
                outcome.elapsed = total;
            }
            "exit" => {
                outcome.exit_code = arguments.parse().unwrap_or_else(|_| {
                    push_line(&mut outcome.stderr, &format!("exit: {arguments}: numeric argument required"));
                    2
                });
                return outcome;
            }
            _ => {}
        }
    }
    outcome
}

fn push_line(output: &mut String, line: &str) {
    output.push_str(line);
    output.push('\n');
}

fn unquote(text: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote).and_then(|rest| rest.strip_suffix(quote)) {
            return inner;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(script: &str, timeout_ms: u64, expected: (&str, &str, i32, bool, u64)) {
        let outcome = simulate_script(script, "web-1", Duration::from_millis(timeout_ms));
        let (stdout, stderr, exit_code, timed_out, elapsed_ms) = expected;
        assert_eq!(
            (outcome.stdout.as_str(), outcome.stderr.as_str(), outcome.exit_code, outcome.timed_out),
            (stdout, stderr, exit_code, timed_out),
            "{script:?}"
        );
        assert_eq!(outcome.elapsed, Duration::from_millis(elapsed_ms), "{script:?}");
    }

    #[test]
    fn scripts() {
        check("", 0, ("", "", 0, false, 0));
        check("echo hello\n# comment\n\nhostname", 0, ("hello\nweb-1\n", "", 0, false, 0));
        check("echo 'quoted words'\necho \"oops\" >&2", 0, ("quoted words\n", "oops\n", 0, false, 0));
        check("echo before\nexit 3\necho after", 0, ("before\n", "", 3, false, 0));
        check("exit nope", 0, ("", "exit: nope: numeric argument required\n", 2, false, 0));
        check("apt-get update\nsleep 0.5\necho done", 1000, ("done\n", "", 0, false, 500));
        check("sleep 0.5\nsleep 1\necho never", 1000, ("", "timed out after 1000 ms\n", 124, true, 1000));
        check("sleep 2", 0, ("", "", 0, false, 2000));
    }
}
