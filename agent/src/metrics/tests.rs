//! The heartbeat's figures against this machine (read back with other tools: `free`, `stat -f`,
//! `findmnt`, `ps`), the parsers against fixed text, the sensors against a fake `/sys`, and the data
//! dir fault against a directory that really turns read-only.

use std::path::Path;
use std::process::Command;

use super::faults::{self, Faults};
use super::fs::{self, Mount};
use super::proc::{self, CpuTimes, Memory};
use super::{thermal, Sampler};
use burrow_core::api::{fault, Fault};

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Memory, swap, load, uptime, CPU cores and processes as `free`, `/proc` and `ps` see them.
#[test]
fn memory_load_cpu_and_processes_match_this_machine() {
    let m = Sampler::new().sample();
    // `free -b` prints MemTotal and SwapTotal (kB in /proc) in bytes.
    let free = output("free", &["-b"]);
    let column = |row: &str| -> u64 {
        let line = free.lines().find(|l| l.starts_with(row)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(m.mem_total, column("Mem:"));
    assert_eq!(m.swap_total, column("Swap:"));
    assert!(
        m.mem_available > 0 && m.mem_available <= m.mem_total,
        "{m:?}"
    );
    assert_eq!(m.mem_used, m.mem_total - m.mem_available);
    assert!(m.swap_used <= m.swap_total);

    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap();
    let load: Vec<f64> = loadavg
        .split_whitespace()
        .take(3)
        .map(|f| f.parse().unwrap())
        .collect();
    for (got, want) in [m.load1, m.load5, m.load15].iter().zip(&load) {
        assert!((got - want).abs() < 0.5, "load {got} vs {want}");
    }
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (m.uptime_s as f64 - uptime).abs() < 3.0,
        "{} vs {uptime}",
        m.uptime_s
    );

    // One entry per online core line of /proc/stat, each a percentage.
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(m.cpu_cores.len(), cores, "{:?}", m.cpu_cores);
    assert!((0.0..=100.0).contains(&m.cpu_percent), "{}", m.cpu_percent);
    assert!(m.cpu_cores.iter().all(|c| (0.0..=100.0).contains(c)));

    let ps = output("ps", &["-e", "--no-headers", "-o", "pid"])
        .lines()
        .count();
    assert!(
        (i64::from(m.processes) - ps as i64).abs() <= 50,
        "{} vs ps {ps}",
        m.processes
    );
    assert!(m.agent_rss > 0);
}

/// Busy CPU shows up as use: a thread spinning for a while between two beats.
#[test]
fn cpu_use_is_measured_between_beats() {
    let mut sampler = Sampler::new();
    sampler.sample();
    let spin = std::time::Instant::now();
    let mut x = 0u64;
    while spin.elapsed() < std::time::Duration::from_millis(300) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let m = sampler.sample();
    assert!(m.cpu_percent > 0.0, "{m:?}");
    assert!(m.cpu_cores.iter().any(|c| *c > 0.0), "{:?}", m.cpu_cores);
}

/// Every reported filesystem is what `stat -f` says of its mount point (total and inodes exact,
/// available within a few MB, as other programs write meanwhile), none is tmpfs/overlay/squashfs,
/// and every block-device mount `findmnt` lists is covered (by its mount point or its device).
#[test]
fn filesystems_match_statvfs_and_leave_out_pseudo_filesystems() {
    let m = Sampler::new().sample();
    assert!(!m.filesystems.is_empty(), "no filesystem found");
    for f in &m.filesystems {
        assert!(
            !["tmpfs", "overlay", "squashfs", "devtmpfs", "proc", "sysfs", "cgroup2"]
                .contains(&f.fstype.as_str()),
            "{f:?}"
        );
        let line = output("stat", &["-f", "-c", "%b %S %a %f %c %d", &f.mount]);
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let (blocks, size, avail, free, inodes, inodes_free) = (v[0], v[1], v[2], v[3], v[4], v[5]);
        assert_eq!(f.total, blocks * size, "{f:?}");
        let slack = 8 << 20;
        assert!(
            f.available.abs_diff(avail * size) < slack,
            "{f:?} vs {avail}"
        );
        assert!(f.free.abs_diff(free * size) < slack, "{f:?} vs {free}");
        assert_eq!(f.inodes_total, inodes, "{f:?}");
        assert!(f.inodes_free.abs_diff(inodes_free) < 10_000, "{f:?}");
    }
    let mounts = output("findmnt", &["-rn", "-o", "TARGET,FSTYPE,SOURCE"]);
    for line in mounts.lines() {
        let mut cols = line.split(' ');
        let (target, fstype, source) = (
            cols.next().unwrap(),
            cols.next().unwrap(),
            cols.next().unwrap(),
        );
        if !source.starts_with("/dev/") || ["squashfs", "iso9660"].contains(&fstype) {
            continue;
        }
        let source = source.split('[').next().unwrap();
        assert!(
            m.filesystems
                .iter()
                .any(|f| f.mount == target || f.device == source),
            "{line} is missing from {:?}",
            m.filesystems
        );
    }
    // The root filesystem stays in the old fields.
    let root = output("stat", &["-f", "-c", "%b %S", "/"]);
    let v: Vec<u64> = root
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(m.disk_total, v[0] * v[1]);
    assert!(m.disk_free > 0 && m.disk_free <= m.disk_total);
}

#[test]
fn network_counters_never_go_back_and_loopback_is_left_out() {
    let mut sampler = Sampler::new();
    let before = sampler.sample().network;
    // Some traffic on whatever interface carries it, loopback at least.
    let _ = std::net::TcpStream::connect("127.0.0.1:9");
    let after = sampler.sample().network;
    assert!(after.iter().all(|i| i.name != "lo"), "{after:?}");
    for a in &before {
        let b = after.iter().find(|b| b.name == a.name);
        if let Some(b) = b {
            assert!(
                b.rx_bytes >= a.rx_bytes && b.tx_bytes >= a.tx_bytes,
                "{a:?} -> {b:?}"
            );
        }
    }
    // The same counters the kernel shows in sysfs.
    for i in &after {
        let path = format!("/sys/class/net/{}/statistics/rx_bytes", i.name);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let now: u64 = text.trim().parse().unwrap();
            assert!(now >= i.rx_bytes, "{path}: {now} < {}", i.rx_bytes);
        }
    }
}

fn mount(mount: &str, device: &str, fstype: &str, dev: &str) -> Mount {
    Mount {
        mount: mount.into(),
        device: device.into(),
        fstype: fstype.into(),
        dev: dev.into(),
        root: "/".into(),
    }
}

/// What a Pi with a container runtime shows: the SD card's root and boot partitions, a USB disk
/// bind-mounted twice, btrfs subvolumes, an overlay, snaps, tmpfs, proc, cgroup, and a mount point
/// with a space in it (octal-escaped by the kernel).
const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs udev rw,size=1k
27 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw
28 27 179:1 / /boot/firmware rw,relatime - vfat /dev/mmcblk0p1 rw
29 27 0:30 / /run rw - tmpfs tmpfs rw
30 27 8:1 / /mnt/usb\\040disk rw - ext4 /dev/sda1 rw
31 27 8:1 /photos /srv/photos rw - ext4 /dev/sda1 rw
32 27 8:1 / /mnt/usb\\040disk/again rw - ext4 /dev/sda1 rw
33 27 0:40 / /data rw - btrfs /dev/sdb1 rw,subvol=/data
34 27 0:41 / /data/home rw - btrfs /dev/sdb1 rw,subvol=/home
35 27 0:50 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/a
36 27 7:0 / /snap/core/1 ro - squashfs /dev/loop0 ro
37 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
38 27 0:51 / /tank rw - zfs tank rw
39 27 0:52 / /mnt/nas rw - nfs4 nas:/export rw
40 27 0:53 / /mnt/fuse rw - fuse.sshfs pi@host:/ rw
41 28 0:54 / /boot/firmware rw - tmpfs tmpfs rw
malformed line
";

#[test]
fn only_real_filesystems_one_per_mount_point_and_device() {
    let all = fs::parse_mountinfo(MOUNTINFO);
    assert_eq!(all.len(), 18, "{all:?}");
    assert_eq!(all[6].mount, "/mnt/usb disk");
    let real = fs::real(&all);
    assert_eq!(
        real,
        [
            mount("/", "/dev/mmcblk0p2", "ext4", "179:2"),
            // One entry per device: sda1 where it is mounted whole (not the bind mount of its
            // /photos, although that path is shorter, nor the deeper second mount), one btrfs
            // filesystem for both subvolumes.
            mount("/data", "/dev/sdb1", "btrfs", "0:40"),
            mount("/mnt/usb disk", "/dev/sda1", "ext4", "8:1"),
            mount("/tank", "tank", "zfs", "0:51"),
        ]
    );
    // /boot/firmware is hidden under a tmpfs mounted over it: what statvfs would see is the tmpfs.
    assert!(real.iter().all(|m| m.mount != "/boot/firmware"));
}

#[test]
fn parsers_take_garbage_without_panicking() {
    for text in [
        "",
        "\n",
        "cpu",
        "cpu x y z",
        "cpu99999999999999999999 1 2 3 4",
        "\u{0}\u{ff}",
    ] {
        assert_eq!(proc::loadavg(text), None);
        assert_eq!(proc::uptime(text), 0);
        assert_eq!(Memory::parse(text), Memory::default());
        assert!(proc::network(text).is_empty());
        assert_eq!(proc::own_rss(text), 0);
        assert!(fs::parse_mountinfo(text).is_empty());
        let _ = CpuTimes::parse(text);
    }
    let huge = "cpu 18446744073709551615 18446744073709551615 1 1 1\ncpu0 1 1 1 1";
    let t = CpuTimes::parse(huge).unwrap();
    let _ = t.usage_since(&t);
    assert_eq!(
        fs::parse_mountinfo("1 2 3:4 / /a\\ rw - ext4 /dev/x\\1 rw")[0].mount,
        "/a\\"
    );
}

#[test]
fn cpu_use_is_busy_time_over_all_time_per_core() {
    let before =
        CpuTimes::parse("cpu 100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0\ncpu1 50 0 50 400 0")
            .unwrap();
    // Core 0: 100 busy of 100; core 1: 0 busy, 50 idle + 50 iowait (iowait is idle); core 3 is new.
    let after = CpuTimes::parse(
        "cpu 200 0 100 850 50 0 0 0 0 0\ncpu0 100 0 100 400 0\ncpu1 50 0 50 450 50\ncpu3 1 1 1 1",
    )
    .unwrap();
    let (all, cores) = after.usage_since(&before);
    assert!((all - 50.0).abs() < 0.01, "{all}");
    assert_eq!(cores, [100.0, 0.0, 0.0, 0.0]);
}

#[test]
fn meminfo_net_dev_and_loadavg_parse() {
    let mem = Memory::parse(
        "MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable: 600 kB\nSwapTotal: 200 kB\nSwapFree: 50 kB\n",
    );
    assert_eq!(
        mem,
        Memory {
            total: 1000 * 1024,
            available: 600 * 1024,
            swap_total: 200 * 1024,
            swap_free: 50 * 1024
        }
    );
    let dev = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n  eth0: 1234 9 0 0 0 0 0 0 5678 7 0 0 0 0 0 0\nwlan0: 1 1 0 0 0 0 0 0 2 1 0 0 0 0 0 0\n";
    let net = proc::network(dev);
    assert_eq!(net.len(), 2);
    assert_eq!(
        (net[0].name.as_str(), net[0].rx_bytes, net[0].tx_bytes),
        ("eth0", 1234, 5678)
    );
    assert_eq!(net[1].name, "wlan0");
    assert_eq!(
        proc::loadavg("0.50 1.25 2.00 1/100 42\n"),
        Some((0.5, 1.25, 2.0))
    );
}

fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A Pi's sysfs: the SoC zone (also registered as hwmon `cpu_thermal`, left out as a copy), a zone
/// that cannot be read, a coretemp-style hwmon with a label and an implausible reading, and the
/// firmware's throttling flags.
#[test]
fn temperatures_and_throttling_from_sysfs() {
    let sys = tempfile::tempdir().unwrap();
    let s = sys.path();
    write(s, "class/thermal/thermal_zone0/type", "cpu-thermal\n");
    write(s, "class/thermal/thermal_zone0/temp", "48312\n");
    write(s, "class/thermal/thermal_zone1/type", "gpu-thermal\n");
    write(s, "class/thermal/cooling_device0/type", "fan\n");
    write(s, "class/hwmon/hwmon0/name", "cpu_thermal\n");
    write(s, "class/hwmon/hwmon0/temp1_input", "48312\n");
    write(s, "class/hwmon/hwmon2/name", "coretemp\n");
    write(s, "class/hwmon/hwmon2/temp1_input", "51000\n");
    write(s, "class/hwmon/hwmon2/temp1_label", "Package id 0\n");
    write(s, "class/hwmon/hwmon2/temp10_input", "-273000\n");
    write(s, "class/hwmon/hwmon2/temp2_input", "49500\n");
    let t = thermal::temperatures(s);
    let got: Vec<(&str, f32)> = t.iter().map(|t| (t.sensor.as_str(), t.celsius)).collect();
    assert_eq!(
        got,
        [
            ("cpu-thermal", 48.312),
            ("coretemp/Package id 0", 51.0),
            ("coretemp/temp2", 49.5)
        ]
    );
    assert_eq!(thermal::throttled(s), None);
    write(
        s,
        "devices/platform/soc/soc:firmware/get_throttled",
        "50005\n",
    );
    assert_eq!(thermal::throttled(s), Some(0x50005));
    write(
        s,
        "devices/platform/soc/soc:firmware/get_throttled",
        "0x0\n",
    );
    assert_eq!(thermal::throttled(s), Some(0));
    write(
        s,
        "devices/platform/soc/soc:firmware/get_throttled",
        "garbage\n",
    );
    assert_eq!(thermal::throttled(s), None);

    // The sampler reads the same tree; /proc stays the real one.
    let m = Sampler::at(Path::new("/proc"), s).sample();
    assert_eq!(m.temperatures, t);
    assert!(m.mem_total > 0);
}

/// Where sysfs has no sensors (this VM, most containers): empty, never zero.
#[test]
fn no_sensors_means_empty_lists() {
    let empty = tempfile::tempdir().unwrap();
    assert!(thermal::temperatures(empty.path()).is_empty());
    assert_eq!(thermal::throttled(empty.path()), None);
    let m = Sampler::at(empty.path(), empty.path()).sample();
    assert_eq!((m.mem_total, m.processes, m.cpu_cores.len()), (0, 0, 0));
}

/// The env var that makes `data_dir_child` do its part (in a mount namespace of its own).
const CHILD_DIR: &str = "BURROW_TEST_READ_ONLY_DIR";

/// Issue 8's `data_dir_not_writable`: no fault on a writable data dir, a fault naming the dir once
/// it is read-only, none again once it is writable. As root (which permission bits do not stop),
/// the dir is made a read-only bind mount in a private mount namespace (`unshare -m`, a child run
/// of this test binary); as another user, `chmod 0500` is enough.
#[test]
fn data_dir_fault_appears_when_the_data_dir_turns_read_only() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(faults::data_dir(dir.path()), None);
    if !rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let set =
            |mode| std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode));
        set(0o500).unwrap();
        let fault = faults::data_dir(dir.path());
        set(0o700).unwrap();
        assert_read_only_fault(fault, dir.path());
        assert_eq!(faults::data_dir(dir.path()), None);
        return;
    }
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "metrics::tests::data_dir_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .output()
        .expect("running unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHILD OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The read-only mount lived in the child's namespace only.
    assert_eq!(faults::data_dir(dir.path()), None);
}

/// The child half of the test above; does nothing in a normal run.
#[test]
fn data_dir_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let mount = |args: &[&str]| {
        let status = Command::new("mount")
            .args(args)
            .arg(dir)
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount {args:?}");
    };
    mount(&["--bind"]);
    Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(dir)
        .status()
        .unwrap()
        .success()
        .then_some(())
        .expect("remount read-only");
    let checks = Faults::new(dir);
    let faults = checks.check();
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert_read_only_fault(faults.into_iter().next(), dir);
    Command::new("mount")
        .args(["-o", "remount,bind,rw"])
        .arg(dir)
        .status()
        .unwrap()
        .success()
        .then_some(())
        .expect("remount read-write");
    assert_eq!(checks.check(), []);
    println!("CHILD OK");
}

fn assert_read_only_fault(fault: Option<Fault>, dir: &Path) {
    let fault = fault.expect("a fault for a read-only data dir");
    assert_eq!(fault.code, fault::DATA_DIR_NOT_WRITABLE);
    assert!(
        fault.message.contains(&dir.display().to_string()),
        "{fault:?}"
    );
}

/// The hook issue 9's policy check plugs into: its fault comes after the data dir's, while it holds.
#[test]
fn extra_checks_add_their_faults() {
    let dir = tempfile::tempdir().unwrap();
    let holds = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = holds.clone();
    let checks = Faults::new(dir.path()).with_check(Box::new(move || {
        flag.load(std::sync::atomic::Ordering::Relaxed)
            .then(|| Fault {
                code: fault::POLICY_INVALID.into(),
                message: "policy.toml line 3: unknown key".into(),
            })
    }));
    assert_eq!(checks.check()[0].code, fault::POLICY_INVALID);
    holds.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(checks.check(), []);
}
