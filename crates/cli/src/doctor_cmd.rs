//! `migrate doctor [--json]`: prints what the probes of [`migrate_agent::doctor`] found.
//!
//! Human output is one aligned line per finding (`✓` ok, `!` warning, `✗` failure), with
//! what a problem means and how to fix it indented below it, then a verdict. The exit
//! status says whether migration can work here: 0 yes (warnings included), 1 no.

use migrate_agent::doctor::{self, Finding, Report, Status};

/// Width of the wrapped meaning/fix text, indentation included.
const WIDTH: usize = 100;

pub fn run(json: bool) -> anyhow::Result<i32> {
    let report = doctor::run();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.migration_possible { 0 } else { 1 })
}

fn mark(status: Status) -> &'static str {
    match status {
        Status::Ok => "✓",
        Status::Warn => "!",
        Status::Fail => "✗",
    }
}

fn render(report: &Report) -> String {
    let width = report.findings.iter().map(|f| f.title.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for f in &report.findings {
        out.push_str(&format!("{} {:<width$}  {}\n", mark(f.status), f.title, f.detail));
        if f.status != Status::Ok {
            push_labelled(&mut out, "meaning", &f.meaning);
            push_labelled(&mut out, "fix", &f.fix);
        }
    }
    out.push('\n');
    out.push_str(&verdict(report));
    out.push('\n');
    out
}

fn count(findings: &[Finding], status: Status) -> usize {
    findings.iter().filter(|f| f.status == status).count()
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

fn verdict(report: &Report) -> String {
    let warnings = count(&report.findings, Status::Warn);
    let failures = count(&report.findings, Status::Fail);
    if report.migration_possible {
        let note =
            if warnings == 0 { String::new() } else { format!(" ({} above)", plural(warnings, "warning")) };
        format!("Verdict: migration can work on this host{note}.")
    } else {
        format!(
            "Verdict: migration cannot work on this host: {} to fix{}.",
            plural(failures, "failure"),
            if warnings == 0 { String::new() } else { format!(", {}", plural(warnings, "warning")) }
        )
    }
}

/// `    meaning: text…`, wrapped at [`WIDTH`] with continuation lines aligned.
fn push_labelled(out: &mut String, label: &str, text: &str) {
    if text.is_empty() {
        return;
    }
    let head = format!("    {label:<8} ");
    let indent = " ".repeat(head.chars().count());
    let mut line = head;
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(id: &str, status: Status) -> Finding {
        Finding {
            id: id.into(),
            title: format!("title of {id}"),
            status,
            detail: format!("detail of {id}"),
            meaning: if status == Status::Ok { String::new() } else { "word ".repeat(40) },
            fix: if status == Status::Ok { String::new() } else { "do this".into() },
        }
    }

    #[test]
    fn human_output() {
        let report = Report {
            findings: vec![finding("a", Status::Ok), finding("bb", Status::Warn)],
            migration_possible: true,
        };
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "✓ title of a   detail of a");
        assert_eq!(lines[1], "! title of bb  detail of bb");
        assert!(lines[2].starts_with("    meaning  word word"));
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH));
        assert!(lines[3].starts_with("             word"));
        assert!(text.contains("    fix      do this\n"));
        assert!(text.ends_with("Verdict: migration can work on this host (1 warning above).\n"));
    }

    #[test]
    fn failing_verdict() {
        let report = Report {
            findings: vec![
                finding("a", Status::Fail),
                finding("b", Status::Fail),
                finding("c", Status::Warn),
            ],
            migration_possible: false,
        };
        assert_eq!(
            verdict(&report),
            "Verdict: migration cannot work on this host: 2 failures to fix, 1 warning."
        );
    }
}
