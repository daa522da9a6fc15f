//! Ports: where the bytes live ([`FileStore`]) and where the metadata lives ([`FileIndex`]),
//! and the default disk adapter for the bytes.

use crate::FileError;
use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use im_cluster::Logged;
use im_protocol::UserId;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// A file's bytes as a stream of chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// An upload in progress: written in chunks, then committed or aborted.
#[async_trait]
pub trait FileSink: Send {
    /// Appends a chunk.
    async fn write(&mut self, chunk: &[u8]) -> Result<(), FileError>;
    /// Makes the bytes durable and visible under the key.
    async fn commit(self: Box<Self>) -> Result<(), FileError>;
    /// Throws the partial bytes away.
    async fn abort(self: Box<Self>);
}

/// Where file bytes live. The disk adapter is the default; an object store could be another.
#[async_trait]
pub trait FileStore: Send + Sync + 'static {
    /// Starts writing the bytes of `key`.
    async fn create(&self, key: &str) -> Result<Box<dyn FileSink>, FileError>;
    /// Streams bytes `start..=end` of `key`.
    async fn open(&self, key: &str, start: u64, end: u64) -> Result<ByteStream, FileError>;
    /// Deletes `key`; deleting a missing key is not an error.
    async fn remove(&self, key: &str) -> Result<(), FileError>;
    /// Every stored key with when it was last written, to find bytes whose metadata was never
    /// written (a crash mid-upload). The time lets a cluster spare an upload that another
    /// node has just committed and is about to record.
    async fn keys(&self) -> Result<Vec<StoredKey>, FileError>;
}

/// A key in a [`FileStore`], and when its bytes were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The key.
    pub key: String,
    /// When its bytes were last written.
    pub modified: std::time::SystemTime,
}

/// One uploaded file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    /// The id messages refer to.
    pub id: u64,
    /// The unguessable URL token.
    pub token: String,
    /// Who uploaded it.
    pub owner: UserId,
    /// The sanitized original name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The sniffed type.
    pub content_type: String,
    /// Where the bytes are in the [`FileStore`].
    pub key: String,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds after which the link is dead.
    pub expires_at: u64,
}

/// Where file metadata lives (the SQLite store by default).
///
/// Writes record a [`crate::FileChange`] in the ordered log in the same transaction and
/// return its position; the in-memory index changes when this node's follower applies it.
#[async_trait]
pub trait FileIndex: Send + Sync + 'static {
    /// Records a new file; returns its id (the `id` field of `meta` is ignored).
    async fn insert_file(&self, meta: &FileMeta) -> Result<Logged<u64>, FileError>;
    /// Every recorded file, expired ones included, so start-up can sweep them.
    async fn all_files(&self) -> Result<Vec<FileMeta>, FileError>;
    /// Marks a file's bytes as deleted; its metadata stays so old ids answer `file_expired`.
    /// Returns `false` (and records nothing) if it was already marked, by another node say.
    async fn mark_swept(&self, id: u64) -> Result<Logged<bool>, FileError>;
    /// Runs the sweep on one node at a time: the lease while this node holds it, `None`
    /// while another does. The default (one process) always grants it.
    async fn sweep_lease(&self) -> Result<Option<SweepLease>, FileError> {
        Ok(Some(SweepLease(Box::new(()))))
    }
}

/// Held while this node sweeps; dropping it lets another node sweep.
pub struct SweepLease(pub Box<dyn Send + Sync>);

impl std::fmt::Debug for SweepLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SweepLease")
    }
}

/// File bytes under a directory, one file per key, written through a `.part` file and
/// renamed on commit so a crash never leaves a half file under a real key.
#[derive(Debug, Clone)]
pub struct DiskFileStore {
    dir: PathBuf,
}

impl DiskFileStore {
    /// Uses (and creates) `dir`; removes `.part` leftovers of interrupted uploads that are
    /// over an hour old (a younger one may be another node's upload in progress on a shared
    /// directory).
    pub fn open(dir: &Path) -> Result<Self, FileError> {
        Self::open_sparing(dir, std::time::Duration::from_secs(3600))
    }

    /// Like [`DiskFileStore::open`], sparing `.part` files younger than `grace`.
    pub fn open_sparing(dir: &Path, grace: std::time::Duration) -> Result<Self, FileError> {
        std::fs::create_dir_all(dir)?;
        let now = std::time::SystemTime::now();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default())
                .unwrap_or_default();
            if path.extension().is_some_and(|e| e == "part") && age >= grace {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, FileError> {
        // Keys are generated hex; anything else would be a bug or an attack.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FileError::NotFound);
        }
        Ok(self.dir.join(key))
    }
}

struct DiskSink {
    file: Option<tokio::fs::File>,
    part: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl Drop for DiskSink {
    /// An upload abandoned mid-way (the client went away) leaves no `.part` file behind.
    fn drop(&mut self) {
        if !self.committed {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

#[async_trait]
impl FileSink for DiskSink {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), FileError> {
        match self.file.as_mut() {
            Some(f) => Ok(f.write_all(chunk).await?),
            None => Err(FileError::NotFound),
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<(), FileError> {
        let mut file = self.file.take().ok_or(FileError::NotFound)?;
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&self.part, &self.dest).await?;
        // The rename is durable only once the directory is synced.
        tokio::fs::File::open(&self.dir).await?.sync_all().await?;
        self.committed = true;
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        drop(self.file.take());
        if tokio::fs::remove_file(&self.part).await.is_ok() {
            self.committed = true; // nothing left for Drop to do
        }
    }
}

#[async_trait]
impl FileStore for DiskFileStore {
    async fn create(&self, key: &str) -> Result<Box<dyn FileSink>, FileError> {
        let dest = self.path(key)?;
        let part = dest.with_extension("part");
        let file = tokio::fs::File::create(&part).await?;
        Ok(Box::new(DiskSink {
            file: Some(file),
            part,
            dest,
            dir: self.dir.clone(),
            committed: false,
        }))
    }

    async fn open(&self, key: &str, start: u64, end: u64) -> Result<ByteStream, FileError> {
        let mut file = match tokio::fs::File::open(self.path(key)?).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileError::NotFound),
            Err(e) => return Err(e.into()),
        };
        file.seek(std::io::SeekFrom::Start(start)).await?;
        let remaining = end.saturating_sub(start) + 1;
        let stream =
            futures_util::stream::unfold((file, remaining), |(mut file, left)| async move {
                if left == 0 {
                    return None;
                }
                let mut buf = vec![0u8; left.min(64 * 1024) as usize];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
                    }
                    Err(e) => Some((Err(e), (file, 0))),
                }
            });
        Ok(Box::pin(stream))
    }

    async fn remove(&self, key: &str) -> Result<(), FileError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn keys(&self) -> Result<Vec<StoredKey>, FileError> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = dir.next_entry().await? {
            // Only files named like our keys are ours; anything else put there is left alone.
            let ours = entry
                .file_name()
                .to_str()
                .filter(|n| self.path(n).is_ok())
                .map(str::to_owned);
            if let Some(key) = ours {
                let meta = entry.metadata().await?;
                if meta.is_file() {
                    out.push(StoredKey {
                        key,
                        modified: meta.modified()?,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// A file's bytes as an HTTP body.
pub struct FileBody(ByteStream);

impl FileBody {
    /// Wraps a byte stream.
    pub fn new(stream: ByteStream) -> Self {
        Self(stream)
    }
}

impl std::fmt::Debug for FileBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileBody")
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .as_mut()
            .poll_next(cx)
            .map(|item| item.map(|r| r.map(http_body::Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn disk_store_roundtrip_and_foreign_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README.txt"), "not ours").unwrap();
        std::fs::create_dir(dir.path().join("abcdef")).unwrap();
        std::fs::write(dir.path().join("0123.part"), "leftover").unwrap();
        let store = DiskFileStore::open_sparing(dir.path(), std::time::Duration::ZERO).unwrap();
        assert!(
            !dir.path().join("0123.part").exists(),
            "leftover parts go at start"
        );
        assert!(
            store.keys().await.unwrap().is_empty(),
            "foreign files and directories are not keys"
        );

        let mut sink = store.create("00ff").await.unwrap();
        sink.write(b"hello ").await.unwrap();
        sink.write(b"world").await.unwrap();
        sink.commit().await.unwrap();
        let keys = store.keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key, "00ff");
        let mut body = store.open("00ff", 6, 10).await.unwrap();
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"world");

        // Dropped mid-way (the client went away): no part file is left.
        let mut sink = store.create("11ee").await.unwrap();
        sink.write(b"partial").await.unwrap();
        drop(sink);
        assert!(!dir.path().join("11ee.part").exists());
        assert!(matches!(
            store.open("11ee", 0, 1).await,
            Err(FileError::NotFound)
        ));
        assert!(matches!(
            store.open("../x", 0, 1).await,
            Err(FileError::NotFound)
        ));
        store.remove("00ff").await.unwrap();
        store.remove("00ff").await.unwrap();
    }
}
