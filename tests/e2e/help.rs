//! `gateway --help` and `agent --help` for people (issue 12, papercut 8): every subcommand, at
//! every depth, has a one-line summary in its parent's list and an example in its own long help.

use std::process::Command;

use crate::util::{bin, isolate};

/// The `Commands:` section of a help text: (name, summary) per line, without `help` itself.
fn commands(help: &str) -> Vec<(String, String)> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let l = l.trim();
            let (name, summary) = l.split_once(' ').unwrap_or((l, ""));
            (name != "help").then(|| (name.to_string(), summary.trim().to_string()))
        })
        .collect()
}

fn long_help(program: &str, path: &[String]) -> String {
    let out = isolate(&mut Command::new(bin(program)))
        .args(path)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} {path:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// Walks the subcommand tree below `path`; returns the subcommands it checked.
fn check(program: &str, path: &mut Vec<String>, missing: &mut Vec<String>) -> usize {
    let help = long_help(program, path);
    let mut seen = 0;
    for (name, summary) in commands(&help) {
        path.push(name);
        let shown = format!("{program} {}", path.join(" "));
        if summary.is_empty() {
            missing.push(format!("{shown}: no one-line summary"));
        }
        let own = long_help(program, path);
        let has_example = own
            .lines()
            .any(|l| l.trim_start().starts_with("Example") && l.trim_end().ends_with(':'))
            && own.contains(&format!("{program} {}", path.join(" ")));
        if !has_example {
            missing.push(format!("{shown}: no example in --help"));
        }
        seen += 1 + check(program, path, missing);
        path.pop();
    }
    seen
}

#[test]
fn every_subcommand_has_a_summary_and_an_example_in_its_help() {
    let mut missing = Vec::new();
    for program in ["gateway", "agent"] {
        let seen = check(program, &mut Vec::new(), &mut missing);
        assert!(seen >= 3, "{program}: only {seen} subcommands found");
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
