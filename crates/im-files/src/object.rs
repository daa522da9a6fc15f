//! The [`FileStore`] adapter over the `object_store` crate: file bytes in S3-like storage,
//! or in a directory every node of a cluster mounts.

use crate::FileError;
use crate::store::{ByteStream, FileSink, FileStore, StoredKey};
use async_trait::async_trait;
use futures_util::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Part size for a generic store: S3 refuses smaller parts (but the last).
const REMOTE_PART: usize = 5 * 1024 * 1024;
/// Part size for a local directory, which has no minimum: less memory per upload.
const LOCAL_PART: usize = 1024 * 1024;
/// Parts uploading at once per upload; bounds memory to about `(1 + this) * part size`.
const PARTS_IN_FLIGHT: usize = 2;
/// A staged upload untouched for this long belongs to a node that died mid-upload. Uploads
/// stream continuously, so a live one is never this idle, even with clocks a bit apart.
const STALE_UPLOAD: Duration = Duration::from_secs(24 * 3600);

/// File bytes in any [`ObjectStore`], one object per key at the top level; lets a cluster
/// share its files through S3-like storage or a shared directory.
#[derive(Debug, Clone)]
pub struct ObjectFileStore {
    store: Arc<dyn ObjectStore>,
    /// The directory behind a [`ObjectFileStore::local_dir`] store, which `LocalFileSystem`
    /// does not fsync: commits sync it themselves.
    dir: Option<PathBuf>,
    part_size: usize,
}

impl ObjectFileStore {
    /// Uses any object store (S3, GCS, Azure, in-memory); the store owns durability.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            dir: None,
            part_size: REMOTE_PART,
        }
    }

    /// Uses (and creates) a directory shared by the nodes of a cluster, with commits synced
    /// to disk; removes staged uploads that nodes abandoned long ago.
    pub fn local_dir(dir: &Path) -> Result<Self, FileError> {
        std::fs::create_dir_all(dir)?;
        // Sync against the very directory LocalFileSystem writes to, symlinks resolved.
        let dir = std::fs::canonicalize(dir)?;
        remove_stale_uploads(&dir)?;
        let store = LocalFileSystem::new_with_prefix(&dir).map_err(io_err)?;
        Ok(Self {
            store: Arc::new(store),
            dir: Some(dir),
            part_size: LOCAL_PART,
        })
    }

    /// Uses an S3-compatible bucket with credentials from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`), so
    /// secrets stay out of config files; other `AWS_*` settings apply unless `settings`
    /// names them.
    #[cfg(feature = "s3")]
    pub fn s3(settings: &S3Settings) -> Result<Self, FileError> {
        // Both keys or a clear error: without them object_store would fall back to the
        // instance metadata service and fail only at the first request, minutes later.
        S3Credentials::from_env()?;
        Self::s3_build(object_store::aws::AmazonS3Builder::from_env(), settings)
    }

    /// Like [`ObjectFileStore::s3`] with explicit credentials and no `AWS_*` variables
    /// read, for callers (and tests) that hold credentials themselves.
    #[cfg(feature = "s3")]
    pub fn s3_with(settings: &S3Settings, credentials: &S3Credentials) -> Result<Self, FileError> {
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_access_key_id(&credentials.key_id)
            .with_secret_access_key(&credentials.secret_key);
        if let Some(token) = &credentials.token {
            builder = builder.with_token(token);
        }
        Self::s3_build(builder, settings)
    }

    /// Asks the store for a listing it does not need, so a wrong bucket, endpoint or key
    /// stops start-up instead of failing the first upload.
    pub async fn check(&self) -> Result<(), FileError> {
        self.store
            .list_with_delimiter(Some(&ObjectPath::from("im-start-up-check")))
            .await
            .map(|_| ())
            .map_err(io_err)
    }

    #[cfg(feature = "s3")]
    fn s3_build(
        mut builder: object_store::aws::AmazonS3Builder,
        settings: &S3Settings,
    ) -> Result<Self, FileError> {
        if settings.bucket.trim().is_empty() {
            return Err(invalid("the S3 file store needs a bucket name"));
        }
        builder = builder
            .with_bucket_name(&settings.bucket)
            .with_allow_http(settings.allow_http);
        if !settings.region.is_empty() {
            builder = builder.with_region(&settings.region);
        }
        if let Some(endpoint) = settings.endpoint.as_deref().filter(|e| !e.is_empty()) {
            let scheme_ok = endpoint.starts_with("https://")
                || (settings.allow_http && endpoint.starts_with("http://"));
            if !scheme_ok {
                return Err(invalid(&format!(
                    "the S3 endpoint {endpoint:?} must start with https:// (or http:// \
                     with allow_http)"
                )));
            }
            // Path-style (`<endpoint>/<bucket>/<key>`): what MinIO, moto and most
            // S3-compatible servers expect, and needs no DNS name per bucket.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(io_err)?;
        Ok(Self::new(Arc::new(store)))
    }

    fn location(key: &str) -> Result<ObjectPath, FileError> {
        // Keys are generated hex; anything else would be a bug or an attack.
        if is_key(key) {
            Ok(ObjectPath::from(key))
        } else {
            Err(FileError::NotFound)
        }
    }
}

/// Where an S3-compatible bucket is; credentials travel apart ([`S3Credentials`]) so they
/// can come from the environment rather than a config file.
#[cfg(feature = "s3")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// The server's URL for S3-compatible storage (MinIO, Ceph, moto), addressed
    /// path-style; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The bucket, which must already exist: the server never creates one.
    pub bucket: String,
    /// The region requests are signed for; empty keeps `AWS_REGION` or `us-east-1`.
    pub region: String,
    /// Allows a plain `http://` endpoint (a server on a trusted network); off means HTTPS
    /// only, so credentials and bytes are not sent in clear by mistake.
    pub allow_http: bool,
}

/// Static S3 credentials, kept out of `Debug` output so they never reach a log.
#[cfg(feature = "s3")]
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id.
    pub key_id: String,
    /// The secret access key.
    pub secret_key: String,
    /// A session token, for temporary credentials.
    pub token: Option<String>,
}

#[cfg(feature = "s3")]
impl S3Credentials {
    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, so a
    /// deployment's secret store feeds them without a file; both keys are required.
    pub fn from_env() -> Result<Self, FileError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(key_id), Some(secret_key)) => Ok(Self {
                key_id,
                secret_key,
                token: var("AWS_SESSION_TOKEN"),
            }),
            _ => Err(invalid(
                "the S3 file store needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the \
                 environment",
            )),
        }
    }
}

#[cfg(feature = "s3")]
impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("key_id", &self.key_id)
            .field("secret_key", &"<redacted>")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A settings mistake, as the storage error start-up reports.
#[cfg(feature = "s3")]
fn invalid(why: &str) -> FileError {
    FileError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why))
}

fn is_key(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn io_err(e: object_store::Error) -> FileError {
    let text = e.to_string();
    if !text.contains('\n') {
        return FileError::Io(std::io::Error::other(e));
    }
    // Remote stores quote the server's reply (S3's is XML over several lines), and a start-up
    // failure or a log entry should be one line.
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    FileError::Io(std::io::Error::other(line.join(" ")))
}

/// Deletes `<key>#<n>` files (LocalFileSystem's staged uploads) that have not been written
/// for [`STALE_UPLOAD`]: a crash leaves them behind, and the directory is shared, so a
/// fresh one may be another node's upload in progress.
fn remove_stale_uploads(dir: &Path) -> Result<(), FileError> {
    let now = SystemTime::now();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let staged = entry.file_name().to_str().is_some_and(|name| {
            name.split_once('#').is_some_and(|(key, n)| {
                is_key(key) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
        });
        if !staged {
            continue;
        }
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if now
            .duration_since(modified)
            .is_ok_and(|idle| idle > STALE_UPLOAD)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Fsyncs a committed file and its directory, since LocalFileSystem only renames.
async fn sync_file_and_dir(dir: &Path, key: &str) -> std::io::Result<()> {
    tokio::fs::File::open(dir.join(key))
        .await?
        .sync_all()
        .await?;
    // The rename is durable only once the directory is synced.
    tokio::fs::File::open(dir).await?.sync_all().await
}

/// Lists a local directory directly: LocalFileSystem fails the whole listing on one
/// foreign file whose name is not UTF-8, which would keep every node from starting.
async fn local_keys(dir: &Path) -> Result<Vec<StoredKey>, FileError> {
    let mut out = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        // Only files named like our keys are ours; staged uploads (`<key>#<n>`) are not.
        let Some(key) = entry
            .file_name()
            .to_str()
            .filter(|n| is_key(n))
            .map(str::to_owned)
        else {
            continue;
        };
        let meta = match entry.metadata().await {
            Ok(meta) => meta,
            // Removed since read_dir saw it (swept by another node, say).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if meta.is_file() {
            out.push(StoredKey {
                key,
                modified: meta.modified()?,
            });
        }
    }
    Ok(out)
}

struct ObjectSink {
    writer: Option<WriteMultipart>,
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    key: String,
    dir: Option<PathBuf>,
}

impl Drop for ObjectSink {
    /// An upload abandoned mid-way (the client went away) is aborted, so remote stores drop
    /// its parts and a directory loses its staged file.
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let location = self.location.clone();
                handle.spawn(async move {
                    if let Err(e) = writer.abort().await {
                        tracing::warn!(%location, error = %e, "aborting a dropped upload failed");
                    }
                });
            }
            // No runtime to abort on: LocalFileSystem still deletes its staged file on drop.
            Err(_) => drop(writer),
        }
    }
}

#[async_trait]
impl FileSink for ObjectSink {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), FileError> {
        let writer = self.writer.as_mut().ok_or(FileError::NotFound)?;
        writer.write(chunk);
        // Backpressure: the client waits while parts upload, instead of memory filling up.
        writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(io_err)
    }

    async fn commit(mut self: Box<Self>) -> Result<(), FileError> {
        let mut writer = self.writer.take().ok_or(FileError::NotFound)?;
        // A part that failed surfaces here while the upload can still be aborted.
        if let Err(e) = writer.wait_for_capacity(0).await {
            let _ = writer.abort().await;
            return Err(io_err(e));
        }
        writer.finish().await.map_err(io_err)?;
        let Some(dir) = &self.dir else { return Ok(()) };
        if let Err(e) = sync_file_and_dir(dir, &self.key).await {
            // The caller records no metadata for a failed commit; leave no bytes either.
            let _ = self.store.delete(&self.location).await;
            return Err(e.into());
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        if let Err(e) = writer.abort().await {
            tracing::warn!(location = %self.location, error = %e, "aborting an upload failed");
        }
    }
}

#[async_trait]
impl FileStore for ObjectFileStore {
    async fn create(&self, key: &str) -> Result<Box<dyn FileSink>, FileError> {
        let location = Self::location(key)?;
        let upload = self.store.put_multipart(&location).await.map_err(io_err)?;
        Ok(Box::new(ObjectSink {
            writer: Some(WriteMultipart::new_with_chunk_size(upload, self.part_size)),
            store: self.store.clone(),
            location,
            key: key.to_owned(),
            dir: self.dir.clone(),
        }))
    }

    async fn open(&self, key: &str, start: u64, end: u64) -> Result<ByteStream, FileError> {
        let location = Self::location(key)?;
        if end < start {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..end.saturating_add(1))),
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&location, options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Err(FileError::NotFound),
            Err(e) => return Err(io_err(e)),
        };
        let stream = got
            .into_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        Ok(Box::pin(stream))
    }

    async fn remove(&self, key: &str) -> Result<(), FileError> {
        match self.store.delete(&Self::location(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn keys(&self) -> Result<Vec<StoredKey>, FileError> {
        if let Some(dir) = &self.dir {
            return local_keys(dir).await;
        }
        // Keys live at the top level, so foreign subtrees are not walked.
        let listed = self.store.list_with_delimiter(None).await.map_err(io_err)?;
        Ok(listed
            .objects
            .into_iter()
            // Only objects named like our keys are ours; anything else put there is left alone.
            .filter(|meta| is_key(meta.location.as_ref()))
            .map(|meta| StoredKey {
                key: meta.location.to_string(),
                modified: SystemTime::from(meta.last_modified),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn key_names(store: &ObjectFileStore) -> Vec<String> {
        store
            .keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.key)
            .collect()
    }

    async fn read_all(mut body: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    /// Names in `dir` that start with `prefix`, staged uploads included.
    fn entries_starting(dir: &Path, prefix: &str) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// The abort of a dropped sink runs on a spawned task; give it a moment.
    async fn wait_until_gone(dir: &Path, prefix: &str) {
        for _ in 0..200 {
            if entries_starting(dir, prefix).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("left behind: {:?}", entries_starting(dir, prefix));
    }

    #[tokio::test]
    async fn object_store_roundtrip_and_foreign_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README.txt"), "not ours").unwrap();
        std::fs::write(dir.path().join("0123.part"), "not ours either").unwrap();
        std::fs::create_dir(dir.path().join("abcdef")).unwrap();
        std::fs::write(dir.path().join("abcdef").join("0123"), "nested").unwrap();
        // Staged uploads: one abandoned long ago, one another node may still be writing.
        let old = std::fs::File::create(dir.path().join("00aa#1")).unwrap();
        old.set_modified(SystemTime::now() - 2 * STALE_UPLOAD)
            .unwrap();
        drop(old);
        std::fs::write(dir.path().join("00bb#1"), "in progress").unwrap();
        // Names object_store finds odd must not break the listing.
        for odd in [
            ".hidden",
            "with space",
            "100%",
            "a%zzb",
            "x#",
            "ab#cd",
            "café",
        ] {
            std::fs::write(dir.path().join(odd), "not ours").unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let name = std::ffi::OsStr::from_bytes(b"bad\xffutf8");
            std::fs::write(dir.path().join(name), "not ours").unwrap();
        }

        let store = ObjectFileStore::local_dir(dir.path()).unwrap();
        assert!(
            !dir.path().join("00aa#1").exists(),
            "stale staged upload goes"
        );
        assert!(
            dir.path().join("00bb#1").exists(),
            "fresh staged upload stays"
        );
        assert!(
            store.keys().await.unwrap().is_empty(),
            "foreign files, directories and staged uploads are not keys"
        );

        let mut sink = store.create("00ff").await.unwrap();
        sink.write(b"hello ").await.unwrap();
        sink.write(b"wor").await.unwrap();
        sink.write(b"ld").await.unwrap();
        assert!(
            store.keys().await.unwrap().is_empty(),
            "nothing is visible before commit"
        );
        sink.commit().await.unwrap();
        let keys = store.keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key, "00ff");
        let age = SystemTime::now()
            .duration_since(keys[0].modified)
            .unwrap_or_default();
        assert!(age < Duration::from_secs(60), "modified {age:?} ago");
        let body = store.open("00ff", 6, 10).await.unwrap();
        assert_eq!(read_all(body).await, b"world");
        let body = store.open("00ff", 0, 0).await.unwrap();
        assert_eq!(read_all(body).await, b"h");

        // Dropped mid-way (the client went away): nothing under the key, no staged file.
        let mut sink = store.create("11ee").await.unwrap();
        sink.write(b"partial").await.unwrap();
        assert!(!entries_starting(dir.path(), "11ee#").is_empty());
        drop(sink);
        assert!(matches!(
            store.open("11ee", 0, 1).await,
            Err(FileError::NotFound)
        ));
        wait_until_gone(dir.path(), "11ee").await;

        // Aborted: the same.
        let mut sink = store.create("22dd").await.unwrap();
        sink.write(b"partial").await.unwrap();
        sink.abort().await;
        assert!(entries_starting(dir.path(), "22dd").is_empty());
        assert!(matches!(
            store.open("22dd", 0, 1).await,
            Err(FileError::NotFound)
        ));

        for bad in ["", "../x", "abcdef/0123", "00ff#1", "README.txt", "00 ff"] {
            assert!(
                matches!(store.open(bad, 0, 1).await, Err(FileError::NotFound)),
                "{bad:?}"
            );
            assert!(
                matches!(store.create(bad).await, Err(FileError::NotFound)),
                "{bad:?}"
            );
            assert!(
                matches!(store.remove(bad).await, Err(FileError::NotFound)),
                "{bad:?}"
            );
        }

        let keys = key_names(&store).await;
        assert_eq!(keys, ["00ff"]);
        store.remove("00ff").await.unwrap();
        store.remove("00ff").await.unwrap();
        assert!(store.keys().await.unwrap().is_empty());
        assert!(matches!(
            store.open("00ff", 0, 1).await,
            Err(FileError::NotFound)
        ));
        assert!(dir.path().join("README.txt").exists());
        assert!(dir.path().join("abcdef").join("0123").exists());
    }

    #[tokio::test]
    async fn object_store_streams_a_large_file() {
        const CHUNK: usize = 64 * 1024;
        const SIZE: usize = 20 * 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectFileStore::local_dir(dir.path()).unwrap();
        let mut sink = store.create("abc123").await.unwrap();
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
        for _ in 0..SIZE / CHUNK {
            sink.write(&chunk).await.unwrap();
        }
        sink.commit().await.unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("abc123")).unwrap().len(),
            SIZE as u64
        );
        assert!(
            entries_starting(dir.path(), "abc123#").is_empty(),
            "no staged file after commit"
        );

        let mut body = store.open("abc123", 0, SIZE as u64 - 1).await.unwrap();
        let mut total = 0usize;
        let mut largest = 0usize;
        while let Some(part) = body.next().await {
            let part = part.unwrap();
            // Every byte is where it was written.
            assert!(
                part.iter()
                    .enumerate()
                    .all(|(i, b)| *b == ((total + i) % CHUNK % 251) as u8)
            );
            total += part.len();
            largest = largest.max(part.len());
        }
        assert_eq!(total, SIZE);
        assert!(largest < SIZE, "streamed in chunks, not read whole");

        let tail = store
            .open("abc123", SIZE as u64 - 3, SIZE as u64 - 1)
            .await
            .unwrap();
        let want: Vec<u8> = (CHUNK - 3..CHUNK).map(|i| (i % 251) as u8).collect();
        assert_eq!(read_all(tail).await, want);
    }

    #[tokio::test]
    async fn any_object_store_works() {
        let store = ObjectFileStore::new(Arc::new(object_store::memory::InMemory::new()));
        let mut sink = store.create("beef").await.unwrap();
        sink.write(b"in ").await.unwrap();
        sink.write(b"memory").await.unwrap();
        sink.commit().await.unwrap();
        let keys = key_names(&store).await;
        assert_eq!(keys, ["beef"]);
        let body = store.open("beef", 3, 8).await.unwrap();
        assert_eq!(read_all(body).await, b"memory");

        let mut sink = store.create("cafe").await.unwrap();
        sink.write(b"gone").await.unwrap();
        sink.abort().await;
        assert!(matches!(
            store.open("cafe", 0, 1).await,
            Err(FileError::NotFound)
        ));
        store.remove("beef").await.unwrap();
        store.remove("beef").await.unwrap();
        assert!(store.keys().await.unwrap().is_empty());
    }
}
