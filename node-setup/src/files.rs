//! Applies [`crate::config`] edits to a config file: a backup of the
//! original is kept beside it (written once, so it is always the pre-install
//! file), writes are atomic (temp file + rename, mode preserved), and
//! uninstall restores the backup byte for byte.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{self, EditError};

/// Suffix of the backup written beside the config.
pub const BACKUP_SUFFIX: &str = ".wasmhybrid-backup";
/// containerd's default config path.
pub const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";

/// What an install or uninstall did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    /// A unified diff of the change.
    Changed {
        diff: String,
    },
}

/// Why a config file could not be changed. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "{path} does not exist; create it with `containerd config default > {path}` \
         (containerd 1.6/1.7) and run again"
    )]
    Missing { path: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Edit { path: PathBuf, source: EditError },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError::Io {
        action,
        path,
        source,
    }
}

pub fn backup_path(config: &Path) -> PathBuf {
    let mut name = config.as_os_str().to_owned();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FileError::Missing {
            path: path.display().to_string(),
        },
        _ => FileError::Io {
            action: "read",
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Writes `text` to `path` atomically, keeping `path`'s permissions.
fn write_atomic(path: &Path, text: &str) -> Result<(), FileError> {
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o644);
    let tmp = path.with_extension(format!("wasmhybrid-tmp-{}", std::process::id()));
    let result = (|| {
        std::fs::write(&tmp, text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io("write", path))
}

fn diff(path: &Path, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .header(
            &path.display().to_string(),
            &format!("{} (wasmhybrid)", path.display()),
        )
        .to_string()
}

/// Suffix of the marker that records that install created the file.
pub const CREATED_SUFFIX: &str = ".wasmhybrid-created";

pub fn created_marker(config: &Path) -> PathBuf {
    let mut name = config.as_os_str().to_owned();
    name.push(CREATED_SUFFIX);
    PathBuf::from(name)
}

/// Registers the shim in the config at `path`.
pub fn install(path: &Path, dry_run: bool) -> Result<Outcome, FileError> {
    install_seeded(path, None, dry_run)
}

/// Like [`install`], but a missing file is first created from `seed` (a
/// k3s/rke2 template from the generated config, a k0s drop-in); a marker
/// beside it makes [`uninstall`] delete it again.
pub fn install_seeded(
    path: &Path,
    seed: Option<&str>,
    dry_run: bool,
) -> Result<Outcome, FileError> {
    if let Some(seed) = seed
        && !path.exists()
    {
        let new = config::install(seed).map_err(|source| FileError::Edit {
            path: path.to_path_buf(),
            source,
        })?;
        let outcome = Outcome::Changed {
            diff: diff(path, "", &new),
        };
        if !dry_run {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            }
            write_atomic(&created_marker(path), "")?;
            write_atomic(path, &new)?;
        }
        return Ok(outcome);
    }
    let old = read(path)?;
    let new = config::install(&old).map_err(|source| FileError::Edit {
        path: path.to_path_buf(),
        source,
    })?;
    if new == old {
        return Ok(Outcome::Unchanged);
    }
    let outcome = Outcome::Changed {
        diff: diff(path, &old, &new),
    };
    if dry_run {
        return Ok(outcome);
    }
    let backup = backup_path(path);
    if !backup.exists() {
        write_atomic_new(&backup, &old, path)?;
    }
    write_atomic(path, &new)?;
    Ok(outcome)
}

/// Writes the backup with the config's permissions.
fn write_atomic_new(backup: &Path, text: &str, like: &Path) -> Result<(), FileError> {
    std::fs::copy(like, backup).map_err(io("back up", like))?;
    write_atomic(backup, text)
}

/// Removes the registration: restores the backup byte for byte when there
/// is one, otherwise removes the `wasmhybrid` runtime table.
pub fn uninstall(path: &Path, dry_run: bool) -> Result<Outcome, FileError> {
    let marker = created_marker(path);
    if marker.exists() {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        if !dry_run {
            for p in [path, marker.as_path()] {
                match std::fs::remove_file(p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io("remove", p)(e));
                    }
                    _ => {}
                }
            }
        }
        return Ok(Outcome::Changed {
            diff: diff(path, &old, ""),
        });
    }
    let old = read(path)?;
    let backup = backup_path(path);
    let new = match std::fs::read_to_string(&backup) {
        Ok(original) => original,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            config::remove(&old).map_err(|source| FileError::Edit {
                path: path.to_path_buf(),
                source,
            })?
        }
        Err(e) => return Err(io("read", &backup)(e)),
    };
    let outcome = if new == old {
        Outcome::Unchanged
    } else {
        Outcome::Changed {
            diff: diff(path, &old, &new),
        }
    };
    if dry_run {
        return Ok(outcome);
    }
    if new != old {
        write_atomic(path, &new)?;
    }
    if backup.exists() {
        std::fs::remove_file(&backup).map_err(io("remove", &backup))?;
    }
    Ok(outcome)
}
