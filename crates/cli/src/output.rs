//! Human output helpers: errors with their causes and exit statuses, tables, ages, sizes,
//! open-file flags, and the parsers of numeric options (so that a bad value names the
//! option and the form).

use std::fmt::Write as _;

/// Prints an error and its chain of causes, once, at the edge. The first line starts
/// with `error:` like clap's usage errors, so that every failure reads the same way; with
/// `--json`, the same as one JSON object `{"error", "causes"}`.
pub fn print_error(err: &anyhow::Error, json: bool) {
    if json {
        // For a program that asked for JSON: one object on stderr, stdout left empty.
        let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
        eprintln!("{}", serde_json::json!({ "error": err.to_string(), "causes": causes }));
        return;
    }
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  because: {cause}");
    }
}

/// The exit status for a failed command: 127 (not found) and 126 (not executable) for
/// `exec` and `lab exec`, as shells do; 1 for everything else. Usage errors exit with 2
/// (clap).
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| {
            e.downcast_ref::<migrate_agent::exec::ExecError>()
                .map(|e| e.exit_code())
                .or_else(|| e.downcast_ref::<migrate_lab::LabError>().map(|e| e.exit_code()))
        })
        .unwrap_or(1)
}

/// Prints rows as left-aligned columns, the first row being the header.
pub fn table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(
                |(i, cell)| {
                    if i + 1 == row.len() { cell.clone() } else { format!("{cell:<w$}", w = widths[i]) }
                },
            )
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// "3s ago", "5m ago", "2h ago", "4d ago".
pub fn ago(ms: u64) -> String {
    let secs = migrate_agent::now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// A size in the binary unit that fits: `512 B`, `4 KiB`, `30.2 KiB`, `1.5 MiB`, `2 GiB`
/// (one decimal unless the size is a whole number of that unit).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1 << (10 * (unit + 1)) {
        unit += 1;
    }
    let whole = 1u64 << (10 * unit);
    if bytes.is_multiple_of(whole) {
        format!("{} {}", bytes / whole, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / whole as f64, UNITS[unit])
    }
}

/// Open-file flags as `fdinfo` gives them, by name: `O_RDWR|O_APPEND|O_CLOEXEC`, with
/// bits without a name left as one octal rest (`O_RDONLY|0o40000000`).
pub fn open_flags(flags: u32) -> String {
    use nix::libc;
    // The kernel's own values on x86-64. O_LARGEFILE is written out: glibc defines it as
    // 0 on 64-bit, but the kernel sets 0o100000 on every file a 64-bit task opens.
    const O_LARGEFILE: u32 = 0o100_000;
    let named: [(u32, &str); 15] = [
        // O_SYNC includes O_DSYNC's bit: it goes first and takes both.
        (libc::O_SYNC as u32, "O_SYNC"),
        (libc::O_DSYNC as u32, "O_DSYNC"),
        (libc::O_APPEND as u32, "O_APPEND"),
        (libc::O_NONBLOCK as u32, "O_NONBLOCK"),
        (libc::O_CREAT as u32, "O_CREAT"),
        (libc::O_EXCL as u32, "O_EXCL"),
        (libc::O_NOCTTY as u32, "O_NOCTTY"),
        (libc::O_TRUNC as u32, "O_TRUNC"),
        (libc::O_ASYNC as u32, "O_ASYNC"),
        (libc::O_DIRECT as u32, "O_DIRECT"),
        (O_LARGEFILE, "O_LARGEFILE"),
        (libc::O_DIRECTORY as u32, "O_DIRECTORY"),
        (libc::O_NOFOLLOW as u32, "O_NOFOLLOW"),
        (libc::O_NOATIME as u32, "O_NOATIME"),
        (libc::O_CLOEXEC as u32, "O_CLOEXEC"),
    ];
    let mut names = vec![match flags & libc::O_ACCMODE as u32 {
        0 => "O_RDONLY".to_string(),
        1 => "O_WRONLY".to_string(),
        2 => "O_RDWR".to_string(),
        _ => "O_ACCMODE".to_string(),
    }];
    let mut rest = flags & !(libc::O_ACCMODE as u32);
    let path = libc::O_PATH as u32;
    if rest & path == path {
        names.push("O_PATH".into());
        rest &= !path;
    }
    for (bit, name) in named {
        if rest & bit == bit {
            names.push(name.into());
            rest &= !bit;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#o}"));
    }
    names.join("|")
}

/// A command line for one table cell: each argument quoted as a shell would need it
/// (`$'…'` with `\n`, `\t`, `\xHH` escapes when it holds control characters, so that
/// nothing can break the table's lines), shortened to `max` characters with `…`.
pub fn command_cell(argv: &[String], max: usize) -> String {
    let line = argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut short: String = line.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

fn shell_quote(arg: &str) -> String {
    const SPECIAL: &str = "'\"\\$`;&|<>()*?[]{}#~!";
    if arg.chars().any(char::is_control) {
        let mut out = String::from("$'");
        for c in arg.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                c if c.is_control() && u32::from(c) < 0x100 => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    } else if arg.is_empty() || arg.chars().any(|c| c.is_whitespace() || SPECIAL.contains(c)) {
        format!("'{}'", arg.replace('\'', r"'\''"))
    } else {
        arg.to_string()
    }
}

/// Parses `512M`, `1G`, `64k`, `2T`, `1048576` (binary units) for `--memory-max`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let form = "expected bytes or a number with a unit K, M, G or T, e.g. 256M or 1G";
    let (digits, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((0, _)) => return Err(form.to_string()),
        Some((i, _)) => {
            let m = match t[i..].to_ascii_lowercase().as_str() {
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                "t" | "tb" | "tib" => 1 << 40,
                _ => return Err(format!("unknown unit {:?}: {form}", &t[i..])),
            };
            (&t[..i], m)
        }
    };
    let n: u64 = digits.parse().map_err(|_| form.to_string())?;
    n.checked_mul(mult).ok_or_else(|| "too large (more than 16 EiB)".to_string())
}

/// Parses `--pids-max`: a whole number, at least 1.
pub fn parse_pids_max(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 (the container's PID 1 counts)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number of processes and threads, at least 1, e.g. 64".into()),
    }
}

/// Parses `stop --time`: whole seconds, 0 or more.
pub fn parse_seconds(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| "expected a whole number of seconds, 0 or more, e.g. 10".into())
}

/// Checks the form of `run --ip` (the agent checks that the address fits its network).
pub fn parse_ip(s: &str) -> Result<String, String> {
    let form = "expected an IPv4 address, optionally with the network's prefix length, e.g. 10.77.1.10 or 10.77.1.10/16";
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    if addr.parse::<std::net::Ipv4Addr>().is_err() || prefix.is_some_and(|p| p.parse::<u8>().is_err()) {
        return Err(form.into());
    }
    Ok(s.to_string())
}

/// Parses `lab up --hosts`: 1 to 26.
pub fn parse_hosts(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=migrate_lab::name::MAX_HOSTS).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of hosts from 1 to {} (host-a … host-z)",
            migrate_lab::name::MAX_HOSTS
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err_and(|e| e.contains("\"X\"")));
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("99999999T").is_err_and(|e| e.contains("too large")));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_pids_max("64"), Ok(64));
        for bad in ["-1", "0", "abc", ""] {
            assert!(parse_pids_max(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_seconds("0"), Ok(0));
        assert!(parse_seconds("-1").is_err_and(|e| e.contains("seconds")));
        assert!(parse_seconds("abc").is_err());
        assert_eq!(parse_hosts("3"), Ok(3));
        for bad in ["0", "27", "-1", "x"] {
            assert!(parse_hosts(bad).is_err(), "{bad}");
        }
        assert!(parse_ip("10.77.1.53").is_ok() && parse_ip("10.77.1.53/16").is_ok());
        for bad in ["10.77.1.53/", "10.77.1/16", "banana", "10.77.1.53/x"] {
            assert!(parse_ip(bad).is_err_and(|e| e.contains("e.g. 10.77.1.10")), "{bad}");
        }
    }

    #[test]
    fn sizes_take_the_unit_that_fits() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(30_934), "30.2 KiB");
        assert_eq!(size(1536 << 10), "1.5 MiB");
        assert_eq!(size(2 << 30), "2 GiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn open_flags_by_name() {
        assert_eq!(open_flags(0o2002), "O_RDWR|O_APPEND");
        assert_eq!(open_flags(0o2_100_000), "O_RDONLY|O_LARGEFILE|O_CLOEXEC");
        assert_eq!(open_flags(0o4_010_001), "O_WRONLY|O_SYNC");
        assert_eq!(open_flags(0o10_000), "O_RDONLY|O_DSYNC");
        assert_eq!(open_flags(0o12_000_000), "O_RDONLY|O_PATH|O_CLOEXEC");
        assert_eq!(open_flags(0o40_004_000), "O_RDONLY|O_NONBLOCK|0o40000000");
    }

    #[test]
    fn command_cells_stay_on_one_line() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(command_cell(&argv(&["sleep", "600"]), 60), "sleep 600");
        assert_eq!(command_cell(&argv(&["sh", "-c", "echo hi; exit 7"]), 60), "sh -c 'echo hi; exit 7'");
        assert_eq!(command_cell(&argv(&["echo", "it's"]), 60), r"echo 'it'\''s'");
        assert_eq!(command_cell(&argv(&["python3", "-c", "a\nb\tc\x1b"]), 60), r"python3 -c $'a\nb\tc\x1b'");
        let long = command_cell(&argv(&["python3", "-c", &"x = 1\n".repeat(40)]), 60);
        assert_eq!(long.chars().count(), 60);
        assert!(long.ends_with('…') && !long.contains('\n'), "{long}");
    }
}
