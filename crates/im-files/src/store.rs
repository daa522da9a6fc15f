//! Ports: where the bytes live ([`FileStore`]) and where the metadata lives ([`FileIndex`]),
//! and the default disk adapter for the bytes.

use crate::FileError;
use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
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
    /// Every stored key, to find bytes whose metadata was never written (a crash mid-upload).
    async fn keys(&self) -> Result<Vec<String>, FileError>;
}

/// One uploaded file's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[async_trait]
pub trait FileIndex: Send + Sync + 'static {
    /// Records a new file; returns its id (the `id` field of `meta` is ignored).
    async fn insert_file(&self, meta: &FileMeta) -> Result<u64, FileError>;
    /// Every recorded file, expired ones included, so start-up can sweep them.
    async fn all_files(&self) -> Result<Vec<FileMeta>, FileError>;
    /// Marks a file's bytes as deleted; its metadata stays so old ids answer `file_expired`.
    async fn mark_swept(&self, id: u64) -> Result<(), FileError>;
}

/// File bytes under a directory, one file per key, written through a `.part` file and
/// renamed on commit so a crash never leaves a half file under a real key.
#[derive(Debug, Clone)]
pub struct DiskFileStore {
    dir: PathBuf,
}

impl DiskFileStore {
    /// Uses (and creates) `dir`; removes `.part` leftovers of interrupted uploads.
    pub fn open(dir: &Path) -> Result<Self, FileError> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "part") {
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
    file: tokio::fs::File,
    part: PathBuf,
    dest: PathBuf,
}

#[async_trait]
impl FileSink for DiskSink {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), FileError> {
        self.file.write_all(chunk).await?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), FileError> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        tokio::fs::rename(&self.part, &self.dest).await?;
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.part).await;
    }
}

#[async_trait]
impl FileStore for DiskFileStore {
    async fn create(&self, key: &str) -> Result<Box<dyn FileSink>, FileError> {
        let dest = self.path(key)?;
        let part = dest.with_extension("part");
        let file = tokio::fs::File::create(&part).await?;
        Ok(Box::new(DiskSink { file, part, dest }))
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

    async fn keys(&self) -> Result<Vec<String>, FileError> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.dir).await?;
        while let Some(entry) = dir.next_entry().await? {
            if let Some(name) = entry.file_name().to_str() {
                if !name.ends_with(".part") {
                    out.push(name.to_owned());
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
