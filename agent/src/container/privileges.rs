//! Dropping a container process's privileges between clone and execve:
//! the capability bounding set and ambient set (see
//! [`husk_proto::security`]) and `no_new_privs`. Async-signal-safe: raw
//! prctl calls only.

use husk_proto::security::Security;

use super::process::errno;

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
const PR_CAP_AMBIENT: libc::c_int = 47;
const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;

/// Applies `s` to the calling process; returns the errno of the first
/// call that failed. Whatever it executes next keeps no capability
/// outside the set (as root) and none at all (as another user), and with
/// `no_new_privileges` gains none through set-user-id or file capabilities.
pub fn apply(s: &Security) -> Result<(), i32> {
    if let Some(keep) = s.capabilities {
        drop_bounding(keep)?;
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
        if rc != 0 && errno() != libc::EINVAL {
            return Err(errno());
        }
    }
    if s.no_new_privileges {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Drops every capability not in `keep` from the bounding set, up to the
/// kernel's last one (past it, prctl says EINVAL).
fn drop_bounding(keep: u64) -> Result<(), i32> {
    for cap in 0..64u32 {
        if keep & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } != 0 {
            return match errno() {
                libc::EINVAL => Ok(()),
                e => Err(e),
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child (the test process keeps its capabilities): the
    /// bounding set afterwards, read from /proc, and no_new_privs.
    #[test]
    fn the_bounding_set_keeps_what_is_asked_and_nothing_else() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "dropping capabilities needs root; run the agent's tests as root"
        );
        let keep = husk_proto::security::capability_set(&[], &[]).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only makes raw syscalls and reads /proc
        // through std (no locks held across fork in this test thread).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let s = Security {
                    capabilities: Some(keep),
                    no_new_privileges: true,
                };
                let ok = apply(&s).is_ok();
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let line = |k: &str| {
                    status
                        .lines()
                        .find(|l| l.starts_with(k))
                        .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
                        .unwrap_or_default()
                };
                let out = format!("{ok} {} {}", line("CapBnd:"), line("NoNewPrivs:"));
                let _ = nix::unistd::write(&w, out.as_bytes());
                // SAFETY: _exit ends the forked child without running the
                // test harness's destructors.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                nix::sys::wait::waitpid(child, None).unwrap();
                let mut got = String::new();
                std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut got).unwrap();
                assert_eq!(got, format!("true {keep:016x} 1"));
            }
        }
    }
}
