//! `pollcap bench` end to end on a small configuration: it writes the
//! report, the JSON and every chart, and its figures show what each cap
//! strategy does (a lost wakeup is recovered within a fixed cap, never
//! without one, at once when spinning; spinning wakes constantly).

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_compares_strategies_and_backends_and_writes_its_report() {
    let out = std::env::temp_dir().join(format!("pollcap-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_pollcap"))
        .args([
            "bench",
            "--quick",
            "--strategies",
            "off,100,0",
            "--idle",
            "0",
            "--hold",
            "1",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), report);
    let rows: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    assert_eq!(rows.len(), 6, "3 strategies × 2 backends");
    for chart in [
        "idle-wakeups-heartbeats-off.svg",
        "idle-wakeups-heartbeats-on.svg",
        "idle-cpu-heartbeats-off.svg",
        "idle-cpu-heartbeats-on.svg",
        "lost-wakeup-recovery.svg",
        "deadline-overshoot-p99.svg",
        "echo-throughput.svg",
        "echo-p99.svg",
        "shutdown-reaction.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"),
            "{chart}"
        );
        assert!(report.contains(chart), "report links {chart}");
    }
    for r in &rows {
        let who = format!("{} {}", r["backend"], r["strategy"]);
        assert!(report.contains(&format!(
            "{} · {}",
            r["backend"].as_str().unwrap(),
            r["strategy"].as_str().unwrap()
        )));
        let recovery = r["recovery_ms"].as_f64();
        let idle_off = r["idle"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["heartbeats"] == false)
            .unwrap();
        let wakeups = idle_off["wakeups_per_sec"].as_f64().unwrap();
        match r["strategy"].as_str().unwrap() {
            "unbounded" => {
                assert_eq!(recovery, None, "{who}: never noticed without a cap");
                assert!(wakeups <= 2.0, "{who}: {wakeups} wakeups/s");
            }
            "fixed(100ms)" => {
                let ms = recovery.unwrap();
                assert!((100.0..600.0).contains(&ms), "{who}: {ms} ms");
                assert!(
                    (7.0..=13.0).contains(&wakeups),
                    "{who}: {wakeups} wakeups/s"
                );
            }
            "spin" => {
                assert!(recovery.unwrap() < 50.0, "{who}");
                assert!(wakeups > 1000.0, "{who}: {wakeups} wakeups/s");
            }
            other => panic!("unexpected strategy {other}"),
        }
        assert!(r["echo_msgs_per_sec"].as_f64().unwrap() > 0.0, "{who}");
        // SIGTERM exists on Unix only; elsewhere the cell says n/a.
        assert_eq!(r["shutdown_ms"].is_number(), cfg!(unix), "{who}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
