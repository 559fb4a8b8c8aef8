//! The daemon's template processes: one zygote process per cached module,
//! holding its mapped native code, that every container of that module is
//! cloned from ([`crate::executor`]).
//!
//! A container then costs one process creation (its own clone) instead of
//! two (a zygote for it, then its clone), its start does not wait for the
//! code to be mapped, and containers of one module share the template's
//! loaded pages until they write them. A template is keyed by the cache
//! entry's path and its file identity (device, inode, size, mtime, ctime):
//! a rebuilt entry gets a new template. At most [`MAX_TEMPLATES`] are kept
//! (least recently used first out); they end with the daemon.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use containerd_shimkit::zygote::Zygote;

use crate::engine::Workload;

/// Templates kept per daemon.
pub const MAX_TEMPLATES: usize = 8;

/// Which template a container of a cached module is cloned from: the
/// entry's path, and the file's identity there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    path: std::path::PathBuf,
    identity: String,
}

impl Key {
    /// The key of cache entry `path` holding code of `kind`, as the file is
    /// now (`None` if it cannot be read).
    pub fn of(path: &Path, kind: Workload) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            path: path.to_path_buf(),
            identity: format!(
                "{kind:?}|{}:{}:{}:{}.{}:{}.{}",
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ),
        })
    }
}

struct Slot {
    key: Key,
    zygote: Arc<Zygote>,
    used: Instant,
}

static TEMPLATES: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

fn slots() -> std::sync::MutexGuard<'static, Vec<Slot>> {
    TEMPLATES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The template for `key`, if there is one.
pub fn get(key: &Key) -> Option<Arc<Zygote>> {
    let mut slots = slots();
    let slot = slots.iter_mut().find(|s| &s.key == key)?;
    slot.used = Instant::now();
    Some(slot.zygote.clone())
}

/// Keeps `zygote` as the template for `key` (unless a concurrent start
/// kept one first), dropping the template of an earlier file at the same
/// path (the entry was rebuilt) and the least recently used beyond
/// [`MAX_TEMPLATES`]. A dropped template's process ends once no build
/// holds it.
pub fn insert(key: Key, zygote: Arc<Zygote>) {
    let evicted = {
        let mut slots = slots();
        if slots.iter().any(|s| s.key == key) {
            return;
        }
        let (mut evicted, kept): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut *slots)
            .into_iter()
            .partition(|s| s.key.path == key.path);
        *slots = kept;
        slots.push(Slot {
            key,
            zygote,
            used: Instant::now(),
        });
        while slots.len() > MAX_TEMPLATES {
            let oldest = slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.used)
                .map(|(i, _)| i)
                .unwrap_or(0);
            evicted.push(slots.swap_remove(oldest));
        }
        evicted
    };
    // Killing and reaping happens outside the lock.
    drop(evicted);
}

/// Forgets the template for `key` (its process failed).
pub fn remove(key: &Key) {
    let removed: Vec<Slot> = {
        let mut slots = slots();
        let (gone, kept) = std::mem::take(&mut *slots)
            .into_iter()
            .partition(|s| &s.key == key);
        *slots = kept;
        gone
    };
    drop(removed);
}

/// How many templates the daemon holds.
pub fn count() -> usize {
    slots().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("entry.cwasm");
        std::fs::write(&path, b"one").expect("write");
        let a = Key::of(&path, Workload::Module).expect("key");
        assert_eq!(Key::of(&path, Workload::Module), Some(a.clone()));
        assert_ne!(Key::of(&path, Workload::HttpProxy), Some(a.clone()));
        // An entry rebuilt in its place (new file, renamed over it).
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, b"two").expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        assert_ne!(Key::of(&path, Workload::Module), Some(a));
        assert_eq!(Key::of(&dir.path().join("missing"), Workload::Module), None);
    }
}
