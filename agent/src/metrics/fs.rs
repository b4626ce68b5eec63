//! Which mounts are real filesystems, and their sizes (`statvfs(2)`).
//!
//! Real means backed by a block device (`/dev/…`, or a ZFS dataset) and not one of the read-only
//! images or pseudo filesystems that are always "full" or mean nothing to an operator (tmpfs,
//! overlay, squashfs snaps, proc, cgroup, nsfs, autofs…); network filesystems are left out too (a
//! hung server must not hang the beat). One entry per mount point (the top of a stack of mounts), and
//! one per device: bind mounts and btrfs subvolumes of one device count once, at the mount of the
//! whole filesystem with the shortest path (`/` when the device is the root).

use burrow_core::api::Filesystem;
use rustix::fs::StatVfsMountFlags;

/// Filesystems reported at most; beats stay small.
const MAX_FILESYSTEMS: usize = 64;

/// Types never reported, whatever their source says.
const NOT_REAL: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "erofs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "udf",
];

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount: String,
    pub device: String,
    pub fstype: String,
    /// `major:minor` of the mounted device.
    pub dev: String,
    /// The directory of the filesystem mounted here (`/` unless a bind mount of a subdirectory).
    pub root: String,
}

/// Every mount of `/proc/self/mountinfo`, in the file's order (lines that do not parse are skipped).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional…] - type source super-options
            let (left, right) = line.split_once(" - ")?;
            let mut left = left.split(' ');
            let dev = left.nth(2)?;
            let root = left.next()?;
            let mount = left.next()?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let device = right.next()?;
            Some(Mount {
                mount: unescape(mount),
                device: unescape(device),
                fstype: fstype.to_string(),
                dev: dev.to_string(),
                root: unescape(root),
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mountinfo paths as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            // Three octal digits fit a byte only up to \377.
            Some(d) if d[0] <= b'3' => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The real filesystems among `mounts` (see the module doc), sorted by mount point.
pub fn real(mounts: &[Mount]) -> Vec<Mount> {
    // The top of each mount point: a later line mounted over an earlier one.
    let mut top: Vec<&Mount> = Vec::new();
    for m in mounts {
        top.retain(|t| t.mount != m.mount);
        top.push(m);
    }
    let mut real: Vec<Mount> = Vec::new();
    for m in top.into_iter().filter(|m| is_real(m)) {
        match real
            .iter_mut()
            .find(|r| r.device == m.device || r.dev == m.dev)
        {
            Some(seen) if better(m, seen) => *seen = m.clone(),
            Some(_) => {}
            None => real.push(m.clone()),
        }
    }
    real.sort_by(|a, b| a.mount.cmp(&b.mount));
    real.truncate(MAX_FILESYSTEMS);
    real
}

fn is_real(m: &Mount) -> bool {
    if NOT_REAL.contains(&m.fstype.as_str()) || m.fstype.starts_with("fuse") {
        return false;
    }
    m.device.starts_with("/dev/") || m.fstype == "zfs"
}

/// `a` is the better mount to report a device at than `b`: the whole filesystem rather than a bind
/// mount of a subdirectory, then fewer path components, then the shorter path.
fn better(a: &Mount, b: &Mount) -> bool {
    let key = |m: &Mount| {
        let depth = m.mount.split('/').filter(|c| !c.is_empty()).count();
        (m.root != "/", depth, m.mount.len())
    };
    key(a) < key(b)
}

/// Every real filesystem of `mountinfo` (the text of `/proc/self/mountinfo`) with its `statvfs`
/// figures; a mount `statvfs` fails on (gone, no permission) is left out.
pub fn filesystems(mountinfo: &str) -> Vec<Filesystem> {
    real(&parse_mountinfo(mountinfo))
        .into_iter()
        .filter_map(|m| {
            let s = rustix::fs::statvfs(m.mount.as_str()).ok()?;
            Some(Filesystem {
                total: s.f_blocks.saturating_mul(s.f_frsize),
                available: s.f_bavail.saturating_mul(s.f_frsize),
                free: s.f_bfree.saturating_mul(s.f_frsize),
                inodes_total: s.f_files,
                inodes_free: s.f_ffree,
                read_only: s.f_flag.contains(StatVfsMountFlags::RDONLY),
                mount: m.mount,
                device: m.device,
                fstype: m.fstype,
            })
        })
        .collect()
}

/// Size and space available to unprivileged users of the root filesystem, bytes.
#[derive(Debug, Clone, Copy)]
pub struct Root {
    pub total: u64,
    pub available: u64,
}

/// `statvfs("/")`, whatever the root is (an overlay in a container still has a size).
pub fn root() -> Option<Root> {
    let s = rustix::fs::statvfs("/").ok()?;
    Some(Root {
        total: s.f_blocks.saturating_mul(s.f_frsize),
        available: s.f_bavail.saturating_mul(s.f_frsize),
    })
}
