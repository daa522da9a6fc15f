//! Versioned PostgreSQL schema migrations, tracked in `im_schema` and run under an advisory
//! lock so nodes starting together migrate once.

use crate::StoreError;
use tokio_postgres::Client;

/// Taken for the length of the migration transaction; an arbitrary constant of this product.
const MIGRATION_LOCK: i64 = 0x1e1a_0001;

/// Each entry moves the schema one version up; never edit a shipped entry, append one.
const MIGRATIONS: &[&str] = &[
    // 1: everything SQLite has at its version 3, plus the ordered log.
    "CREATE TABLE log_head (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        last BIGINT NOT NULL
    );
    INSERT INTO log_head (one, last) VALUES (TRUE, 0);
    CREATE TABLE changes (
        pos BIGINT PRIMARY KEY,
        topic SMALLINT NOT NULL,
        record BYTEA NOT NULL
    );
    CREATE TABLE users (
        id BIGSERIAL PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE sessions (
        id BIGSERIAL PRIMARY KEY,
        token_hash BYTEA NOT NULL UNIQUE,
        user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE messages (
        id BIGINT PRIMARY KEY,
        conversation TEXT NOT NULL,
        sender BIGINT NOT NULL,
        recipient BIGINT,
        group_id BIGINT,
        client_id TEXT,
        sent_at BIGINT NOT NULL,
        record BYTEA NOT NULL
    );
    CREATE INDEX messages_conversation ON messages(conversation, id);
    CREATE INDEX messages_sender ON messages(sender, id);
    CREATE INDEX messages_recipient ON messages(recipient, id) WHERE recipient IS NOT NULL;
    CREATE INDEX messages_group ON messages(group_id, id) WHERE group_id IS NOT NULL;
    CREATE UNIQUE INDEX messages_client_id ON messages(sender, client_id)
        WHERE client_id IS NOT NULL;
    CREATE TABLE conversation_members (
        user_id BIGINT NOT NULL,
        conversation TEXT NOT NULL,
        peer_user BIGINT,
        last_message_id BIGINT NOT NULL,
        PRIMARY KEY (user_id, conversation)
    );
    CREATE TABLE friend_requests (
        id BIGSERIAL PRIMARY KEY,
        from_user BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        to_user BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        state TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'declined')),
        created_at BIGINT NOT NULL
    );
    CREATE INDEX friend_requests_pending ON friend_requests(state) WHERE state = 'pending';
    CREATE TABLE friendships (
        user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        friend_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        since BIGINT NOT NULL,
        PRIMARY KEY (user_id, friend_id)
    );
    CREATE TABLE blocks (
        blocker BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        blocked BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        since BIGINT NOT NULL,
        PRIMARY KEY (blocker, blocked)
    );
    CREATE TABLE groups (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE group_members (
        group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
        seq BIGINT NOT NULL,
        PRIMARY KEY (group_id, user_id)
    );
    CREATE INDEX group_members_user ON group_members(user_id);
    CREATE TABLE read_positions (
        user_id BIGINT NOT NULL,
        conversation TEXT NOT NULL,
        up_to BIGINT NOT NULL,
        PRIMARY KEY (user_id, conversation)
    );
    CREATE TABLE files (
        id BIGSERIAL PRIMARY KEY,
        token TEXT NOT NULL UNIQUE,
        owner BIGINT NOT NULL,
        name TEXT NOT NULL,
        size BIGINT NOT NULL,
        content_type TEXT NOT NULL,
        storage_key TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX files_owner ON files(owner);",
    // 2: session expiry, as SQLite's version 5.
    "ALTER TABLE sessions ADD COLUMN last_seen_at BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN user_agent TEXT NOT NULL DEFAULT '';
    UPDATE sessions SET last_seen_at = created_at;
    CREATE INDEX sessions_last_seen ON sessions(last_seen_at);
    CREATE INDEX sessions_created ON sessions(created_at);",
    // 3: as SQLite's version 6, a chat's newest message and a user's replay are found by
    // conversation, so a message no longer rewrites conversation rows or writes a sender,
    // a recipient and a group index.
    "ALTER TABLE conversation_members DROP COLUMN last_message_id;
    DROP INDEX messages_sender;
    DROP INDEX messages_recipient;
    DROP INDEX messages_group;",
    // 4: edits, deletions and replies, as SQLite's version 7: an amendment is a row beside
    // the messages naming the message it changes; a reply names the message it quotes.
    "ALTER TABLE messages ADD COLUMN amends BIGINT;
    ALTER TABLE messages ADD COLUMN reply_to BIGINT;
    CREATE INDEX messages_amends ON messages(amends) WHERE amends IS NOT NULL;
    CREATE INDEX messages_reply_to ON messages(reply_to) WHERE reply_to IS NOT NULL;",
    // 5: reactions, as SQLite's version 8.
    "CREATE TABLE reactions (
        message_id BIGINT NOT NULL,
        emoji TEXT NOT NULL,
        user_id BIGINT NOT NULL,
        PRIMARY KEY (message_id, emoji, user_id)
    );",
];

/// Brings the schema to the latest version in one transaction.
pub(crate) async fn run(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS im_schema (version INT NOT NULL)")
        .await?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0)::INT8 FROM im_schema", &[])
        .await?
        .get(0);
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO im_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
