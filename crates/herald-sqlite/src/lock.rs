//! One process per store file: an exclusive lock on `<file>.lock`, held while the store is open.
//!
//! The store keeps its counts and wakeups in process, so a second process writing the same file
//! would make both wrong. The operating system releases the lock when the process ends, however
//! it ends, so a killed process never leaves the file locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::OpenError;

/// The held lock; released when dropped.
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

/// The lock file of the store file `path`.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock of the store file `path`, or fails at once if another process holds it.
pub(crate) fn lock(path: &Path) -> Result<FileLock, OpenError> {
    let lock = lock_path(path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| OpenError::Create {
            path: lock.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(FileLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(OpenError::Locked {
            path: path.to_path_buf(),
            lock,
        }),
        Err(TryLockError::Error(source)) => Err(OpenError::Create { path: lock, source }),
    }
}
