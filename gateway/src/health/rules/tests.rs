//! The rules file and where rule values come from.
use super::*;
use burrow_core::api::{Filesystem, Temperature};

#[test]
fn a_file_replaces_the_builtin_rules_and_names_its_mistakes() {
    let r = Rules::parse(
        r#"
[[rule]]
name = "mem"
metric = "memory"
threshold = 0.5
for = "0s"
severity = "critical"

[hook]
command = "cat >> /tmp/alerts"
timeout = "3s"

[webhook]
url = "http://127.0.0.1:9093/api/v2/alerts"
"#,
        "alerts.toml",
    )
    .unwrap();
    assert_eq!(r.rules.len(), 1);
    assert_eq!(r.rules[0].metric, Metric::Memory);
    assert_eq!(r.rules[0].for_s, 0);
    assert!((r.rules[0].clear - 0.475).abs() < 1e-9);
    assert_eq!(r.hook.unwrap().timeout, Duration::from_secs(3));
    assert_eq!(r.webhook.unwrap().timeout, Duration::from_secs(5));

    // Only a hook: the built-in rules stay.
    let r = Rules::parse("[hook]\ncommand = \"true\"\n", "a.toml").unwrap();
    assert_eq!(r.rules, Rules::builtin().rules);
    // `defaults = true` keeps the built-in ones not named again.
    let r = Rules::parse(
        "defaults = true\n[[rule]]\nname = \"cpu_high\"\nmetric = \"cpu\"\nthreshold = 50\n",
        "a.toml",
    )
    .unwrap();
    assert_eq!(r.rules.len(), Rules::builtin().rules.len());
    assert_eq!(r.rules[0].threshold, 50.0);

    for (bad, says) in [
        ("[[rule]]\nname = \"x\"\nmetric = \"gpu\"\nthreshold = 1\n", "unknown metric \"gpu\""),
        ("[[rule]]\nname = \"x\"\nmetric = \"cpu\"\n", "needs a `threshold`"),
        ("[[rule]]\nmetric = \"cpu\"\nthreshold = 1\n", "needs a `name`"),
        ("[[rule]]\nname = \"x\"\nmetric = \"cpu\"\nthreshold = 1\nfor = \"soon\"\n", "line 1: `for`"),
        ("\n\n[[rule]]\nname = \"x\"\nmetric = \"cpu\"\nthreshold = 9\nclear = 10\n", "line 3: rule x: `clear`"),
        ("[[rule]]\nname = \"x\"\nmetric = \"cpu\"\nthreshold = 1\n[[rule]]\nname = \"x\"\nmetric = \"cpu\"\nthreshold = 2\n", "two rules"),
        ("[[rule]]\nname = \"x\"\nmetric = \"cpu\"\nthreshold = 1\nlevel = 3\n", "unknown key `level`"),
        ("colour = 1\n", "line 1: unknown or misplaced key `colour`"),
        ("[hook]\ntimeout = \"1s\"\n", "needs a `command`"),
        ("[hook]\ncommand = \"x\"\ntimeout = \"1h\"\n", "between 1s and 10m"),
        ("[webhook]\nurl = \"https://am/api/v2/alerts\"\n", "plain http"),
        ("[[rule]\n", "alerts.toml"),
    ] {
        let err = Rules::parse(bad, "alerts.toml").unwrap_err();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}

/// Rules on a figure an older agent does not send (zeros, empty lists) have no value.
#[test]
fn missing_figures_have_no_value() {
    let old = Metrics {
        cpu_percent: 3.0,
        ..Metrics::default()
    };
    for m in [
        Metric::Memory,
        Metric::Swap,
        Metric::Disk,
        Metric::Inodes,
        Metric::Temperature,
        Metric::Throttled,
        Metric::Load1,
    ] {
        assert_eq!(m.value(&old), None, "{m:?}");
    }
    assert_eq!(Metric::Cpu.value(&old).unwrap().0, 3.0);
}

#[test]
fn values_pick_the_worst_writable_filesystem_and_the_hottest_sensor() {
    let fs = |mount: &str, total, free, ro| Filesystem {
        mount: mount.into(),
        total,
        free,
        inodes_total: 100,
        inodes_free: 50,
        read_only: ro,
        ..Filesystem::default()
    };
    let m = Metrics {
        mem_total: 1000,
        mem_available: 50,
        mem_used: 10,
        filesystems: vec![
            fs("/", 100, 40, false),
            fs("/var", 100, 5, false),
            fs("/snap/x", 100, 0, true),
        ],
        temperatures: vec![
            Temperature {
                sensor: "a".into(),
                celsius: 50.0,
            },
            Temperature {
                sensor: "cpu-thermal".into(),
                celsius: 81.5,
            },
        ],
        throttled: Some(0x50005),
        ..Metrics::default()
    };
    assert_eq!(Metric::Memory.value(&m).unwrap().0, 95.0);
    assert_eq!(Metric::Disk.value(&m).unwrap(), (95.0, "disk /var".into()));
    assert_eq!(Metric::Inodes.value(&m).unwrap().0, 50.0);
    assert_eq!(
        Metric::Temperature.value(&m).unwrap(),
        (81.5, "temperature cpu-thermal".into())
    );
    assert_eq!(Metric::Throttled.value(&m).unwrap().0, 5.0);
    let r = &Rules::builtin().rules[2];
    assert_eq!(
        r.describe("disk /var", 95.04),
        "disk /var 95 % (threshold > 90 %)"
    );
    assert!(r.holds(90.1) && !r.holds(90.0));
    assert!(!r.cleared(86.0) && r.cleared(85.5));
}
