//! The README's metrics and flags tables are generated from the code's own
//! definitions; this test fails when they drift, and rewrites them when run
//! with SOCKDIAG_UPDATE_README=1.

use std::path::PathBuf;

use sockdiag_exporter::cli::{FlagRow, flag_table, subcommand_flag_table};
use sockdiag_exporter::collect::REGISTRY;
use sockdiag_exporter::metrics::all_families;

fn readme_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md")
}

fn escape(cell: &str) -> String {
    cell.replace('|', "\\|")
}

fn metrics_table() -> String {
    let mut out =
        String::from("| metric | type | labels | collectors | meaning |\n|---|---|---|---|---|\n");
    for (m, by) in all_families() {
        let mut labels: Vec<String> = m.labels.iter().map(|l| format!("`{l}`")).collect();
        if m.member {
            labels.push("(`member`)".to_string());
        }
        if labels.is_empty() {
            labels.push("none".to_string());
        }
        let by = if by.is_empty() {
            "(exporter)".to_string()
        } else {
            by.join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {by} | {} |\n",
            m.name,
            m.kind.as_str(),
            labels.join(", "),
            escape(m.help)
        ));
    }
    out
}

fn collectors_table() -> String {
    let mut out = String::from(
        "| collector | default | tier | what it exports and costs |\n|---|---|---|---|\n",
    );
    for r in REGISTRY {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            r.name,
            if r.default_enabled { "on" } else { "off" },
            r.tier.as_str(),
            escape(&r.help.split_whitespace().collect::<Vec<_>>().join(" "))
        ));
    }
    out
}

fn flags_table() -> String {
    table_of_flags(flag_table())
}

fn top_flags_table() -> String {
    table_of_flags(subcommand_flag_table("top"))
}

fn table_of_flags(rows: Vec<FlagRow>) -> String {
    let mut out = String::from("| flag | default | meaning |\n|---|---|---|\n");
    for (flag, value, default, help) in rows {
        if flag == "--help" || flag == "--version" {
            continue;
        }
        let flag = if value.is_empty() {
            format!("`{flag}`")
        } else {
            format!("`{flag} {value}`")
        };
        let default = if default.is_empty() {
            String::new()
        } else {
            format!("`{default}`")
        };
        out.push_str(&format!("| {flag} | {default} | {} |\n", escape(&help)));
    }
    out
}

fn section(readme: &str, name: &str) -> Option<(usize, usize)> {
    let begin = format!("<!-- {name}:begin -->\n");
    let end = format!("<!-- {name}:end -->");
    let start = readme.find(&begin)? + begin.len();
    let stop = readme[start..].find(&end)? + start;
    Some((start, stop))
}

#[test]
fn readme_tables_match_the_code() {
    let path = readme_path();
    let mut readme = std::fs::read_to_string(&path).expect("reading README.md");
    let mut stale = Vec::new();
    for (name, table) in [
        ("collectors-table", collectors_table()),
        ("metrics-table", metrics_table()),
        ("flags-table", flags_table()),
        ("top-flags-table", top_flags_table()),
    ] {
        let (start, stop) = section(&readme, name)
            .unwrap_or_else(|| panic!("README lacks <!-- {name}:begin/end --> markers"));
        if readme[start..stop] != table {
            stale.push(name);
            readme.replace_range(start..stop, &table);
        }
    }
    if std::env::var_os("SOCKDIAG_UPDATE_README").is_some() {
        std::fs::write(&path, readme).expect("writing README.md");
        return;
    }
    assert!(
        stale.is_empty(),
        "README tables {stale:?} are out of date: run SOCKDIAG_UPDATE_README=1 cargo test --test docs"
    );
}

/// Contract names whose collector is a later issue: each must stay
/// unexported until that issue lands (then remove it here), so this list
/// cannot go stale silently.
const PENDING: &[(&str, &str)] = &[];

/// Every name the shared metric contract fixes must be exported.
#[test]
fn contract_metric_names_are_all_exported() {
    let exported: Vec<&str> = all_families().iter().map(|(m, _)| m.name).collect();
    for (name, issue) in PENDING {
        assert!(
            !exported.contains(name),
            "{name} is exported now: remove it from PENDING ({issue})"
        );
    }
    let contract = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/METRICS.md");
    let Ok(text) = std::fs::read_to_string(&contract) else {
        eprintln!(
            "{} not present; skipping the contract cross-check",
            contract.display()
        );
        return;
    };
    for word in text.split('`') {
        let name = word.split('{').next().unwrap_or("");
        if name.starts_with("sockdiag_")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            if PENDING.iter().any(|(p, _)| *p == name) {
                continue;
            }
            assert!(
                exported.contains(&name),
                "contract metric {name} is not exported"
            );
        }
    }
}
