//! husk-vmm's jail end to end on this machine's /dev/kvm: a tiny guest (an
//! ELF "kernel" printing letters on COM1) runs under an unprivileged uid
//! with no capabilities, no_new_privs and seccomp filters on every thread;
//! a call outside the filter kills husk-vmm with SIGSYS; its root holds
//! only its vsock directory; `--no-seccomp`
//! turns the filters off.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::elf;
const JAIL_ID: &str = "2000000777";

/// The guest: print 'A' on COM1, spin a little, repeat.
fn guest_code() -> Vec<u8> {
    let mut c = vec![
        0xb0, 0x41, // mov al, 'A'
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
    dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str], forbidden_test: bool) -> Vm {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("printer.elf");
    std::fs::write(&kernel, elf(&guest_code())).unwrap();
    let console = dir.path().join("console");
    let mut c = Command::new(env!("CARGO_BIN_EXE_husk-vmm"));
    c.arg("--kernel")
        .arg(&kernel)
        .args(["--mem-mib", "32", "--vcpus", "1"])
        .arg("--console")
        .arg(format!("file:{}", console.display()))
        .args(
            extra
                .iter()
                .map(|a| a.replace("{dir}", &dir.path().display().to_string())),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if forbidden_test {
        c.env("HUSK_VMM_TEST_FORBIDDEN_SYSCALL", "1");
    }
    Vm {
        child: c.spawn().expect("husk-vmm starts"),
        console,
        dir,
    }
}

impl Vm {
    /// Waits until the guest has printed (so every filter is in place).
    fn wait_for_guest(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::metadata(&self.console).map_or(0, |m| m.len()) < 3 {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("husk-vmm ended ({st}) before its guest printed");
            }
            assert!(Instant::now() < deadline, "the guest printed nothing");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `Name:` field of every thread's /proc status.
    fn thread_fields(&self, name: &str) -> Vec<(String, String)> {
        let task = Path::new("/proc")
            .join(self.child.id().to_string())
            .join("task");
        std::fs::read_dir(task)
            .unwrap()
            .map(|t| {
                let s = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
                let field = |f: &str| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(f))
                        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                        .unwrap_or_default()
                };
                (field("Name:"), field(name))
            })
            .collect()
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: signals our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_jailed_vmm_runs_its_guest_unprivileged_and_filtered() {
    if !is_root() {
        eprintln!("skipped: --jail-uid needs root");
        return;
    }
    let mut vm = start(
        &[
            "--jail-uid",
            JAIL_ID,
            "--jail-gid",
            JAIL_ID,
            "--vsock",
            "3,{dir}/v.sock",
        ],
        false,
    );
    vm.wait_for_guest();
    // Its root holds only the vsock directory.
    let root = Path::new("/proc")
        .join(vm.child.id().to_string())
        .join("root");
    let top: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let first = vm
        .dir
        .path()
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_owned();
    assert_eq!(
        top,
        vec![first],
        "the jail's root holds more than the vsock dir"
    );
    let kept = root.join(vm.dir.path().strip_prefix("/").unwrap());
    assert!(
        kept.join("v.sock").exists(),
        "the vsock dir is not in the jail"
    );
    let threads = vm.thread_fields("Seccomp:");
    assert!(threads.len() >= 2, "{threads:?}");
    assert!(
        threads.iter().any(|(n, _)| n.starts_with("vcpu")),
        "{threads:?}"
    );
    for (field, want) in [
        ("Seccomp:", "2"),
        ("NoNewPrivs:", "1"),
        ("Uid:", JAIL_ID),
        ("Gid:", JAIL_ID),
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
    ] {
        for (thread, got) in vm.thread_fields(field) {
            assert_eq!(got, want, "{field} of thread {thread}");
        }
    }
    // The guest keeps running under the filters.
    let before = std::fs::metadata(&vm.console).unwrap().len();
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::fs::metadata(&vm.console).unwrap().len() > before);
    vm.signal(libc::SIGTERM);
    let st = vm.wait(Duration::from_secs(10)).expect("husk-vmm stops");
    assert_eq!(st.code(), Some(143), "{st}");
}

#[test]
fn a_call_outside_the_filter_kills_husk_vmm_with_sigsys() {
    let mut vm = start(&[], true);
    vm.wait_for_guest();
    vm.signal(libc::SIGUSR2);
    let st = vm
        .wait(Duration::from_secs(10))
        .expect("husk-vmm is killed");
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st}");
}

#[test]
fn no_seccomp_leaves_the_threads_unfiltered() {
    let mut vm = start(&["--no-seccomp"], true);
    vm.wait_for_guest();
    for (thread, got) in vm.thread_fields("Seccomp:") {
        assert_eq!(got, "0", "thread {thread}");
    }
    // The forbidden call is harmless without the filter.
    vm.signal(libc::SIGUSR2);
    assert!(vm.wait(Duration::from_millis(500)).is_none());
    vm.signal(libc::SIGTERM);
    let st = vm.wait(Duration::from_secs(10)).expect("husk-vmm stops");
    assert_eq!(st.code(), Some(143), "{st}");
}
