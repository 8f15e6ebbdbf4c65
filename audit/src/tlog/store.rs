//! Where signed checkpoints are kept, outside the database.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::TlogError;
use super::checkpoint::{Checkpoint, origin_for};

/// A place outside the audited database that keeps each stream's signed
/// checkpoints. Implement it for an object store, a WORM bucket or a
/// transparency log's witness; [`DirStore`] keeps them in a directory.
pub trait CheckpointStore: Send + Sync {
    /// Keeps a signed checkpoint of `stream` of `size` events. Saving the
    /// same size again replaces nothing that differs silently: an
    /// implementation keeps the first note of each size.
    fn save(
        &self,
        stream: &str,
        size: u64,
        note: &str,
    ) -> impl Future<Output = Result<(), TlogError>> + Send;

    /// The signed checkpoint of `stream` with the largest size, if any.
    fn latest(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<String>, TlogError>> + Send;

    /// The signed checkpoint of `stream` of exactly `size` events, if kept.
    fn get(
        &self,
        stream: &str,
        size: u64,
    ) -> impl Future<Output = Result<Option<String>, TlogError>> + Send;
}

impl<S: CheckpointStore> CheckpointStore for Arc<S> {
    fn save(
        &self,
        stream: &str,
        size: u64,
        note: &str,
    ) -> impl Future<Output = Result<(), TlogError>> + Send {
        (**self).save(stream, size, note)
    }
    fn latest(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<String>, TlogError>> + Send {
        (**self).latest(stream)
    }
    fn get(
        &self,
        stream: &str,
        size: u64,
    ) -> impl Future<Output = Result<Option<String>, TlogError>> + Send {
        (**self).get(stream, size)
    }
}

/// Checkpoints in a directory: `<dir>/<stream>/<size>.checkpoint` and
/// `<dir>/<stream>/latest`, the stream percent-encoded as in its origin
/// (`%2Fpromotions`). Every file is written atomically (a temporary file in
/// the same directory, synced, then renamed over the target, then the
/// directory synced), so a reader never sees a partial checkpoint;
/// `latest` only ever moves to a larger size.
///
/// Put the directory where the database's writers cannot write: another
/// host's mount, a bucket synced from it, a WORM volume.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// A store in `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stream_dir(&self, stream: &str) -> PathBuf {
        // The encoded stream without the log prefix: a file name without '/'.
        let origin = origin_for("", stream);
        self.dir.join(&origin[1..])
    }

    fn save_blocking(&self, stream: &str, size: u64, note: &str) -> Result<(), TlogError> {
        let dir = self.stream_dir(stream);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let file = dir.join(format!("{size}.checkpoint"));
        match std::fs::read_to_string(&file) {
            Ok(existing) if existing == note => {}
            Ok(_) => {
                return Err(TlogError::Inconsistent {
                    stream: stream.to_owned(),
                    checkpoint_size: size,
                    detail: format!(
                        "{} already holds another checkpoint of this size",
                        file.display()
                    ),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomically(&dir, &file, note)?;
            }
            Err(e) => return Err(io(&file, e)),
        }
        let latest = dir.join("latest");
        let newer = match read_optional(&latest)? {
            None => true,
            Some(text) => latest_size(&text, &latest)? < size,
        };
        if newer {
            write_atomically(&dir, &latest, note)?;
        }
        Ok(())
    }
}

/// The size of a stored checkpoint note (signature not checked: the store
/// is only ordering its own files).
fn latest_size(note: &str, path: &Path) -> Result<u64, TlogError> {
    let text = note.split_once("\n\n").map_or(note, |(t, _)| t);
    Checkpoint::parse(&format!("{text}\n"))
        .map(|c| c.size)
        .map_err(|e| TlogError::MalformedCheckpoint {
            detail: format!("{}: {e}", path.display()),
        })
}

fn io(path: &Path, source: std::io::Error) -> TlogError {
    TlogError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, TlogError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

fn write_atomically(dir: &Path, target: &Path, contents: &str) -> Result<(), TlogError> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| io(dir, std::io::Error::other(e.to_string())))?;
    let tmp = dir.join(format!(".tmp-{}", hex::encode(suffix)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        f.write_all(contents.as_bytes()).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, target).map_err(|e| io(target, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TlogError> + Send + 'static,
) -> Result<T, TlogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TlogError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

impl CheckpointStore for DirStore {
    async fn save(&self, stream: &str, size: u64, note: &str) -> Result<(), TlogError> {
        let (this, stream, note) = (self.clone(), stream.to_owned(), note.to_owned());
        blocking(move || this.save_blocking(&stream, size, &note)).await
    }

    async fn latest(&self, stream: &str) -> Result<Option<String>, TlogError> {
        let path = self.stream_dir(stream).join("latest");
        blocking(move || read_optional(&path)).await
    }

    async fn get(&self, stream: &str, size: u64) -> Result<Option<String>, TlogError> {
        let path = self.stream_dir(stream).join(format!("{size}.checkpoint"));
        blocking(move || read_optional(&path)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::NoteSigner;

    fn temp_dir(tag: &str) -> PathBuf {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        std::env::temp_dir().join(format!("audit-tlog-{tag}-{}", hex::encode(r)))
    }

    #[tokio::test]
    async fn keeps_checkpoints_and_the_latest() {
        let dir = temp_dir("store");
        let store = DirStore::new(&dir);
        let signer = NoteSigner::generate("log").unwrap();
        let note = |size: u64| {
            Checkpoint::new(origin_for("log", "/s"), size, [size as u8; 32])
                .sign(&signer)
                .unwrap()
        };
        assert_eq!(store.latest("/s").await.unwrap(), None);
        store.save("/s", 5, &note(5)).await.unwrap();
        store.save("/s", 9, &note(9)).await.unwrap();
        // An older one saved later does not move `latest` back.
        store.save("/s", 7, &note(7)).await.unwrap();
        assert_eq!(store.latest("/s").await.unwrap(), Some(note(9)));
        assert_eq!(store.get("/s", 7).await.unwrap(), Some(note(7)));
        assert_eq!(store.get("/s", 8).await.unwrap(), None);
        assert!(dir.join("%2Fs").join("9.checkpoint").is_file());
        // The same note again is fine; another note of a kept size is refused.
        store.save("/s", 9, &note(9)).await.unwrap();
        let other = Checkpoint::new(origin_for("log", "/s"), 9, [0; 32])
            .sign(&signer)
            .unwrap();
        assert!(matches!(
            store.save("/s", 9, &other).await,
            Err(TlogError::Inconsistent {
                checkpoint_size: 9,
                ..
            })
        ));
        // No temporary file is left behind.
        let leftovers = std::fs::read_dir(dir.join("%2Fs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
        // A corrupt `latest` is an error, not silently replaced.
        std::fs::write(dir.join("%2Fs").join("latest"), "garbage").unwrap();
        assert!(matches!(
            store.save("/s", 10, &note(10)).await,
            Err(TlogError::MalformedCheckpoint { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn unwritable_directories_are_io_errors() {
        let dir = temp_dir("file");
        std::fs::write(&dir, "a file, not a directory").unwrap();
        let store = DirStore::new(&dir);
        let err = store.save("/s", 1, "x\n\n").await.unwrap_err();
        assert!(matches!(err, TlogError::Io { .. }), "{err}");
        std::fs::remove_file(&dir).unwrap();
    }
}
