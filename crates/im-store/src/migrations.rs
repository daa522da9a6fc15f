//! Versioned schema migrations, tracked in `PRAGMA user_version`.

use crate::StoreError;
use rusqlite::Connection;

/// Each entry moves the schema one version up; never edit a shipped entry, append one.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, sessions, messages, per-user conversation state.
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        username TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        token_hash BLOB NOT NULL UNIQUE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation TEXT NOT NULL,
        sender INTEGER NOT NULL,
        recipient INTEGER,
        group_id INTEGER,
        client_id TEXT,
        sent_at INTEGER NOT NULL,
        record BLOB NOT NULL
    );
    CREATE INDEX messages_conversation ON messages(conversation, id);
    CREATE INDEX messages_sender ON messages(sender, id);
    CREATE INDEX messages_recipient ON messages(recipient, id) WHERE recipient IS NOT NULL;
    CREATE UNIQUE INDEX messages_client_id ON messages(sender, client_id)
        WHERE client_id IS NOT NULL;
    CREATE TABLE conversation_members (
        user_id INTEGER NOT NULL,
        conversation TEXT NOT NULL,
        peer_user INTEGER,
        group_id INTEGER,
        last_message_id INTEGER NOT NULL,
        read_up_to INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, conversation)
    ) WITHOUT ROWID;
    CREATE INDEX conversation_members_recent ON conversation_members(user_id, last_message_id);",
    // 2: the social graph, and read positions for every kind of conversation.
    "CREATE TABLE friend_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        from_user INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        to_user INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        state TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'declined')),
        created_at INTEGER NOT NULL
    );
    CREATE INDEX friend_requests_pending ON friend_requests(state) WHERE state = 'pending';
    CREATE TABLE friendships (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        friend_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        since INTEGER NOT NULL,
        PRIMARY KEY (user_id, friend_id)
    ) WITHOUT ROWID;
    CREATE TABLE blocks (
        blocker INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        blocked INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        since INTEGER NOT NULL,
        PRIMARY KEY (blocker, blocked)
    ) WITHOUT ROWID;
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE group_members (
        group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
        seq INTEGER NOT NULL,
        PRIMARY KEY (group_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_user ON group_members(user_id);
    CREATE INDEX messages_group ON messages(group_id, id) WHERE group_id IS NOT NULL;
    CREATE TABLE read_positions (
        user_id INTEGER NOT NULL,
        conversation TEXT NOT NULL,
        up_to INTEGER NOT NULL,
        PRIMARY KEY (user_id, conversation)
    ) WITHOUT ROWID;
    INSERT INTO read_positions (user_id, conversation, up_to)
        SELECT user_id, conversation, read_up_to FROM conversation_members WHERE read_up_to > 0;",
    // 3: uploaded files; `storage_key` is emptied once the bytes are swept.
    "CREATE TABLE files (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        token TEXT NOT NULL UNIQUE,
        owner INTEGER NOT NULL,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        storage_key TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX files_owner ON files(owner);",
    // 4: the ordered log's change records; messages and changes share positions.
    "CREATE TABLE changes (
        pos INTEGER PRIMARY KEY,
        topic INTEGER NOT NULL,
        record BLOB NOT NULL
    );",
    // 5: session expiry. `last_seen_at` moves at most once a minute per session; the
    // indexes serve the expiry sweep. `user_agent` labels a session in the list.
    "ALTER TABLE sessions ADD COLUMN last_seen_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN user_agent TEXT NOT NULL DEFAULT '';
    UPDATE sessions SET last_seen_at = created_at;
    CREATE INDEX sessions_last_seen ON sessions(last_seen_at);
    CREATE INDEX sessions_created ON sessions(created_at);",
    // 6: one index per message besides the key. The conversation list finds a chat's newest
    // message, and the replay a user's messages, by conversation (`messages_conversation`),
    // so a message no longer rewrites two `conversation_members` rows and their index, nor
    // inserts into a sender, a recipient and a group index: each of those took a random page
    // per message into every commit's WAL. `read_up_to` moved to `read_positions` in 2.
    "DROP INDEX conversation_members_recent;
    DROP INDEX messages_sender;
    DROP INDEX messages_recipient;
    DROP INDEX messages_group;
    ALTER TABLE conversation_members DROP COLUMN last_message_id;
    ALTER TABLE conversation_members DROP COLUMN read_up_to;",
    // 7: edits, deletions and replies. An amendment is a row beside the messages, with its
    // own position, naming the message it changes (`amends`), so streams replay it in order;
    // `reply_to` names the message a reply quotes, whose quote follows its edits and
    // deletion. Both indexes hold only the rows that have one.
    "ALTER TABLE messages ADD COLUMN amends INTEGER;
    ALTER TABLE messages ADD COLUMN reply_to INTEGER;
    CREATE INDEX messages_amends ON messages(amends) WHERE amends IS NOT NULL;
    CREATE INDEX messages_reply_to ON messages(reply_to) WHERE reply_to IS NOT NULL;",
    // 8: reactions, one row per message, emoji and user. Each change is also an amendment
    // row (`kind` `reaction`) in the log; this table is what history counts.
    "CREATE TABLE reactions (
        message_id INTEGER NOT NULL,
        emoji TEXT NOT NULL,
        user_id INTEGER NOT NULL,
        PRIMARY KEY (message_id, emoji, user_id)
    ) WITHOUT ROWID;",
];

/// Brings the schema to the latest version in one transaction.
pub(crate) fn run(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    let tx = conn.transaction()?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_6_keeps_every_conversation_row() {
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..5] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 5).unwrap();
        tx.commit().unwrap();
        conn.execute(
            "INSERT INTO conversation_members
               (user_id, conversation, peer_user, group_id, last_message_id, read_up_to)
             VALUES (1, 'd1-2', 2, NULL, 7, 3), (2, 'd1-2', 1, NULL, 7, 0)",
            [],
        )
        .unwrap();

        run(&mut conn).unwrap();

        let rows: Vec<(i64, String, i64)> = conn
            .prepare("SELECT user_id, conversation, peer_user FROM conversation_members")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![(1, "d1-2".into(), 2), (2, "d1-2".into(), 1)]);
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('conversation_members')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            columns,
            ["user_id", "conversation", "peer_user", "group_id"]
        );
    }
}
