//! Pull benchmark: `husk pull` of a multi-layer image (busybox plus a
//! 64 MiB layer) from a local docker-registry, against `skopeo copy` of the
//! same image to a local directory, alternating runs in one process. Prints
//! a table; run with `cargo bench -p husk --bench pull`.

use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

fn main() {
    let runs = 3;
    let reg = common::start_registry();
    let _src = common::push_big(&reg, "bench/big:1", 64);
    let r = format!("127.0.0.1:{}/bench/big:1", reg.port);
    let (mut husk_t, mut skopeo_t) = (Duration::ZERO, Duration::ZERO);
    for i in 0..runs {
        let data = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_husk"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["pull", "-q", &r])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let h = t.elapsed();
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let out = Command::new(common::need("/usr/bin/skopeo"))
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{r}"))
            .arg(format!("dir:{}", dir.path().join("img").display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = t.elapsed();
        println!(
            "run {i}: husk pull {:.0} ms, skopeo copy {:.0} ms",
            h.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3
        );
        husk_t += h;
        skopeo_t += s;
    }
    println!();
    println!(
        "| pull of busybox + 64 MiB layer from a local registry ({runs} alternating runs) | mean |"
    );
    println!("|---|---|");
    println!(
        "| husk pull | {:.0} ms |",
        husk_t.as_secs_f64() * 1e3 / f64::from(runs)
    );
    println!(
        "| skopeo copy to dir: | {:.0} ms |",
        skopeo_t.as_secs_f64() * 1e3 / f64::from(runs)
    );
    println!(
        "| ratio husk / skopeo | {:.2} |",
        husk_t.as_secs_f64() / skopeo_t.as_secs_f64()
    );
}
