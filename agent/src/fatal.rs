//! PID 1's last words: a fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE)
//! in any agent thread kills the agent, and with it the guest, so the
//! handler writes one line to the console first: the signal, the faulting
//! address, the instruction pointer and where this handler is loaded (the
//! binary is position-independent: subtracting gives the offset to look
//! up). Then the signal's default action ends the process, as before.

use std::sync::atomic::{AtomicBool, Ordering};

static INSTALLED: AtomicBool = AtomicBool::new(false);

const SIGNALS: [libc::c_int; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// Installs the handler (once).
pub fn install() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    for sig in SIGNALS {
        // SAFETY: a zeroed sigaction is valid; the handler only calls
        // async-signal-safe functions (write, signal, raise) and formats
        // into a stack buffer.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fatal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Appends `v` in hexadecimal to `buf` at `*n`.
fn put_hex(buf: &mut [u8], n: &mut usize, v: u64) {
    for shift in (0..16).rev() {
        let digit = u8::try_from((v >> (shift * 4)) & 0xf).unwrap_or(0);
        if let Some(b) = buf.get_mut(*n) {
            *b = if digit < 10 {
                b'0' + digit
            } else {
                b'a' + digit - 10
            };
            *n += 1;
        }
    }
}

fn put(buf: &mut [u8], n: &mut usize, s: &[u8]) {
    for &c in s {
        if let Some(b) = buf.get_mut(*n) {
            *b = c;
            *n += 1;
        }
    }
}

extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let mut buf = [0u8; 160];
    let mut n = 0;
    put(&mut buf, &mut n, b"husk-agent: fatal signal ");
    put_hex(&mut buf, &mut n, u64::try_from(sig).unwrap_or(0));
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler.
    let (addr, rip, tid) = unsafe {
        let addr = (*info).si_addr() as u64;
        let uc = ctx.cast::<libc::ucontext_t>();
        let rip = u64::try_from((*uc).uc_mcontext.gregs[libc::REG_RIP as usize]).unwrap_or(0);
        (addr, rip, libc::syscall(libc::SYS_gettid) as u64)
    };
    put(&mut buf, &mut n, b" addr ");
    put_hex(&mut buf, &mut n, addr);
    put(&mut buf, &mut n, b" rip ");
    put_hex(&mut buf, &mut n, rip);
    put(&mut buf, &mut n, b" handler ");
    put_hex(&mut buf, &mut n, on_fatal as *const () as usize as u64);
    put(&mut buf, &mut n, b" tid ");
    put_hex(&mut buf, &mut n, tid);
    put(&mut buf, &mut n, b"\n");
    // SAFETY: write(2) and raise(3) are async-signal-safe; SA_RESETHAND
    // restored the default action, so the raise ends the process.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::raise(sig);
    }
}
