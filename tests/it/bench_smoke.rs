//! A small run of the benchmark harness, so it keeps working between the long
//! runs whose figures are in BENCHMARKS.md.

#[test]
fn benchmark_harness_runs_on_every_database() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_datamig-bench"))
        .args([
            "--db",
            "sqlite,postgres,mariadb",
            "--rows",
            "300",
            "--rounds",
            "1",
            "--batch",
            "100",
        ])
        .output()
        .expect("run datamig-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for db in ["## SQLite", "## PostgreSQL", "## MySQL/MariaDB"] {
        assert!(stdout.contains(db), "{db} missing:\n{stdout}");
    }
    for table in [
        "### Backfill of 300 rows",
        "### Delete of",
        "### Batch size",
        "### CPU-heavy",
        "### Growth",
    ] {
        assert_eq!(
            stdout.matches(table).count(),
            3,
            "{table} missing for a database:\n{stdout}"
        );
    }
    // Workers on the server databases (SQLite runs one writer).
    assert_eq!(
        stdout.matches("### Scaling out").count(),
        2,
        "the workers table is missing for a server database:\n{stdout}"
    );
    assert!(stdout.contains("| --workers 4 |"), "{stdout}");
    // Every job row has figures, not blanks: rows/s is a number.
    let job_rows = stdout
        .lines()
        .filter(|l| l.starts_with("| set-based job") || l.starts_with("| Rust transform"));
    for row in job_rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cells[4].parse::<f64>().is_ok_and(|r| r > 0.0), "{row}");
    }
}

#[test]
fn floor_shapes_run_and_see_every_row() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_datamig-bench"))
        .args([
            "--db",
            "sqlite,mariadb",
            "--rows",
            "300",
            "--rounds",
            "1",
            "--batch",
            "100",
            "--only",
            "floor",
        ])
        .output()
        .expect("run datamig-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each loop fails the harness unless it saw (and, writing, wrote) every row.
    for (title, shapes) in [
        (
            "### Floor: SQLite write shapes",
            &[
                "ReadOnly",
                "Values",
                "JsonEach",
                "PerRow",
                "JsonRead",
                "PerRowNative",
                "ValuesNative",
                "PerRowNativeRowid",
            ][..],
        ),
        (
            "### Floor: MariaDB write shapes",
            &[
                "ReadOnly",
                "JsonTable",
                "UnionValues",
                "TempTable",
                "Upsert",
            ][..],
        ),
    ] {
        let section = stdout
            .split(title)
            .nth(1)
            .and_then(|rest| rest.split("###").next())
            .unwrap_or_else(|| panic!("{title} missing: {stdout}"));
        for shape in shapes {
            assert!(
                section.contains(&format!("| bare loop, {shape} |")),
                "{title}, {shape}: {stdout}"
            );
        }
    }
}
