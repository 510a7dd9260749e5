//! One agent at a time: an exclusive flock on `state_dir/lock`, held for
//! the life of the process (the kernel drops it if the process dies).

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("locking {path}: {detail}")]
pub struct LockError {
    pub path: PathBuf,
    pub detail: String,
}

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct AgentLock {
    _lock: Flock<File>,
}

/// Takes the lock, waiting for another agent process to finish if `wait`;
/// otherwise fails at once when it is held.
pub fn lock(path: &Path, wait: bool) -> Result<AgentLock, LockError> {
    let err = |detail: String| LockError {
        path: path.to_owned(),
        detail,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(AgentLock { _lock: lock }),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) if wait => {
            tracing::info!(path = %path.display(), "another ota-agent process holds the lock; waiting");
            Flock::lock(file, FlockArg::LockExclusive)
                .map(|lock| AgentLock { _lock: lock })
                .map_err(|(_, e)| err(e.to_string()))
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            Err(err("another ota-agent process holds it".into()))
        }
        Err((_, e)) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let first = lock(&path, false).expect("first");
        let err = lock(&path, false).expect_err("held");
        assert!(err.to_string().contains("another ota-agent"), "{err}");
        drop(first);
        lock(&path, false).expect("free again");
    }
}
