//! What the README promises about the command line matches the binary.

use crate::support::bin;

#[test]
fn readme_exit_code_table_lists_exactly_the_codes_in_use() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let table = readme
        .split("## Exit codes")
        .nth(1)
        .expect("an Exit codes section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut documented: Vec<u8> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
        .collect();
    documented.sort_unstable();
    let mut used = datamig_cli::exit::ALL.to_vec();
    used.sort_unstable();
    assert_eq!(documented, used);
}

#[test]
fn help_lists_every_command() {
    let out = std::process::Command::new(bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in ["schema", "jobs", "run", "status", "verify"] {
        assert!(
            help.contains(&format!("  {command} ")),
            "{command} missing from --help:\n{help}"
        );
    }
    let out = std::process::Command::new(bin())
        .args(["schema", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for command in [
        "new",
        "upgrade",
        "downgrade",
        "current",
        "history",
        "status",
        "check",
        "repair",
        "test",
    ] {
        assert!(
            help.contains(&format!("  {command} ")),
            "schema {command} missing from --help:\n{help}"
        );
    }
}
