//! File transfers over the in-memory tunnel twin: streamed puts and gets, what an interrupted or
//! wrong-sized put leaves (nothing), and the errors of gets.

use std::path::Path;
use std::time::{Duration, Instant};

use burrow_core::protocol::{ExitStatus, FileParams, Message, Purpose, INITIAL_WINDOW, MAX_CHUNK};
use sha2::{Digest, Sha256};

use super::STREAM;
use crate::service::tests::{wait_until, TestGateway, TestNode};

fn open(gateway: &mut TestGateway, id: u32, params: FileParams) {
    gateway.send(&Message::Open {
        id,
        stream: STREAM,
        purpose: Purpose::File,
        params: serde_json::to_string(&params).unwrap(),
    });
}

fn put_params(path: &Path, size: Option<u64>) -> FileParams {
    FileParams {
        op: "put".into(),
        path: path.to_string_lossy().into_owned(),
        job: "test".into(),
        mode: Some(0o640),
        size,
    }
}

fn get_params(path: &Path) -> FileParams {
    FileParams {
        op: "get".into(),
        path: path.to_string_lossy().into_owned(),
        job: "test".into(),
        mode: None,
        size: None,
    }
}

/// The last frame of a transfer: `Ok(status)` for `Exit`, `Err(message)` for `Failed`.
type Last = Result<ExitStatus, String>;

fn last_frame(message: Message, id: u32) -> Option<Last> {
    match message {
        Message::Exit { id: i, status } if i == id => Some(Ok(status)),
        Message::Failed { id: i, message } if i == id => Some(Err(message)),
        _ => None,
    }
}

/// Streams `total` bytes made by `chunk(offset, buf)` within the agent's credit, then `Eof`
/// (unless `eof` is false); returns the SHA-256 sent and the last frame.
fn put(
    gateway: &mut TestGateway,
    id: u32,
    params: FileParams,
    total: u64,
    eof: bool,
) -> ([u8; 32], Last) {
    open(gateway, id, params);
    let mut hash = Sha256::new();
    let mut credit = INITIAL_WINDOW as u64;
    let mut sent = 0u64;
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut eof_sent = !eof;
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(120), "stuck");
        if sent == total && !eof_sent {
            gateway.send(&Message::Eof { id, stream: STREAM });
            eof_sent = true;
        }
        if sent < total && credit > 0 {
            let n = credit.min(MAX_CHUNK as u64).min(total - sent) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((sent + i as u64) % 251) as u8;
            }
            hash.update(&buf[..n]);
            gateway.send(&Message::Data {
                id,
                stream: STREAM,
                data: buf[..n].to_vec(),
            });
            sent += n as u64;
            credit -= n as u64;
            continue;
        }
        match gateway.recv() {
            Message::Credit {
                id: i,
                stream: STREAM,
                bytes,
            } if i == id => credit += u64::from(bytes),
            other => match last_frame(other, id) {
                Some(last) => return (hash.finalize().into(), last),
                None => panic!("unexpected frame during a put"),
            },
        }
    }
}

/// Gets `params.path`, granting credit as it comes; returns the bytes and the last frame.
fn get(gateway: &mut TestGateway, id: u32, params: FileParams) -> (Vec<u8>, bool, Last) {
    open(gateway, id, params);
    let mut data = Vec::new();
    let mut eof = false;
    loop {
        match gateway.recv() {
            Message::Data {
                id: i,
                stream: STREAM,
                data: chunk,
            } if i == id => {
                assert!(!eof && chunk.len() <= MAX_CHUNK);
                gateway.send(&Message::Credit {
                    id,
                    stream: STREAM,
                    bytes: chunk.len() as u32,
                });
                data.extend(chunk);
            }
            Message::Eof {
                id: i,
                stream: STREAM,
            } if i == id => eof = true,
            other => match last_frame(other, id) {
                Some(last) => return (data, eof, last),
                None => panic!("unexpected frame during a get"),
            },
        }
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 100 MB streamed to disk: the file matches byte for byte, has the mode asked for, and the agent
/// never held more than its window: the process's RSS grows by far less than the file. Measured in
/// a child process running only this test, so other tests' buffers do not count.
#[test]
fn put_of_100_mb_streams_with_bounded_memory_and_matching_sha() {
    const NAME: &str = "files::tests::put_of_100_mb_streams_with_bounded_memory_and_matching_sha";
    if std::env::var_os("BURROW_TEST_ALONE").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env("BURROW_TEST_ALONE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the isolated run failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    const TOTAL: u64 = 100_000_000;
    let node = TestNode::new(8);
    let dest = tempfile::tempdir().unwrap();
    let path = dest.path().join("big.bin");
    let mut gateway = node.connect();
    let before = rss_kib();
    let (sent, last) = put(&mut gateway, 1, put_params(&path, Some(TOTAL)), TOTAL, true);
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert_eq!(last.unwrap().exit_code, Some(0));
    let mut file = std::fs::File::open(&path).unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    assert_eq!(<[u8; 32]>::from(hash.finalize()), sent);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o640);
    eprintln!("RSS grew by {grown_mib} MiB during a 95 MiB put");
    assert!(
        grown_mib < 16,
        "RSS grew by {grown_mib} MiB during a 95 MiB put"
    );
    assert_eq!(entries(dest.path()), ["big.bin"]);
}

/// The connection drops mid-put: neither the file nor its temp file is left.
#[test]
fn interrupted_put_leaves_no_file_and_no_temp_file() {
    let node = TestNode::new(8);
    let dest = tempfile::tempdir().unwrap();
    let path = dest.path().join("cut.bin");
    let mut gateway = node.connect();
    open(&mut gateway, 1, put_params(&path, None));
    gateway.send(&Message::Data {
        id: 1,
        stream: STREAM,
        data: vec![7; MAX_CHUNK],
    });
    // The temp file exists once the first chunk is written (its credit comes back).
    assert!(matches!(gateway.recv(), Message::Credit { id: 1, .. }));
    assert_eq!(entries(dest.path()).len(), 1);
    gateway.finish().unwrap();
    assert!(wait_until(Duration::from_secs(5), || entries(dest.path()).is_empty()));
}

/// `Cancel` of a put: `Failed`, nothing left behind.
#[test]
fn cancelled_put_fails_and_leaves_nothing() {
    let mut gateway = TestGateway::start();
    let dest = tempfile::tempdir().unwrap();
    open(&mut gateway, 1, put_params(&dest.path().join("c"), None));
    gateway.send(&Message::Data {
        id: 1,
        stream: STREAM,
        data: vec![1; 10],
    });
    gateway.send(&Message::Cancel { id: 1 });
    loop {
        match gateway.recv() {
            Message::Credit { .. } => {}
            other => {
                assert_eq!(last_frame(other, 1), Some(Err("cancelled".into())));
                break;
            }
        }
    }
    assert!(entries(dest.path()).is_empty());
}

#[test]
fn put_with_a_size_mismatch_fails_and_leaves_nothing() {
    let mut gateway = TestGateway::start();
    let dest = tempfile::tempdir().unwrap();
    let path = dest.path().join("short.bin");
    let (_, last) = put(&mut gateway, 1, put_params(&path, Some(1000)), 999, true);
    let message = last.unwrap_err();
    assert!(
        message.contains("999 bytes arrived, 1000 were announced"),
        "{message}"
    );
    let (_, last) = put(&mut gateway, 2, put_params(&path, Some(10)), 11, true);
    let message = last.unwrap_err();
    assert!(
        message.contains("more than the announced 10 bytes"),
        "{message}"
    );
    assert!(entries(dest.path()).is_empty());
}

#[test]
fn put_refuses_relative_paths_missing_dirs_and_directories() {
    let mut gateway = TestGateway::start();
    let dest = tempfile::tempdir().unwrap();
    let cases = [
        (Path::new("relative/x").to_path_buf(), "must be absolute"),
        (dest.path().join("missing/x"), "No such file or directory"),
        (dest.path().to_path_buf(), "is a directory"),
    ];
    for (i, (path, expected)) in cases.iter().enumerate() {
        let (_, last) = put(&mut gateway, i as u32 + 1, put_params(path, None), 0, true);
        let message = last.unwrap_err();
        assert!(message.contains(expected), "{path:?}: {message}");
    }
    let (_, last) = put(
        &mut gateway,
        9,
        put_params(&dest.path().join("x"), Some(u64::MAX)),
        0,
        true,
    );
    assert!(last.unwrap_err().contains("do not fit"));
}

#[test]
fn get_round_trips_a_file() {
    let mut gateway = TestGateway::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src.bin");
    let contents: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&path, &contents).unwrap();
    let (data, eof, last) = get(&mut gateway, 1, get_params(&path));
    assert!(eof);
    assert_eq!(last.unwrap().exit_code, Some(0));
    assert_eq!(Sha256::digest(&data), Sha256::digest(&contents));
}

#[test]
fn get_of_a_missing_file_or_a_directory_fails_with_the_reason() {
    let mut gateway = TestGateway::start();
    let dir = tempfile::tempdir().unwrap();
    let (_, _, missing) = get(&mut gateway, 1, get_params(&dir.path().join("nope")));
    assert!(missing.unwrap_err().ends_with("nope not found"));
    let (_, _, directory) = get(&mut gateway, 2, get_params(dir.path()));
    assert!(directory.unwrap_err().ends_with("is a directory"));
    // A FIFO nobody writes to: refused at once, not a transfer hanging on open.
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (_, _, special) = get(&mut gateway, 3, get_params(&fifo));
    assert!(special.unwrap_err().ends_with("is not a regular file"));
}

/// A get sends no more than the credit the gateway granted.
#[test]
fn get_stops_at_the_credit() {
    let mut gateway = TestGateway::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src.bin");
    std::fs::write(&path, vec![5u8; 2 * INITIAL_WINDOW as usize]).unwrap();
    open(&mut gateway, 1, get_params(&path));
    let mut got = 0;
    while got < INITIAL_WINDOW as usize {
        match gateway.recv() {
            Message::Data { id: 1, data, .. } => got += data.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, INITIAL_WINDOW as usize);
    assert!(gateway.recv_within(Duration::from_millis(300)).is_none());
    gateway.send(&Message::Cancel { id: 1 });
    assert_eq!(last_frame(gateway.recv(), 1), Some(Err("cancelled".into())));
}
