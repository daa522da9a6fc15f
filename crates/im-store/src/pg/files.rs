//! File metadata on PostgreSQL: the writer's part (feature `files`).

use super::PgStore;
use super::writer::Changes;
use super::writer::Write;
use crate::StoreError;
use async_trait::async_trait;
use deadpool_postgres::Transaction;
use im_cluster::{Logged, Topic};
use im_files::{FileChange, FileError, FileIndex, FileMeta, SweepLease};
use im_protocol::UserId;
use im_protocol::record::Versioned;

/// A write of this domain.
pub(crate) enum FileWrite {
    /// New file metadata; answers its id.
    InsertFile(FileMeta),
    /// The file's bytes are gone; answers 1 if this call marked it.
    MarkSwept(u64),
}

fn record(changes: &mut Changes, next: &mut u64, c: &FileChange) -> Result<u64, StoreError> {
    Ok(changes.record(next, Topic::Files, c.encode()?))
}

/// Runs one write inside the writer's savepoint.
pub(super) async fn exec(
    tx: &Transaction<'_>,
    w: FileWrite,
    next: &mut u64,
    changes: &mut Changes,
) -> Result<Logged<u64>, StoreError> {
    match w {
        FileWrite::InsertFile(mut m) => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO files (token, owner, name, size, content_type, storage_key,
                                        created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                )
                .await?;
            let id: i64 = tx
                .query_one(
                    &stmt,
                    &[
                        &m.token,
                        &(m.owner.0 as i64),
                        &m.name,
                        &(m.size as i64),
                        &m.content_type,
                        &m.key,
                        &(m.created_at as i64),
                        &(m.expires_at as i64),
                    ],
                )
                .await?
                .get(0);
            m.id = id as u64;
            let pos = record(changes, next, &FileChange::Added(m))?;
            Ok(Logged {
                value: id as u64,
                pos,
            })
        }
        FileWrite::MarkSwept(id) => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE files SET storage_key = '' WHERE id = $1 AND storage_key <> ''",
                )
                .await?;
            if tx.execute(&stmt, &[&(id as i64)]).await? == 0 {
                return Ok(Logged { value: 0, pos: 0 });
            }
            let pos = record(changes, next, &FileChange::Swept(id))?;
            Ok(Logged { value: 1, pos })
        }
    }
}

/// The advisory lock that lets one node at a time sweep files and clean orphans.
const SWEEP_LOCK: i64 = 0x1e1a_0002;

fn index_err(e: StoreError) -> FileError {
    FileError::Index(im_protocol::Cause::new(e))
}

#[async_trait]
impl FileIndex for PgStore {
    async fn insert_file(&self, meta: &FileMeta) -> Result<Logged<u64>, FileError> {
        self.write(Write::Files(FileWrite::InsertFile(meta.clone())))
            .await
            .map_err(index_err)
    }

    async fn all_files(&self) -> Result<Vec<FileMeta>, FileError> {
        async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT id, token, owner, name, size, content_type, storage_key, created_at,
                            expires_at FROM files",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| FileMeta {
                    id: r.get::<_, i64>(0) as u64,
                    token: r.get(1),
                    owner: UserId(r.get::<_, i64>(2) as u64),
                    name: r.get(3),
                    size: r.get::<_, i64>(4) as u64,
                    content_type: r.get(5),
                    key: r.get(6),
                    created_at: r.get::<_, i64>(7) as u64,
                    expires_at: r.get::<_, i64>(8) as u64,
                })
                .collect())
        }
        .await
        .map_err(index_err)
    }

    async fn mark_swept(&self, id: u64) -> Result<Logged<bool>, FileError> {
        self.write(Write::Files(FileWrite::MarkSwept(id)))
            .await
            .map(|l| Logged {
                value: l.value == 1,
                pos: l.pos,
            })
            .map_err(index_err)
    }

    async fn sweep_lease(&self) -> Result<Option<SweepLease>, FileError> {
        self.advisory_lease(SWEEP_LOCK).await.map_err(index_err)
    }
}
