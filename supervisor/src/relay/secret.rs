//! The relay's secret key (`[relay] secret_file`): 32 random bytes that key the HMAC of the
//! parameters sipsockd puts in Record-Route, Path and Via, so a Route copied into another dialog,
//! or made up, fails. Nodes sharing a database share this file (copy it), so any of them accepts
//! the Routes the others wrote.
//!
//! The file is made at the first start when it is missing: 32 bytes from `/dev/urandom`, written
//! to a temporary file of mode 0600 beside it, synced, then linked into place, so that the file
//! either does not exist or holds a whole key, and two processes starting at once end with the
//! same one. An existing file is refused, with what to do, when it is not a regular file, is not
//! exactly 32 bytes long, or gives any permission to others or more than read to its group.
//! Opening never blocks (a FIFO in its place is refused, not waited on).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes in the key.
pub const SECRET_LEN: usize = 32;

/// Permission bits a secret file must not have: any for others, group write or execute (the
/// group may read it: `root:sipsockd 0640` is fine).
const FORBIDDEN_MODE: u32 = 0o037;

/// Why the secret file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("relay secret file {} ([relay] secret_file): {reason}", path.display())]
pub struct SecretError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, and what to do.
    pub reason: String,
}

/// The key in `path`, made first when the file does not exist (and logged then).
pub fn load_or_create_secret(path: &Path) -> Result<[u8; SECRET_LEN], SecretError> {
    let fail = |reason: String| SecretError {
        path: path.to_path_buf(),
        reason,
    };
    // A second round only when another process created the file between our two steps.
    for _ in 0..3 {
        match open_existing(path) {
            Ok(file) => return read_key(file).map_err(fail),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("cannot open it: {e}"))),
        }
        if let Some(key) = create(path).map_err(fail)? {
            log::info!(
                "created the relay secret {} ({SECRET_LEN} random bytes, mode 0600); copy it to \
                 every node that shares this database",
                path.display()
            );
            return Ok(key);
        }
    }
    Err(fail(
        "it keeps appearing and disappearing: another process is replacing it".into(),
    ))
}

fn open_existing(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        // A FIFO would block the open until a writer came; regular files ignore the flag.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Check the opened file and read the key.
fn read_key(mut file: File) -> Result<[u8; SECRET_LEN], String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot look at it: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "not a regular file ({}): point secret_file at a file of {SECRET_LEN} random bytes, \
             or at a path where sipsockd may create one",
            kind(&meta)
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & FORBIDDEN_MODE != 0 {
        return Err(format!(
            "mode {mode:04o} lets others read or change the key: chmod 600 it (0640 at most)"
        ));
    }
    if meta.len() != SECRET_LEN as u64 {
        return Err(format!(
            "{} bytes, not {SECRET_LEN}: not a relay secret (remove it to have a new one made at \
             the next start, then copy that to every node sharing the database; dialogs set up \
             with the old key lose their routes)",
            meta.len()
        ));
    }
    let mut key = [0u8; SECRET_LEN];
    file.read_exact(&mut key)
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(key)
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a plain file"
    }
}

/// Make the file with a new key; `None` when another process made it first (read theirs).
fn create(path: &Path) -> Result<Option<[u8; SECRET_LEN]>, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "it does not exist and its directory {} does not either",
            dir.display()
        ));
    }
    let mut key = [0u8; SECRET_LEN];
    File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut key))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let name = path
        .file_name()
        .map_or_else(|| "secret".into(), |n| n.to_string_lossy().into_owned());
    // Unique to this attempt: other processes have other pids, other threads other numbers.
    static ATTEMPT: AtomicU64 = AtomicU64::new(0);
    let temp = dir.join(format!(
        ".{name}.{}.{}.new",
        std::process::id(),
        ATTEMPT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut f| {
            f.write_all(&key)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(format!("cannot create it in {}: {e}", dir.display()));
    }
    // A link never replaces an existing file: whoever links first wins, the others read it.
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            // The new name is durable once its directory is synced; a failure here only risks
            // the file being made again after a crash.
            let _ = File::open(dir).and_then(|d| d.sync_all());
            Ok(Some(key))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(format!("cannot create it: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sipsockd-secret-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn owner(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().uid()
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_missing_file_is_created_0600_and_read_back_the_same() {
        let dir = scratch("create");
        let path = dir.path().join("relay.key");
        let key = load_or_create_secret(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert_eq!(std::fs::read(&path).unwrap(), key);
        assert_eq!(owner(&path), nix::unistd::geteuid().as_raw());
        assert_eq!(
            load_or_create_secret(&path).unwrap(),
            key,
            "read, not made again"
        );
        // Nothing else is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Another file gets another key (32 random bytes, not a constant).
        let other = load_or_create_secret(&dir.path().join("other.key")).unwrap();
        assert_ne!(other, key);
        assert_ne!(key, [0u8; 32]);
    }

    #[test]
    fn an_existing_key_is_read_with_group_read_at_most() {
        let dir = scratch("existing");
        let path = dir.path().join("k");
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        std::fs::write(&path, key).unwrap();
        for mode in [0o600, 0o400, 0o640, 0o440] {
            set_mode(&path, mode);
            assert_eq!(load_or_create_secret(&path).unwrap(), key, "{mode:o}");
        }
        for mode in [0o644, 0o604, 0o660, 0o602, 0o601, 0o610] {
            set_mode(&path, mode);
            let e = load_or_create_secret(&path).unwrap_err().to_string();
            assert!(
                e.contains(&format!("mode {mode:04o} lets others")),
                "{mode:o}: {e}"
            );
        }
    }

    #[test]
    fn a_file_of_the_wrong_size_is_refused_and_kept() {
        let dir = scratch("size");
        let path = dir.path().join("k");
        for len in [0usize, 31, 33, 64] {
            std::fs::write(&path, vec![7u8; len]).unwrap();
            set_mode(&path, 0o600);
            let e = load_or_create_secret(&path).unwrap_err();
            assert!(
                e.to_string().contains(&format!("{len} bytes, not 32")),
                "{e}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap().len(),
                len,
                "never overwritten"
            );
        }
    }

    #[test]
    fn what_is_not_a_regular_file_is_refused_without_blocking() {
        let dir = scratch("kinds");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = load_or_create_secret(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file (a FIFO)"), "{e}");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        set_mode(&sub, 0o700);
        let e = load_or_create_secret(&sub).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let e = load_or_create_secret(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a device"), "{e}");
        // A missing directory is said, not created.
        let e = load_or_create_secret(&dir.path().join("nope/k"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("its directory"), "{e}");
        assert!(!dir.path().join("nope").exists());
    }

    #[test]
    fn a_symlink_to_a_good_key_is_followed() {
        let dir = scratch("link");
        let real = dir.path().join("real");
        let key = load_or_create_secret(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(load_or_create_secret(&link).unwrap(), key);
    }

    #[test]
    fn processes_starting_at_once_end_with_one_key() {
        let dir = scratch("race");
        let path = dir.path().join("k");
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create_secret(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert_eq!(std::fs::read(&path).unwrap(), keys[0]);
    }
}
