//! Builders for real layer tarballs, including hostile ones that the `tar`
//! crate's own path checks would refuse to write.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One tar entry.
#[derive(Debug, Clone)]
pub enum E {
    Dir(&'static str, u32),
    File(&'static str, u32, Vec<u8>),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Fifo(&'static str),
    CharDev(&'static str, u32, u32),
    /// A file with owner and mtime.
    Owned(&'static str, u32, u32, u32, u64),
    /// A file with an xattr (PAX `SCHILY.xattr.`).
    Xattr(&'static str, &'static str, &'static [u8]),
}

fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // Write the name bytes directly: set_path would refuse `..`.
    let raw = name.as_bytes();
    let gnu = h.as_gnu_mut().expect("gnu header");
    assert!(
        raw.len() < gnu.name.len(),
        "name too long for the test builder"
    );
    gnu.name[..raw.len()].copy_from_slice(raw);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let raw = target.as_bytes();
    let gnu = h.as_gnu_mut().expect("gnu header");
    gnu.linkname[..raw.len()].copy_from_slice(raw);
}

/// A plain tar of `entries`.
pub fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(n, mode) => {
                let mut h = header(n, tar::EntryType::Directory, *mode, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::File(n, mode, data) => {
                let mut h = header(n, tar::EntryType::Regular, *mode, data.len() as u64);
                h.set_cksum();
                b.append(&h, data.as_slice()).unwrap();
            }
            E::Owned(n, mode, uid, gid, mtime) => {
                let mut h = header(n, tar::EntryType::Regular, *mode, 3);
                h.set_uid((*uid).into());
                h.set_gid((*gid).into());
                h.set_mtime(*mtime);
                h.set_cksum();
                b.append(&h, &b"own"[..]).unwrap();
            }
            E::Symlink(n, t) | E::Hardlink(n, t) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = header(n, kind, 0o777, 0);
                set_link(&mut h, t);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Fifo(n) => {
                let mut h = header(n, tar::EntryType::Fifo, 0o644, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::CharDev(n, major, minor) => {
                let mut h = header(n, tar::EntryType::Char, 0o666, 0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Xattr(n, key, value) => {
                let k = format!("SCHILY.xattr.{key}");
                b.append_pax_extensions([(k.as_str(), *value)]).unwrap();
                let mut h = header(n, tar::EntryType::Regular, 0o644, 1);
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Writes `blob` under `dir` and returns (path, digest).
pub fn write_blob(dir: &Path, name: &str, blob: &[u8]) -> (PathBuf, String) {
    let p = dir.join(name);
    std::fs::write(&p, blob).unwrap();
    (p, digest(blob))
}
