//! Human output helpers: errors with their causes, tables, ages.

/// Prints an error and its chain of causes, once, at the edge.
pub fn print_error(err: &anyhow::Error) {
    eprintln!("migrate: error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  because: {cause}");
    }
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

/// Parses `512M`, `1G`, `64k`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let not_a_size = || format!("{s:?} is not a size like 512M");
    let (digits, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((0, _)) => return Err(not_a_size()),
        Some((i, _)) => {
            let m = match t[i..].to_ascii_lowercase().as_str() {
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                other => return Err(format!("unknown unit {other:?} (use K, M or G)")),
            };
            (&t[..i], m)
        }
    };
    let n: u64 = digits.parse().map_err(|_| not_a_size())?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
