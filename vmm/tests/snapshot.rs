//! Snapshot and restore of a running husk-vmm, end to end on this machine's
//! /dev/kvm: a tiny hand-assembled guest (an ELF "kernel") counts in guest
//! memory and prints each count as a letter on COM1; husk-vmm is paused
//! and snapshotted through its control socket and killed; a new husk-vmm
//! restored from the snapshot must print the very next letter and go on.
//! Damaged snapshots must be refused with one line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::elf;

/// The guest: count in memory at 2 MiB, print `'A' + count % 26`, spin a
/// little, repeat.
fn guest_code() -> Vec<u8> {
    let mut c = vec![
        0x48, 0xff, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, // inc qword [0x200000]
        0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, // mov rax, [0x200000]
        0x31, 0xd2, // xor edx, edx
        0xb9, 0x1a, 0x00, 0x00, 0x00, // mov ecx, 26
        0x48, 0xf7, 0xf1, // div rcx
        0x8d, 0x42, 0x41, // lea eax, [rdx + 'A']
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0xb9, 0xd0, 0x07, 0x00, 0x00, // mov ecx, 2000
        0xff, 0xc9, // dec ecx
        0x75, 0xfc, // jnz -4
    ];
    let back = -(i8::try_from(c.len()).unwrap() + 2);
    c.extend_from_slice(&[0xeb, back.to_le_bytes()[0]]); // jmp to the start
    c
}

struct Vm {
    child: Child,
    console: PathBuf,
    api: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn husk_vmm(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_husk-vmm"));
    c.args(args).env("RUST_LOG", "warn");
    c
}

fn start(dir: &Path, name: &str, extra: &[&str]) -> Vm {
    let console = dir.join(format!("{name}.console"));
    let api = dir.join(format!("{name}.sock"));
    let mut args = vec![
        "--console".to_string(),
        format!("file:{}", console.display()),
        "--api-sock".to_string(),
        api.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = husk_vmm(&refs)
        .stdout(Stdio::null())
        .spawn()
        .expect("husk-vmm starts");
    Vm {
        child,
        console,
        api,
    }
}

impl Vm {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the guest has printed at least `n` letters.
    fn wait_for(&mut self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.output();
            if out.len() >= n {
                return out;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("husk-vmm ended ({status}) after printing {out:?}");
            }
            assert!(Instant::now() < deadline, "guest printed only {out:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn control(&self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match UnixStream::connect(&self.api) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("control socket {}: {e}", self.api.display()),
            }
        };
        writeln!(s, "{line}").unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        answer.trim_end().to_string()
    }
}

/// Whether `s` is a run of consecutive letters, 'Z' wrapping to 'A'.
fn consecutive(s: &str) -> bool {
    s.as_bytes().windows(2).all(|w| next_letter(w[0]) == w[1])
}

fn next_letter(c: u8) -> u8 {
    if c == b'Z' {
        b'A'
    } else {
        c + 1
    }
}

fn restore_error(snap: &Path) -> String {
    let out = husk_vmm(&["--restore", snap.to_str().unwrap(), "--console", "off"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    err
}

fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["state", "memory"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn a_restored_guest_continues_where_it_was_paused() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("counter.elf");
    std::fs::write(&kernel, elf(&guest_code())).unwrap();
    let snap = dir.path().join("snap");

    let mut first = start(
        dir.path(),
        "first",
        &["--kernel", kernel.to_str().unwrap(), "--mem-mib", "32"],
    );
    first.wait_for(5);
    assert_eq!(
        first.control("snapshot /nowhere"),
        "error: the VM is running; pause it first"
    );
    assert_eq!(first.control("pause"), "ok");
    let before = first.output();
    assert_eq!(first.control(&format!("snapshot {}", snap.display())), "ok");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(first.output(), before, "a paused guest must not print");
    assert!(consecutive(&before), "{before:?}");
    // Resume works too, then the first VM goes away entirely.
    assert_eq!(first.control("resume"), "ok");
    first.wait_for(before.len() + 3);
    drop(first);

    let mut second = start(dir.path(), "second", &["--restore", snap.to_str().unwrap()]);
    let after = second.wait_for(5);
    drop(second);
    let last = *before.as_bytes().last().unwrap();
    assert_eq!(
        after.as_bytes()[0],
        next_letter(last),
        "before {before:?}, after {after:?}"
    );
    assert!(consecutive(&after), "{after:?}");

    // The snapshot itself is untouched by the restored guest (MAP_PRIVATE):
    // restoring it again starts from the same letter.
    let mut third = start(dir.path(), "third", &["--restore", snap.to_str().unwrap()]);
    let again = third.wait_for(1);
    drop(third);
    assert_eq!(again.as_bytes()[0], next_letter(last));

    damaged_snapshots_are_refused(&snap, dir.path());
}

fn damaged_snapshots_are_refused(snap: &Path, dir: &Path) {
    let state = std::fs::read(snap.join("state")).unwrap();

    let truncated = dir.join("truncated");
    copy_snapshot(snap, &truncated);
    std::fs::write(truncated.join("state"), &state[..state.len() / 2]).unwrap();
    let e = restore_error(&truncated);
    assert!(e.contains("is truncated"), "{e}");

    let flipped = dir.join("flipped");
    copy_snapshot(snap, &flipped);
    let mut bad = state.clone();
    let i = bad.len() - 10;
    bad[i] ^= 0x20;
    std::fs::write(flipped.join("state"), &bad).unwrap();
    let e = restore_error(&flipped);
    assert!(e.contains("has a bad checksum"), "{e}");

    let other = dir.join("other-version");
    copy_snapshot(snap, &other);
    let mut old = state.clone();
    // The husk-vmm version string starts at byte 14; make it another one.
    old[14] = b'9';
    std::fs::write(other.join("state"), &old).unwrap();
    let e = restore_error(&other);
    assert!(e.contains("was made by husk-vmm 9"), "{e}");

    let short_mem = dir.join("short-memory");
    copy_snapshot(snap, &short_mem);
    std::fs::OpenOptions::new()
        .write(true)
        .open(short_mem.join("memory"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    let e = restore_error(&short_mem);
    assert!(
        e.contains("guest memory file") && e.contains("4096 bytes"),
        "{e}"
    );
}
