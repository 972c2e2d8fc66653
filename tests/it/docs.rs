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

/// The help a person reads first, compared with its snapshot in
/// `tests/snapshots/` (worked examples at the foot of each): a change to the
/// command line shows up here. `UPDATE_SNAPSHOTS=1` writes them anew.
#[test]
fn help_texts_match_their_snapshots() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    for (args, file) in [
        (&["--help"][..], "help.txt"),
        (&["run", "--help"], "run-help.txt"),
        (&["schema", "upgrade", "--help"], "schema-upgrade-help.txt"),
        (&["schema", "adopt", "--help"], "schema-adopt-help.txt"),
        (&["completions", "--help"], "completions-help.txt"),
    ] {
        let out = std::process::Command::new(bin())
            .args(args)
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            help.contains("Examples:\n"),
            "{args:?} has no examples:\n{help}"
        );
        let path = dir.join(file);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &help).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            help, expected,
            "`datamig {}` differs from {}; if the change is meant, UPDATE_SNAPSHOTS=1 cargo test --test it help_texts",
            args.join(" "),
            path.display()
        );
    }
}

#[test]
fn completions_for_every_shell_and_bash_reads_its_script() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = std::process::Command::new(bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["datamig", "schema", "adopt", "max-batches"] {
            assert!(script.contains(word), "{shell}: no {word} in the script");
        }
        if shell == "bash" {
            let path = std::env::temp_dir()
                .join(format!("datamig-completion-{}.bash", std::process::id()));
            std::fs::write(&path, &script).unwrap();
            let checked = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .unwrap();
            let _ = std::fs::remove_file(&path);
            assert!(checked.status.success(), "bash -n: {checked:?}");
        }
    }
    // Into a pipe closed after its first line: no panic, no error.
    let mut child = std::process::Command::new(bin())
        .args(["completions", "zsh"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
