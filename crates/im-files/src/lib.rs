#![doc = include_str!("../README.md")]
//!
//! Invariants:
//! - An upload is streamed to the [`FileStore`] in chunks; the size cap is enforced while
//!   streaming, and an upload over it leaves nothing behind.
//! - The type comes from the first bytes, never from the client. Only raster images are
//!   served inline; everything else, SVG and HTML included, is an attachment.
//! - Links carry 256 random bits and die at `expires_at`; a sweeper deletes the bytes.

mod change;
mod detect;
pub mod multipart;
mod name;
#[cfg(feature = "object-store")]
mod object;
mod range;
mod store;

pub use change::FileChange;
pub use detect::{INLINE_TYPES, is_inline, sniff};
pub use name::{content_disposition, percent_decode, percent_encode, sanitize};
#[cfg(feature = "object-store")]
pub use object::ObjectFileStore;
#[cfg(feature = "s3")]
pub use object::{S3Credentials, S3Settings};
pub use range::{RangeReply, parse as parse_range};
pub use store::{
    ByteStream, DiskFileStore, FileBody, FileIndex, FileMeta, FileSink, FileStore, StoredKey,
    SweepLease,
};

use bytes::Bytes;
use futures_core::Stream;
use im_channel::{Handler, Pending};
use im_classifier::KindSpec;
use im_cluster::{Applier, Logged, Position, Progress};
use im_protocol::record::Versioned;
use im_protocol::wire::{Attachment, FileView};
use im_protocol::{ApiError, ErrorCode, UserId, now_millis};
use multipart::{Event, Limits, Multipart, MultipartError, Parser, ReadError};
use parking_lot::RwLock;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// File proxy failures.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The upload is over the size cap.
    #[error("the file is over the {0}-byte limit")]
    TooLarge(u64),
    /// The upload would take the owner over their quota.
    #[error("this upload would exceed your storage quota of {0} bytes")]
    QuotaExceeded(u64),
    /// The request is not `multipart/form-data`.
    #[error("send the file as multipart/form-data")]
    NotMultipart,
    /// The multipart body has no `file` field, or could not be read.
    #[error("bad upload: {0}")]
    BadUpload(String),
    /// The multipart body broke one of its caps (413) or is malformed (400).
    #[error(transparent)]
    Multipart(#[from] MultipartError),
    /// No part of the body arrived for the server's body timeout.
    #[error("the upload stalled: no part of the body arrived in time")]
    BodyTimeout,
    /// The file id is not one the sender uploaded.
    #[error("no file {0} of yours")]
    UnknownFile(u64),
    /// The file's link has expired.
    #[error("file {0} has expired")]
    Expired(u64),
    /// An `image` message points at a file that is not a raster image.
    #[error("file {0} is not an image (png, jpeg, gif or webp)")]
    NotAnImage(u64),
    /// No such file (or link).
    #[error("no such file")]
    NotFound,
    /// Disk or store failure.
    #[error("file storage: {0}")]
    Io(#[from] std::io::Error),
    /// Metadata store failure.
    #[error("file index: {0}")]
    Index(#[source] im_protocol::Cause),
    /// This node has not applied the upload's record in time; retrying helps.
    #[error("this node is catching up; try again")]
    Lagging,
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        let code = match &e {
            FileError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            FileError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            FileError::NotMultipart => ErrorCode::UnsupportedMediaType,
            FileError::BadUpload(_) => ErrorCode::InvalidRequest,
            FileError::Multipart(m) if m.is_too_large() => ErrorCode::PayloadTooLarge,
            FileError::Multipart(MultipartError::BadBoundary) => ErrorCode::UnsupportedMediaType,
            FileError::Multipart(_) => ErrorCode::InvalidRequest,
            FileError::BodyTimeout => ErrorCode::RequestTimeout,
            FileError::UnknownFile(_) => ErrorCode::UnknownFile,
            FileError::Expired(_) => ErrorCode::FileExpired,
            FileError::NotAnImage(_) => ErrorCode::InvalidBody,
            FileError::NotFound => ErrorCode::NotFound,
            FileError::Lagging => ErrorCode::Overloaded,
            FileError::Io(_) | FileError::Index(_) => {
                return ApiError::new(ErrorCode::Internal, "file storage failure").caused_by(e);
            }
        };
        ApiError::new(code, e.to_string())
    }
}

/// The least age of stored bytes without metadata that upkeep deletes while serving: an
/// upload commits its bytes a moment before it records them.
pub const IN_FLIGHT: Duration = Duration::from_secs(600);

/// The default per-user quota: 1 GiB of live files, so that one account cannot fill the
/// disk unless the operator chooses no limit.
pub const DEFAULT_QUOTA: u64 = 1 << 30;

/// File proxy settings.
#[derive(Debug, Clone, Copy)]
pub struct FilesConfig {
    /// The most bytes one upload may have.
    pub max_bytes: u64,
    /// How long a link lives.
    pub ttl: Duration,
    /// How often expired files are swept.
    pub sweep_every: Duration,
    /// Bytes of live files one user may hold; `None` for no limit. 1 GiB by default.
    pub quota: Option<u64>,
    /// Stored bytes without metadata are deleted only once they are this old, so that in a
    /// cluster an upload another node has just committed, and is about to record, is spared.
    pub orphan_grace: Duration,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_bytes: 25 * 1024 * 1024,
            ttl: Duration::from_secs(24 * 3600),
            sweep_every: Duration::from_secs(60),
            quota: Some(DEFAULT_QUOTA),
            orphan_grace: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug)]
struct Entry {
    meta: Arc<FileMeta>,
    swept: bool,
}

/// The temporary file proxy: uploads, unguessable expiring links, and the `image` and
/// `file` message kinds.
pub struct FileProxy {
    store: Arc<dyn FileStore>,
    index: Arc<dyn FileIndex>,
    config: FilesConfig,
    files: RwLock<HashMap<u64, Entry>>,
    by_token: RwLock<HashMap<String, u64>>,
    usage: Usage,
    progress: std::sync::OnceLock<Arc<dyn Progress>>,
}

/// Bytes per owner, live files and uploads in flight together, so parallel uploads cannot
/// jointly pass the quota.
#[derive(Debug, Default)]
struct Usage(parking_lot::Mutex<HashMap<UserId, u64>>);

impl Usage {
    fn add(&self, owner: UserId, bytes: u64, quota: Option<u64>) -> Result<(), FileError> {
        let mut map = self.0.lock();
        let used = map.entry(owner).or_default();
        if let Some(q) = quota.filter(|q| *used + bytes > *q) {
            return Err(FileError::QuotaExceeded(q));
        }
        *used += bytes;
        Ok(())
    }

    fn release(&self, owner: UserId, bytes: u64) {
        let mut map = self.0.lock();
        if let Some(used) = map.get_mut(&owner) {
            *used = used.saturating_sub(bytes);
            if *used == 0 {
                map.remove(&owner);
            }
        }
    }
}

/// Bytes an upload has claimed; given back unless the upload completes (also when the
/// request is dropped mid-way).
struct Reservation<'a> {
    usage: &'a Usage,
    owner: UserId,
    bytes: u64,
    keep: bool,
}

impl Reservation<'_> {
    fn grow(&mut self, bytes: u64, quota: Option<u64>) -> Result<(), FileError> {
        self.usage.add(self.owner, bytes, quota)?;
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.usage.release(self.owner, self.bytes);
        }
    }
}

impl std::fmt::Debug for FileProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileProxy")
            .field("files", &self.files.read().len())
            .finish()
    }
}

fn random_hex(bytes: usize) -> Result<String, FileError> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).map_err(|e| FileError::Io(std::io::Error::other(e.to_string())))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether a URL token has the shape we issue (64 hex chars), checked before any lookup.
fn plausible_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

impl FileProxy {
    /// Loads the index, then sweeps what expired while the server was down and deletes bytes
    /// that never got metadata.
    pub async fn new(
        store: Arc<dyn FileStore>,
        index: Arc<dyn FileIndex>,
        config: FilesConfig,
    ) -> Result<Arc<Self>, FileError> {
        let all = index.all_files().await?;
        let mut files = HashMap::new();
        let mut by_token = HashMap::new();
        let now = now_millis();
        let usage = Usage::default();
        for meta in all {
            let swept = meta.key.is_empty();
            if !swept {
                let _ = usage.add(meta.owner, meta.size, None);
            }
            if !swept && meta.expires_at > now {
                by_token.insert(meta.token.clone(), meta.id);
            }
            files.insert(
                meta.id,
                Entry {
                    meta: Arc::new(meta),
                    swept,
                },
            );
        }
        let proxy = Arc::new(Self {
            store,
            index,
            config,
            files: RwLock::new(files),
            by_token: RwLock::new(by_token),
            usage,
            progress: std::sync::OnceLock::new(),
        });
        // Nothing of this process is uploading yet, so only other nodes need the grace.
        proxy.upkeep(proxy.config.orphan_grace).await?;
        Ok(proxy)
    }

    /// Connects this node's log follower: an upload answers once the follower has applied
    /// its record, so the link works here at once. Until then, uploads fail.
    pub fn attach_log(&self, progress: Arc<dyn Progress>) {
        let _ = self.progress.set(progress);
    }

    /// One round of upkeep while serving, on one node of a cluster at a time (the index's
    /// sweep lease): delete bytes that never got metadata, then sweep expired files. Bytes
    /// younger than [`IN_FLIGHT`] (or the configured grace, if longer) are spared: an upload
    /// of this node or another may be between committing its bytes and recording them.
    pub async fn maintain(&self) -> Result<usize, FileError> {
        self.upkeep(self.config.orphan_grace.max(IN_FLIGHT)).await
    }

    async fn upkeep(&self, grace: Duration) -> Result<usize, FileError> {
        let Some(_lease) = self.index.sweep_lease().await? else {
            return Ok(0);
        };
        // The in-memory index is the follower's copy of the table; what it lacks was
        // recorded too recently to be past the grace.
        let known: std::collections::HashSet<String> = self
            .files
            .read()
            .values()
            .filter(|e| !e.swept)
            .map(|e| e.meta.key.clone())
            .collect();
        let now = std::time::SystemTime::now();
        for stored in self.store.keys().await? {
            let age = now.duration_since(stored.modified).unwrap_or_default();
            if !known.contains(&stored.key) && age >= grace {
                tracing::info!(key = %stored.key, "removing bytes without metadata");
                self.store.remove(&stored.key).await?;
            }
        }
        Ok(self.sweep_due().await)
    }

    /// The settings in force.
    pub fn config(&self) -> &FilesConfig {
        &self.config
    }

    /// Streams one multipart upload (`content_type` is the request's header) into the
    /// store, under the caps of [`multipart::Limits::upload`]. Only the first `file` part is
    /// kept, and nothing after it is read. A body error that is (or is caused by) an
    /// `io::Error` of kind `TimedOut` is reported as [`FileError::BodyTimeout`].
    pub async fn upload_multipart<S, E>(
        &self,
        owner: UserId,
        content_type: &str,
        body: S,
    ) -> Result<Arc<FileMeta>, FileError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let boundary = multipart::boundary(content_type).map_err(|_| FileError::NotMultipart)?;
        let limits = Limits::upload(self.config.max_bytes);
        let parser = Parser::new(&boundary, limits).map_err(|_| FileError::NotMultipart)?;
        let mut body = Multipart::new(body, parser);
        loop {
            match body.next().await? {
                Event::Part(part) if part.name.as_deref() == Some(limits.file_field) => {
                    let name = sanitize(part.filename.as_deref().unwrap_or("file"));
                    return self.store_stream(owner, name, &mut body).await;
                }
                // Other parts' bytes are counted by the parser and dropped.
                Event::Part(_) | Event::Data(_) | Event::PartEnd => {}
                Event::End => return Err(FileError::BadUpload("no `file` field".into())),
            }
        }
    }

    async fn store_stream<S, E>(
        &self,
        owner: UserId,
        name: String,
        body: &mut Multipart<S>,
    ) -> Result<Arc<FileMeta>, FileError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.config.max_bytes;
        let mut reserved = Reservation {
            usage: &self.usage,
            owner,
            bytes: 0,
            keep: false,
        };
        let key = random_hex(16)?;
        let mut sink = self.store.create(&key).await?;
        let mut head = Vec::with_capacity(detect::SNIFF_LEN);
        let mut size = 0u64;
        let result: Result<(), FileError> = async {
            loop {
                let chunk = match body.next().await? {
                    Event::Data(chunk) => chunk,
                    Event::PartEnd => break,
                    Event::Part(_) | Event::End => {
                        return Err(MultipartError::Malformed("a part without its end").into());
                    }
                };
                size += chunk.len() as u64;
                if size > limit {
                    return Err(FileError::TooLarge(limit));
                }
                reserved.grow(chunk.len() as u64, self.config.quota)?;
                if head.len() < detect::SNIFF_LEN {
                    let take = (detect::SNIFF_LEN - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                sink.write(&chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            sink.abort().await;
            return Err(e);
        }
        sink.commit().await?;
        let now = now_millis();
        let mut meta = FileMeta {
            id: 0,
            token: random_hex(32)?,
            owner,
            name,
            size,
            content_type: sniff(&head).to_owned(),
            key,
            created_at: now,
            expires_at: now + self.config.ttl.as_millis() as u64,
        };
        let pos = match self.index.insert_file(&meta).await {
            Ok(Logged { value, pos }) => {
                meta.id = value;
                pos
            }
            Err(e) => {
                let _ = self.store.remove(&meta.key).await;
                return Err(e);
            }
        };
        // The follower enters the file in the index (and counts it against the quota, after
        // which the reservation is given back); wait for that so the link works at once.
        let progress = self.progress.get().ok_or(FileError::Lagging)?;
        progress
            .wait_applied(pos)
            .await
            .map_err(|_| FileError::Lagging)?;
        drop(reserved);
        let entered = self.files.read().get(&meta.id).map(|e| e.meta.clone());
        Ok(entered.unwrap_or_else(|| Arc::new(meta)))
    }

    /// The URL path of a file: `/files/<token>/<name>`.
    pub fn url(meta: &FileMeta) -> String {
        format!("/files/{}/{}", meta.token, percent_encode(&meta.name))
    }

    /// The file as the API shows it.
    pub fn view(meta: &FileMeta) -> FileView {
        FileView {
            content_type: meta.content_type.clone(),
            expires_at: meta.expires_at,
            id: meta.id,
            name: meta.name.clone(),
            size: meta.size,
            url: Self::url(meta),
        }
    }

    /// The live file behind a link, if the token and name match and it has not expired.
    pub fn lookup(&self, token: &str, encoded_name: &str) -> Option<Arc<FileMeta>> {
        if !plausible_token(token) {
            return None;
        }
        let id = *self.by_token.read().get(token)?;
        let meta = self
            .files
            .read()
            .get(&id)
            .filter(|e| !e.swept)?
            .meta
            .clone();
        let name = percent_decode(encoded_name)?;
        (name == meta.name && meta.expires_at > now_millis()).then_some(meta)
    }

    /// Streams bytes `start..=end` of a file.
    pub async fn open(
        &self,
        meta: &FileMeta,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, FileError> {
        self.store.open(&meta.key, start, end).await
    }

    /// Deletes the bytes of every expired file, if no other node is sweeping; returns how
    /// many went.
    pub async fn sweep(&self) -> usize {
        match self.index.sweep_lease().await {
            Ok(Some(_lease)) => self.sweep_due().await,
            Ok(None) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the sweep lease");
                0
            }
        }
    }

    /// The sweep itself, under the lease. Each file is marked swept in the index first (which
    /// records the change every node applies), and only then are its bytes deleted: bytes
    /// whose deletion fails are orphans that the next [`FileProxy::maintain`] removes.
    async fn sweep_due(&self) -> usize {
        let now = now_millis();
        let due: Vec<Arc<FileMeta>> = self
            .files
            .read()
            .values()
            .filter(|e| !e.swept && e.meta.expires_at <= now)
            .map(|e| e.meta.clone())
            .collect();
        let mut swept = 0;
        for meta in due {
            self.by_token.write().remove(&meta.token);
            match self.index.mark_swept(meta.id).await {
                Ok(Logged { value: true, .. }) => {
                    if let Err(e) = self.store.remove(&meta.key).await {
                        tracing::warn!(id = meta.id, error = %e, "deleting swept bytes failed");
                    }
                    swept += 1;
                }
                Ok(_) => {} // swept already, by another node
                Err(e) => {
                    tracing::warn!(id = meta.id, error = %e, "sweeping a file failed; will retry")
                }
            }
        }
        swept
    }

    /// Runs [`FileProxy::maintain`] every `sweep_every` on the current runtime.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        let every = self.config.sweep_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(proxy) = me.upgrade() else { break };
                if let Err(e) = proxy.maintain().await {
                    tracing::warn!(error = %e, "file upkeep failed; will retry");
                }
            }
        })
    }

    /// Enters a committed file into this node's index, or marks one swept; idempotent.
    fn apply_change(&self, change: FileChange) {
        match change {
            FileChange::Added(meta) => {
                let mut files = self.files.write();
                if files.contains_key(&meta.id) {
                    return;
                }
                if !meta.key.is_empty() {
                    let _ = self.usage.add(meta.owner, meta.size, None);
                    if meta.expires_at > now_millis() {
                        self.by_token.write().insert(meta.token.clone(), meta.id);
                    }
                }
                let swept = meta.key.is_empty();
                files.insert(
                    meta.id,
                    Entry {
                        meta: Arc::new(meta),
                        swept,
                    },
                );
            }
            FileChange::Swept(id) => {
                let mut files = self.files.write();
                if let Some(e) = files.get_mut(&id).filter(|e| !e.swept) {
                    e.swept = true;
                    self.by_token.write().remove(&e.meta.token);
                    self.usage.release(e.meta.owner, e.meta.size);
                }
            }
        }
    }

    /// The message body for file `id` sent by `owner`, filled from the metadata.
    pub fn attachment(&self, owner: UserId, id: u64, image: bool) -> Result<Attachment, FileError> {
        let files = self.files.read();
        let entry = files
            .get(&id)
            .filter(|e| e.meta.owner == owner)
            .ok_or(FileError::UnknownFile(id))?;
        if entry.swept || entry.meta.expires_at <= now_millis() {
            return Err(FileError::Expired(id));
        }
        if image && !is_inline(&entry.meta.content_type) {
            return Err(FileError::NotAnImage(id));
        }
        let m = &entry.meta;
        Ok(Attachment {
            content_type: m.content_type.clone(),
            file_id: m.id,
            name: m.name.clone(),
            size: m.size,
            url: Self::url(m),
        })
    }
}

impl From<ReadError> for FileError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Multipart(m) => FileError::Multipart(m),
            ReadError::Body(inner) if timed_out(&*inner) => FileError::BodyTimeout,
            ReadError::Body(inner) => FileError::BadUpload(format!("reading the body: {inner}")),
        }
    }
}

/// Whether a body error is, or was caused by, a timeout: the server's body timeout reaches
/// this crate only as an `io::Error` of kind `TimedOut` somewhere in the chain.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::TimedOut => return true,
            // An `io::Error`'s `source` skips the error it wraps.
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// The fields a client may send in an `image` or `file` body; the server overwrites all but
/// `file_id`.
const ATTACHMENT_FIELDS: [&str; 5] = ["file_id", "url", "name", "size", "content_type"];

impl Applier for FileProxy {
    fn apply(&self, pos: Position, entry: &im_cluster::Entry) {
        let im_cluster::Entry::Change { record, .. } = entry else {
            return;
        };
        match FileChange::decode(record) {
            Ok(change) => self.apply_change(change),
            Err(e) => tracing::error!(pos, error = %e, "skipping an undecodable file change"),
        }
    }
}

fn attachment_kind(name: &str) -> KindSpec {
    KindSpec::new(name).validator(|body| {
        let obj = body.as_object().ok_or("body must be an object")?;
        if let Some(k) = obj
            .keys()
            .find(|k| !ATTACHMENT_FIELDS.contains(&k.as_str()))
        {
            return Err(format!("unknown field `{k}`"));
        }
        obj.get("file_id")
            .and_then(Value::as_u64)
            .map(drop)
            .ok_or_else(|| "`file_id` must be a file id".into())
    })
}

/// The built-in `image` kind: `{"file_id"}`, filled in by [`AttachFiles`].
pub fn image_kind() -> KindSpec {
    attachment_kind("image")
}

/// The built-in `file` kind: `{"file_id"}`, filled in by [`AttachFiles`].
pub fn file_kind() -> KindSpec {
    attachment_kind("file")
}

/// The channel handler that turns `{"file_id"}` into the full attachment body, checking that
/// the sender uploaded the file and that it has not expired.
pub struct AttachFiles(pub Arc<FileProxy>);

impl Handler for AttachFiles {
    fn name(&self) -> &str {
        "attach-files"
    }

    fn handle(&self, msg: &mut Pending) -> Result<(), ApiError> {
        let image = match msg.kind.as_str() {
            "image" => true,
            "file" => false,
            _ => return Ok(()),
        };
        let id = msg.body["file_id"].as_u64().unwrap_or(0);
        let attachment = self.0.attachment(msg.from, id, image)?;
        msg.body = serde_json::to_value(attachment)
            .map_err(|e| ApiError::new(ErrorCode::Internal, "encoding a file body").caused_by(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_errors_answer_with_their_status() {
        let status = |e: FileError| ApiError::from(e).status;
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "idle");
        assert_eq!(status(ReadError::Body(Box::new(timeout)).into()), 408);
        let nested = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::TimedOut, "x"));
        assert_eq!(status(ReadError::Body(Box::new(nested)).into()), 408);
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(status(ReadError::Body(Box::new(reset)).into()), 400);
        assert_eq!(status(MultipartError::TooManyParts(16).into()), 413);
        assert_eq!(status(MultipartError::Incomplete.into()), 400);
        assert_eq!(status(MultipartError::BadBoundary.into()), 415);
        assert_eq!(FilesConfig::default().quota, Some(1 << 30));
    }
}
