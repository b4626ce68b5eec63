//! Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.
//!
//! Every state file of burrow (keys, registry, agent state, sshd config) goes through [`write`], so a
//! crash or power cut leaves either the old or the new contents, never a torn file.
//!
//! Each write has its own temp name (pid, a process-wide counter and random bytes): concurrent writers
//! of one path (threads of one process, or two processes) must never share a temp file, or one renames
//! the other's half-written file into place or finds its own temp gone. Concurrent writers of one path
//! still race for which contents land last; callers that derive contents from shared state serialize
//! their read-and-write themselves (see the gateway's registry and `authorized_keys`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Replaces `path` with `contents` atomically; the file gets permission bits `mode` from creation on
/// (a secret is never briefly world-readable).
pub fn write(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let shown = path.display();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            format!("writing {shown}"),
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let tmp = temp_path(dir, name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` is filtered by the umask at creation; set it exactly.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(format!("writing {shown}"), e)
    })
}

/// `.<name>.tmp-<pid>-<counter>-<random>` in `dir`: unique per write within the process (counter) and
/// across processes, including a pid reused after a crash left a temp file behind (random).
fn temp_path(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{n}-{}",
        std::process::id(),
        crate::join::hex(&crate::random_bytes::<4>())
    ));
    dir.join(tmp_name)
}

/// Creates `dir` (and parents) if missing and sets it to 0700: burrow's data dirs hold secrets.
pub fn private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| Error::io(format!("setting permissions of {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_contents_with_mode() {
        let dir = std::env::temp_dir().join(format!("burrow-atomic-{}", std::process::id()));
        super::private_dir(&dir).unwrap();
        let path = dir.join("state.json");
        super::write(&path, b"one", 0o600).unwrap();
        super::write(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files are left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Regression: every writer of a path used `.<name>.tmp<pid>`, so two threads writing at once
    /// truncated, renamed or lost each other's temp file ("No such file or directory").
    #[test]
    fn concurrent_writers_of_one_path_all_succeed() {
        let dir = std::env::temp_dir().join(format!("burrow-atomic-race-{}", std::process::id()));
        super::private_dir(&dir).unwrap();
        let path = dir.join("authorized_keys");
        let writers: Vec<_> = (0..16)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let text = format!("writer {t} round {i}\n").repeat(64);
                        super::write(&path, text.as_bytes(), 0o600).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        // Whole contents of one write, never a mix.
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        assert!(text.lines().all(|l| l == first) && text.lines().count() == 64);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
