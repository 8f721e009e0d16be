//! Unpack throughput of a generated multi-MB gzip layer: husk-agent's
//! layers module (sha256 verification + gunzip + scoped placement) against
//! `tar -xzf` of the same blob, measured in the same run. Prints the ratio.
//!
//! `cargo bench -p husk-agent --bench unpack`; under `cargo test` it runs
//! once on a small layer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use husk_layers::{self as layers, UnpackOptions};
use sha2::{Digest, Sha256};

const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct Layer {
    _dir: tempfile::TempDir,
    blob: PathBuf,
    digest: String,
    unpacked_bytes: u64,
}

/// A layer of `files` files (sizes 1 KiB .. 64 KiB, semi-compressible
/// content) in nested directories, with symlinks and hard links.
fn make_layer(files: u32) -> Layer {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut total = 0u64;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..files {
        let size = 1024 + (i as usize * 7919) % (63 * 1024);
        let data: Vec<u8> = (0..size)
            .map(|j| {
                if j % 3 == 0 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed & 0xff) as u8
                } else {
                    b"the quick brown fox "[j % 20]
                }
            })
            .collect();
        let path = format!("d{}/e{}/f{i}", i % 16, i % 5);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, &path, data.as_slice()).unwrap();
        total += data.len() as u64;
        if i % 50 == 0 {
            let mut l = tar::Header::new_gnu();
            l.set_entry_type(tar::EntryType::Symlink);
            l.set_mode(0o777);
            l.set_uid(0);
            l.set_gid(0);
            l.set_mtime(1_700_000_000);
            l.set_size(0);
            b.append_link(&mut l, format!("links/s{i}"), format!("../{path}"))
                .unwrap();
        }
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let blob = gz.finish().unwrap();
    let path = dir.path().join("layer.tar.gz");
    std::fs::write(&path, &blob).unwrap();
    Layer {
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&blob))),
        blob: path,
        _dir: dir,
        unpacked_bytes: total,
    }
}

fn husk_unpack(l: &Layer, into: &Path) {
    layers::apply_layer_file(
        into,
        &l.blob,
        &l.digest,
        MEDIA_TYPE,
        None,
        &UnpackOptions::default(),
    )
    .unwrap();
}

fn tar_unpack(l: &Layer, into: &Path) {
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&l.blob)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xzf failed");
}

/// Times `f` into a fresh directory; cleanup is not timed.
fn timed(l: &Layer, f: fn(&Layer, &Path)) -> Duration {
    let d = tempfile::tempdir().unwrap();
    let t = Instant::now();
    f(l, d.path());
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (files, rounds) = if bench_mode { (1200, 7) } else { (40, 1) };
    let layer = make_layer(files);
    let mib = layer.unpacked_bytes as f64 / (1024.0 * 1024.0);
    let blob_mib = std::fs::metadata(&layer.blob).unwrap().len() as f64 / (1024.0 * 1024.0);

    // Interleaved rounds so both see the same machine load.
    let (mut husk, mut tar) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        husk.push(timed(&layer, husk_unpack));
        tar.push(timed(&layer, tar_unpack));
    }
    let (h, t) = (median(husk), median(tar));
    let h_tp = mib / h.as_secs_f64();
    let t_tp = mib / t.as_secs_f64();
    println!(
        "unpack {files} files, {mib:.1} MiB ({blob_mib:.1} MiB gzip), median of {rounds}: \
         husk-agent {h:?} ({h_tp:.1} MiB/s, sha256 included), tar -xzf {t:?} ({t_tp:.1} MiB/s)"
    );
    println!(
        "unpack throughput ratio husk-agent / tar -xzf: {:.2}",
        h_tp / t_tp
    );

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    let mut g = c.benchmark_group("unpack_gzip_layer");
    g.throughput(Throughput::Bytes(layer.unpacked_bytes));
    for (name, f) in [
        ("husk-agent", husk_unpack as fn(&Layer, &Path)),
        ("tar -xzf", tar_unpack),
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(name), &layer, |b, l| {
            b.iter_custom(|iters| (0..iters).map(|_| timed(l, f)).sum())
        });
    }
    g.finish();
    c.final_summary();
}
