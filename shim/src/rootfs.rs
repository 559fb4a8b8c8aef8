//! Mounting a container's rootfs (the snapshot mounts containerd sends
//! with `Tasks.Create`) in the shim daemon.
//!
//! `containerd-shim`'s `mount_rootfs` forks the daemon for every mount
//! (so that a child can `chdir` to shorten long overlay options); forking
//! a multi-threaded daemon costs ~1-2 ms per container. Here the mount is
//! made directly, with containerd's option semantics, and only overlay
//! options too long for one page go through the forking path.

use std::path::Path;

use nix::mount::{MsFlags, mount};

/// containerd's mount options that are flags (`true`: the option clears
/// the flag); every other option is filesystem data.
const FLAGS: &[(&str, bool, MsFlags)] = &[
    ("async", true, MsFlags::MS_SYNCHRONOUS),
    ("atime", true, MsFlags::MS_NOATIME),
    ("bind", false, MsFlags::MS_BIND),
    ("defaults", false, MsFlags::empty()),
    ("dev", true, MsFlags::MS_NODEV),
    ("diratime", true, MsFlags::MS_NODIRATIME),
    ("dirsync", false, MsFlags::MS_DIRSYNC),
    ("exec", true, MsFlags::MS_NOEXEC),
    ("mand", false, MsFlags::MS_MANDLOCK),
    ("noatime", false, MsFlags::MS_NOATIME),
    ("nodev", false, MsFlags::MS_NODEV),
    ("nodiratime", false, MsFlags::MS_NODIRATIME),
    ("noexec", false, MsFlags::MS_NOEXEC),
    ("nomand", true, MsFlags::MS_MANDLOCK),
    ("norelatime", true, MsFlags::MS_RELATIME),
    ("nostrictatime", true, MsFlags::MS_STRICTATIME),
    ("nosuid", false, MsFlags::MS_NOSUID),
    ("rbind", false, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    ("relatime", false, MsFlags::MS_RELATIME),
    ("remount", false, MsFlags::MS_REMOUNT),
    ("ro", false, MsFlags::MS_RDONLY),
    ("rw", true, MsFlags::MS_RDONLY),
    ("strictatime", false, MsFlags::MS_STRICTATIME),
    ("suid", true, MsFlags::MS_NOSUID),
    ("sync", false, MsFlags::MS_SYNCHRONOUS),
    ("private", false, MsFlags::MS_PRIVATE),
    (
        "rprivate",
        false,
        MsFlags::MS_PRIVATE.union(MsFlags::MS_REC),
    ),
    ("shared", false, MsFlags::MS_SHARED),
    ("rshared", false, MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", false, MsFlags::MS_SLAVE),
    ("rslave", false, MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("unbindable", false, MsFlags::MS_UNBINDABLE),
    (
        "runbindable",
        false,
        MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC),
    ),
];

const PROPAGATION: MsFlags = MsFlags::MS_SHARED
    .union(MsFlags::MS_PRIVATE)
    .union(MsFlags::MS_SLAVE)
    .union(MsFlags::MS_UNBINDABLE);

/// Splits containerd's options into mount flags and filesystem data.
fn parse(options: &[String]) -> (MsFlags, Vec<&str>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match FLAGS.iter().find(|(name, ..)| name == option) {
            Some((_, true, f)) => flags.remove(*f),
            Some((_, false, f)) => flags.insert(*f),
            None => data.push(option.as_str()),
        }
    }
    (flags, data)
}

/// Mounts one of containerd's rootfs mounts on `target`.
pub fn mount_one(
    fs_type: &str,
    source: &str,
    options: &[String],
    target: &Path,
) -> Result<(), String> {
    let page = 4096;
    let total: usize = options.iter().map(String::len).sum();
    if fs_type == "overlay" && total >= page - 512 {
        // Many layers: the forking path shortens the options from a
        // common directory.
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        return containerd_shim::mount::mount_rootfs(
            some(fs_type).as_deref(),
            some(source).as_deref(),
            options,
            target,
        )
        .map_err(|e| e.to_string());
    }
    let (flags, data) = parse(options);
    let data = data.join(",");
    if data.len() > page {
        return Err(format!("mount options of {source:?} are too long"));
    }
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let (fs_type, source, data) = (opt(fs_type), opt(source), opt(&data));
    let plain = flags.difference(PROPAGATION);
    if !flags.contains(MsFlags::MS_REMOUNT) || data.is_some() {
        mount(
            source.as_deref(),
            target,
            fs_type.as_deref(),
            plain,
            data.as_deref(),
        )
        .map_err(|e| format!("mount {source:?} on {}: {e}", target.display()))?;
    }
    if flags.intersects(PROPAGATION) {
        let propagation = flags & (PROPAGATION | MsFlags::MS_REC | MsFlags::MS_SILENT);
        mount(
            None::<&str>,
            target,
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(|e| format!("set the propagation of {}: {e}", target.display()))?;
    }
    if plain.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            plain | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| format!("make {} read-only: {e}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_are_data_and_flags_are_flags() {
        let o = opts(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l",
            "ro",
        ]);
        let (flags, data) = parse(&o);
        assert_eq!(flags, MsFlags::MS_RDONLY);
        assert_eq!(
            data,
            ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l"]
        );
    }

    #[test]
    fn later_options_clear_earlier_flags() {
        let o = opts(&["ro", "nosuid", "rw", "rbind", "rprivate"]);
        let (flags, data) = parse(&o);
        assert_eq!(
            flags,
            MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_PRIVATE
        );
        assert!(data.is_empty());
    }
}
