//! Images and the husk machine. The host's image store stays the one users
//! see (`husk pull`, `images`, `load`, `save`, `rmi` run on the host, with
//! its network and registry credentials); before a forwarded `husk run`,
//! the image is resolved on the host (pulled or built when missing) and
//! copied into the machine's store unless it already has that manifest:
//! an OCI layout, tarred over the control channel into the hidden
//! `husk image-receive REF`, which loads it and tags it as REF.
//!
//! Files a forwarded `run` names on the host (`--env-file`) and variables
//! it copies from the host's environment (`-e KEY`) are resolved here too,
//! so the machine gets `-e KEY=VALUE`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use super::client::{Client, Stdio};
use super::proto::Kind;
use super::{MachineError, Result};
use crate::image::layout;
use crate::image::reference::Reference;
use crate::image::store::Store;

fn local(e: impl std::fmt::Display) -> MachineError {
    MachineError::BadArgs(e.to_string())
}

/// Makes the machine's store hold `image` as the host's store has it.
/// Returns the image's familiar reference.
pub fn sync_image(data_dir: &Path, client: &Client, image: &str, quiet: bool) -> Result<String> {
    let store = Store::open(&data_dir.join("images")).map_err(local)?;
    let img = crate::image::resolve::resolve_image(&store, image, quiet)
        .map_err(|e| MachineError::BadArgs(crate::error::chain(&e)))?;
    let r = img.reference.clone();
    let name = r.to_string();
    let present = client.run(
        Kind::Husk,
        vec![
            "image-present".into(),
            name.clone(),
            img.manifest_digest.clone(),
        ],
        Stdio {
            stdin: Box::new(io::empty()),
            stdout: Box::new(io::sink()),
            stderr: Box::new(io::sink()),
        },
    )?;
    if present == 0 {
        return Ok(r.familiar());
    }
    let tmp = tempfile::Builder::new()
        .prefix("husk-image-")
        .tempdir_in(store.root().join("tmp"))
        .map_err(local)?;
    let dir = tmp.path().join("layout");
    layout::save(&store, &r, &dir).map_err(local)?;
    let tar_path = tmp.path().join("layout.tar");
    {
        let f = File::create(&tar_path).map_err(local)?;
        let mut b = tar::Builder::new(f);
        b.append_dir_all(".", &dir).map_err(local)?;
        b.into_inner().and_then(|mut f| f.flush()).map_err(local)?;
    }
    let code = client.run(
        Kind::Husk,
        vec!["image-receive".into(), name],
        Stdio {
            stdin: Box::new(File::open(&tar_path).map_err(local)?),
            stdout: Box::new(io::sink()),
            stderr: Box::new(io::stderr()),
        },
    )?;
    if code != 0 {
        return Err(MachineError::Remote(format!(
            "copying image {} into the husk machine failed",
            r.familiar()
        )));
    }
    Ok(r.familiar())
}

/// `husk image-present REF DIGEST` (in the machine): whether the store has
/// REF as manifest DIGEST.
pub fn image_present(store: &Store, reference: &str, digest: &str) -> bool {
    Reference::parse(reference)
        .ok()
        .and_then(|r| store.image(&r).ok())
        .is_some_and(|img| img.manifest_digest == digest)
}

/// `husk image-receive REF` (in the machine): loads a tarred OCI layout
/// from `input` and tags it as REF.
pub fn image_receive(store: &Store, reference: &str, input: impl Read) -> io::Result<()> {
    let r = Reference::parse(reference).map_err(io::Error::other)?;
    let tmp = tempfile::Builder::new()
        .prefix("recv-")
        .tempdir_in(store.root().join("tmp"))?;
    let mut ar = tar::Archive::new(input);
    for e in ar.entries()? {
        let mut e = e?;
        if !e.unpack_in(tmp.path())? {
            return Err(io::Error::other("an entry points outside the archive"));
        }
    }
    let loaded = layout::load(store, tmp.path(), Some(&r.name())).map_err(io::Error::other)?;
    let img = loaded
        .first()
        .and_then(|l| store.image(l).ok())
        .ok_or_else(|| io::Error::other("the archive held no image"))?;
    store
        .tag(&r, &img.manifest_digest)
        .map_err(io::Error::other)
}

/// Rewrites a forwarded `run`'s arguments: `--env-file F` becomes the
/// file's `-e KEY=VALUE`s and `-e KEY` takes KEY's value from here.
/// Options end at the image (the first argument that is not an option or
/// an option's value), which `value_options` tells apart.
pub fn rewrite_run_args(argv: Vec<String>) -> Result<Vec<String>> {
    // Options of `run` that take a value (short and long forms).
    const VALUED: &[&str] = &[
        "-e",
        "--env",
        "--env-file",
        "-w",
        "--workdir",
        "-u",
        "--user",
        "--name",
        "-h",
        "--hostname",
        "--entrypoint",
        "-p",
        "--publish",
        "-v",
        "--volume",
        "-m",
        "--memory",
        "--cpus",
        "--network",
        "--network-alias",
        "--log-driver",
        "--log-opt",
        "--restart",
        "-l",
        "--label",
    ];
    let mut out = Vec::new();
    let mut it = argv.into_iter();
    // Up to and including "run".
    for a in it.by_ref() {
        let done = a == "run" || a == "create";
        out.push(a);
        if done {
            break;
        }
    }
    while let Some(a) = it.next() {
        if !a.starts_with('-') || a == "--" {
            out.push(a);
            break;
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let takes_value = VALUED.contains(&flag.as_str());
        let value = if takes_value && inline.is_none() {
            it.next()
        } else {
            inline
        };
        match (flag.as_str(), value) {
            ("--env-file", Some(path)) => {
                let entries = crate::container::env::read_env_file(Path::new(&path))
                    .map_err(|e| MachineError::BadArgs(crate::error::chain(&e)))?;
                for kv in entries {
                    out.push("-e".into());
                    out.push(kv);
                }
            }
            ("-e" | "--env", Some(v)) => {
                if let Some(kv) = crate::container::env::env_entry(&v) {
                    out.push("-e".into());
                    out.push(kv);
                }
            }
            (_, Some(v)) if takes_value => {
                out.push(flag);
                out.push(v);
            }
            (_, Some(v)) => out.push(format!("{flag}={v}")),
            (_, None) => out.push(a),
        }
    }
    out.extend(it);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn run_args_rewritten() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("env");
        std::fs::write(&f, "# c\nA=1\n\nB=2 3\n").unwrap();
        std::env::set_var("HUSK_TEST_FWD", "v");
        let got = rewrite_run_args(s(&[
            "run",
            "--rm",
            "--env-file",
            f.to_str().unwrap(),
            "-e",
            "HUSK_TEST_FWD",
            "-e",
            "HUSK_TEST_FWD_UNSET",
            "--name=x",
            "-p",
            "80",
            "busybox",
            "sh",
            "-e",
            "-c",
            "true",
        ]))
        .unwrap();
        assert_eq!(
            got,
            s(&[
                "run",
                "--rm",
                "-e",
                "A=1",
                "-e",
                "B=2 3",
                "-e",
                "HUSK_TEST_FWD=v",
                "--name",
                "x",
                "-p",
                "80",
                "busybox",
                "sh",
                "-e",
                "-c",
                "true"
            ])
        );
        assert!(rewrite_run_args(s(&["run", "--env-file", "/nonexistent", "busybox"])).is_err());
    }

    #[test]
    fn receive_and_present() {
        let host = tempfile::tempdir().unwrap();
        let machine = tempfile::tempdir().unwrap();
        let hs = Store::open(host.path()).unwrap();
        let ms = Store::open(machine.path()).unwrap();
        crate::image::default::ensure_default_image(&hs).unwrap();
        let r = Reference::parse("busybox").unwrap();
        let img = hs.image(&r).unwrap();
        assert!(!image_present(&ms, &r.to_string(), &img.manifest_digest));
        let dir = host.path().join("layout");
        layout::save(&hs, &r, &dir).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all(".", &dir).unwrap();
        let tar = b.into_inner().unwrap();
        let other = Reference::parse("localhost:5000/team/tool:v1").unwrap();
        image_receive(&ms, &other.to_string(), tar.as_slice()).unwrap();
        assert!(image_present(&ms, &other.to_string(), &img.manifest_digest));
        assert!(!image_present(&ms, &other.to_string(), "sha256:00"));
        assert!(image_receive(&ms, "busybox", &b"not a tar"[..]).is_err());
    }
}
