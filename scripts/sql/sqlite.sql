-- sipsockd: the sockets and relays tables for SQLite (what `sipsockd db init` creates with the
-- default names). The sockets table is OpenSIPS-compatible: the `sockets` table of the sockets_mgm
-- module at schema version 1.
-- Usage: sqlite3 sipsockd.db < scripts/sql/sqlite.sql   (safe to run again)

CREATE TABLE IF NOT EXISTS version (
    table_name CHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_t_name_idx UNIQUE (table_name)
);

CREATE TABLE IF NOT EXISTS sockets (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    socket CHAR(128) NOT NULL,
    advertised CHAR(128) DEFAULT NULL,
    tag CHAR(128) DEFAULT NULL,
    flags CHAR(128) DEFAULT NULL,
    tos CHAR(32) DEFAULT NULL
);

INSERT INTO version (table_name, table_version)
    SELECT 'sockets', 1 WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'sockets');

-- sipsockd's relays table (schema version 1): which upstream each socket tag relays to.
CREATE TABLE IF NOT EXISTS relays (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    tag CHAR(128) NOT NULL,
    destination CHAR(255) NOT NULL,
    socket CHAR(128) DEFAULT NULL,
    weight INTEGER DEFAULT 1 NOT NULL,
    flags CHAR(64) DEFAULT NULL
);

INSERT INTO version (table_name, table_version)
    SELECT 'relays', 1 WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'relays');
