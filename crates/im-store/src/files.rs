//! File metadata for the file proxy.

use crate::{SqliteStore, StoreError};
use async_trait::async_trait;
use im_cluster::{Logged, Topic};
use im_files::{FileChange, FileError, FileIndex, FileMeta};
use im_protocol::UserId;
use im_protocol::record::Versioned;
use rusqlite::params;

fn index_err(e: StoreError) -> FileError {
    FileError::Index(im_protocol::Cause::new(e))
}

#[async_trait]
impl FileIndex for SqliteStore {
    async fn insert_file(&self, m: &FileMeta) -> Result<Logged<u64>, FileError> {
        let mut m = m.clone();
        self.write_logged(move |conn, log| {
            conn.prepare_cached(
                "INSERT INTO files (token, owner, name, size, content_type, storage_key, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                m.token,
                m.owner.0 as i64,
                m.name,
                m.size as i64,
                m.content_type,
                m.key,
                m.created_at as i64,
                m.expires_at as i64
            ])?;
            m.id = conn.last_insert_rowid() as u64;
            let id = m.id;
            let pos = log.record(conn, Topic::Files, FileChange::Added(m).encode()?)?;
            Ok(Logged { value: id, pos })
        })
        .await
        .map_err(index_err)
    }

    async fn all_files(&self) -> Result<Vec<FileMeta>, FileError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, token, owner, name, size, content_type, storage_key, created_at, expires_at FROM files",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(FileMeta {
                    id: r.get::<_, i64>(0)? as u64,
                    token: r.get(1)?,
                    owner: UserId(r.get::<_, i64>(2)? as u64),
                    name: r.get(3)?,
                    size: r.get::<_, i64>(4)? as u64,
                    content_type: r.get(5)?,
                    key: r.get(6)?,
                    created_at: r.get::<_, i64>(7)? as u64,
                    expires_at: r.get::<_, i64>(8)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .map_err(index_err)
    }

    async fn mark_swept(&self, id: u64) -> Result<Logged<bool>, FileError> {
        self.write_logged(move |conn, log| {
            let changed = conn
                .prepare_cached(
                    "UPDATE files SET storage_key = '' WHERE id = ?1 AND storage_key <> ''",
                )?
                .execute(params![id as i64])?;
            if changed == 0 {
                return Ok(Logged {
                    value: false,
                    pos: 0,
                });
            }
            let pos = log.record(conn, Topic::Files, FileChange::Swept(id).encode()?)?;
            Ok(Logged { value: true, pos })
        })
        .await
        .map_err(index_err)
    }
}
