//! Reads a container's Wasm entrypoint from the host side, before the
//! container exists, so that the AOT cache can be consulted on the host.
//!
//! The rootfs belongs to the image, so every lookup in it is confined to it
//! the way the container would see it: `openat2(RESOLVE_IN_ROOT)` resolves
//! `..` and absolute symlinks against the rootfs, never the host. A path
//! under a bind mount of the spec is resolved in the mount's source, with
//! the same confinement.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;

/// The entrypoint file, found and read.
#[derive(Debug)]
pub struct Found {
    /// The path as the container sees it.
    pub guest_path: PathBuf,
    pub bytes: Vec<u8>,
}

/// The entrypoint file, found and open.
#[derive(Debug)]
pub struct Opened {
    /// The path as the container sees it.
    pub guest_path: PathBuf,
    pub file: File,
    pub meta: std::fs::Metadata,
}

impl Opened {
    /// Reads the whole file.
    pub fn read(mut self) -> Result<Found, SourceError> {
        let mut bytes = Vec::with_capacity(self.meta.len() as usize);
        self.file
            .read_to_end(&mut bytes)
            .map_err(|source| SourceError::Read {
                path: self.guest_path.clone(),
                source,
            })?;
        Ok(Found {
            guest_path: self.guest_path,
            bytes,
        })
    }

    /// Reads the first `n` bytes (fewer if the file is shorter).
    pub fn header(&mut self, n: usize) -> Result<Vec<u8>, SourceError> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.file.read_at(&mut buf[got..], got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(source) => {
                    return Err(SourceError::Read {
                        path: self.guest_path.clone(),
                        source,
                    });
                }
            }
        }
        buf.truncate(got);
        Ok(buf)
    }
}

/// Why the entrypoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("entrypoint {path} not found in the container: {source}")]
    NotFound {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read entrypoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Finds `entry` (argv[0] without `#func`) like a shell would inside the
/// container (absolute, relative to the cwd, or in `PATH`) and opens it.
pub fn open_entrypoint(
    bundle: &Path,
    spec: &Spec,
    entry: &str,
    envs: &[String],
) -> Result<Opened, SourceError> {
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    let rootfs = if rootfs.is_absolute() {
        rootfs
    } else {
        bundle.join(rootfs)
    };
    let cwd = spec
        .process()
        .as_ref()
        .map(|p| p.cwd().clone())
        .unwrap_or_else(|| PathBuf::from("/"));
    let mounts: Vec<(PathBuf, PathBuf)> = spec
        .mounts()
        .as_ref()
        .map(|ms| {
            ms.iter()
                .filter(|m| {
                    m.typ().as_deref() == Some("bind")
                        || m.options()
                            .as_ref()
                            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
                })
                .filter_map(|m| Some((m.destination().clone(), m.source().clone()?)))
                .collect()
        })
        .unwrap_or_default();

    let entry_path = Path::new(entry);
    let candidates: Vec<PathBuf> = if entry_path.is_absolute() {
        vec![entry_path.to_path_buf()]
    } else if entry_path.components().count() > 1 {
        vec![cwd.join(entry_path)]
    } else {
        let search = envs
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("");
        let mut c: Vec<PathBuf> = search
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(entry_path))
            .collect();
        c.push(cwd.join(entry_path));
        c
    };

    let mut last_err = None;
    for guest in &candidates {
        match open_in_container(&rootfs, &mounts, guest) {
            Ok(file) => {
                let meta = file.metadata().map_err(|source| SourceError::Read {
                    path: guest.clone(),
                    source,
                })?;
                if !meta.is_file() {
                    last_err = Some(std::io::Error::other("not a regular file"));
                    continue;
                }
                return Ok(Opened {
                    guest_path: guest.clone(),
                    file,
                    meta,
                });
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(SourceError::NotFound {
        path: entry_path.to_path_buf(),
        source: last_err.unwrap_or_else(|| std::io::Error::other("no candidate path")),
    })
}

/// Opens `guest` (absolute, as the container sees it) confined to the
/// rootfs, or to the source of the bind mount it lies under.
fn open_in_container(
    rootfs: &Path,
    mounts: &[(PathBuf, PathBuf)],
    guest: &Path,
) -> std::io::Result<File> {
    let guest = normalize(guest);
    let mount = mounts
        .iter()
        .filter(|(dest, _)| guest.starts_with(normalize(dest)))
        .max_by_key(|(dest, _)| normalize(dest).components().count());
    let (root, rel) = match mount {
        Some((dest, src)) => (
            src.as_path(),
            guest
                .strip_prefix(normalize(dest))
                .unwrap_or(Path::new(""))
                .to_path_buf(),
        ),
        None => (
            rootfs,
            guest.strip_prefix("/").unwrap_or(&guest).to_path_buf(),
        ),
    };
    let dir = File::open(root)?;
    openat2_in_root(&dir, &rel)
}

/// Lexically removes `.` and `..` (as the kernel does for an absolute path
/// at `/`), so mount prefixes compare like the container would see them.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn openat2_in_root(dir: &File, rel: &Path) -> std::io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `open_how` is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dirfd, NUL-terminated path and a correctly sized
    // `open_how` that outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{MountBuilder, ProcessBuilder, RootBuilder, SpecBuilder};

    fn read_entrypoint(
        bundle: &Path,
        spec: &Spec,
        entry: &str,
        envs: &[String],
    ) -> Result<Found, SourceError> {
        open_entrypoint(bundle, spec, entry, envs)?.read()
    }

    fn spec(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        SpecBuilder::default()
            .root(RootBuilder::default().path("rootfs").build().expect("root"))
            .process(ProcessBuilder::default().cwd("/app").build().expect("proc"))
            .mounts(mounts)
            .build()
            .expect("spec")
    }

    #[test]
    fn symlinks_cannot_leave_the_rootfs() {
        let tmp = tempfile::tempdir().expect("tmp");
        let bundle = tmp.path();
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(rootfs.join("app")).expect("mkdir");
        std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
        // A host file the image must not be able to reach.
        std::fs::write(bundle.join("secret.wasm"), b"host secret").expect("write");
        std::fs::write(rootfs.join("secret.wasm"), b"image file").expect("write");
        std::os::unix::fs::symlink("/../../secret.wasm", rootfs.join("app/evil.wasm"))
            .expect("symlink");
        std::os::unix::fs::symlink("../../../secret.wasm", rootfs.join("bin/rel.wasm"))
            .expect("symlink");
        std::fs::write(rootfs.join("app/ok.wasm"), b"ok").expect("write");
        let s = spec(vec![]);

        let found = read_entrypoint(bundle, &s, "/app/evil.wasm", &[]).expect("found");
        assert_eq!(found.bytes, b"image file");
        let found = read_entrypoint(bundle, &s, "rel.wasm", &["PATH=/bin".into()]).expect("f");
        assert_eq!(found.bytes, b"image file");
        assert_eq!(found.guest_path, Path::new("/bin/rel.wasm"));
        let found = read_entrypoint(bundle, &s, "ok.wasm", &[]).expect("cwd");
        assert_eq!(found.bytes, b"ok");
        let found = read_entrypoint(bundle, &s, "/app/../../../secret.wasm", &[]).expect("f");
        assert_eq!(found.bytes, b"image file");
        let err = read_entrypoint(bundle, &s, "/nope.wasm", &[]).expect_err("missing");
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
    }

    #[test]
    fn bind_mounts_are_looked_up_in_their_source() {
        let tmp = tempfile::tempdir().expect("tmp");
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).expect("mkdir");
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(&vol).expect("mkdir");
        std::fs::write(vol.join("m.wasm"), b"from volume").expect("write");
        let s = spec(vec![
            MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source(&vol)
                .options(vec!["rbind".to_string(), "ro".to_string()])
                .build()
                .expect("mount"),
        ]);
        let found = read_entrypoint(&bundle, &s, "/data/m.wasm", &[]).expect("found");
        assert_eq!(found.bytes, b"from volume");
    }
}
