//! The cluster's tables, created and migrated by the gateway itself at start.
//!
//! Versioned (`schema_migrations`), idempotent, and under a transaction-scoped advisory lock, so
//! replicas starting together take turns and the second finds the work done. Migrations only add
//! (tables, columns with defaults, indexes): a replica of the previous release keeps working
//! beside one of this release during a rolling upgrade. A schema newer than this binary is refused
//! with a message, not used.

use postgres::Client;

/// What this binary creates and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Migration `i + 1`, with `{s}` for the schema. Append only: never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: deployments (one row per model), the audit log, the replicas' heartbeats.
    "CREATE TABLE {s}.deployments (
        model text PRIMARY KEY,
        revision bigint NOT NULL CHECK (revision > 0),
        spec jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        updated_by text NOT NULL
     );
     CREATE TABLE {s}.audit (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        replica text NOT NULL,
        model text NOT NULL,
        entry jsonb NOT NULL
     );
     CREATE INDEX audit_model_id ON {s}.audit (model, id);
     CREATE TABLE {s}.replicas (
        id text PRIMARY KEY,
        address text NOT NULL,
        started_at timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL,
        applied jsonb NOT NULL DEFAULT '{}',
        converged boolean NOT NULL DEFAULT false,
        problem text,
        binary_version text NOT NULL
     );",
    // 2: paired records and labels, each row the JSON line the outcome log holds, partitioned by
    // day (`forward` makes the partitions and drops those past retention; the default partition
    // takes what falls outside them), idempotent on (model, request id, time); and a view that
    // pairs each record with its first label. `seen`: taken into the analyst's comparison.
    // `reports`, `drift`: the analyst's snapshots; `analyst`: which replica it is.
    "CREATE TABLE {s}.records (
        model text NOT NULL,
        request_id text NOT NULL,
        at timestamptz NOT NULL,
        answered_by text NOT NULL,
        replica text NOT NULL,
        record jsonb NOT NULL,
        seen boolean NOT NULL DEFAULT false,
        PRIMARY KEY (model, request_id, at)
     ) PARTITION BY RANGE (at);
     CREATE INDEX records_unseen ON {s}.records (at) WHERE NOT seen;
     CREATE TABLE {s}.records_default PARTITION OF {s}.records DEFAULT;
     CREATE TABLE {s}.labels (
        model text NOT NULL,
        request_id text NOT NULL,
        at timestamptz NOT NULL,
        replica text NOT NULL,
        label jsonb NOT NULL,
        seen boolean NOT NULL DEFAULT false,
        PRIMARY KEY (model, request_id, at)
     ) PARTITION BY RANGE (at);
     CREATE INDEX labels_unseen ON {s}.labels (at) WHERE NOT seen;
     CREATE TABLE {s}.labels_default PARTITION OF {s}.labels DEFAULT;
     CREATE INDEX labels_request ON {s}.labels (model, request_id);
     CREATE VIEW {s}.outcomes AS
        SELECT r.model, r.request_id, r.at AS scored_at, r.answered_by, r.replica,
               l.at AS labelled_at, l.label -> 'truth' AS truth, r.record
        FROM {s}.records r
        LEFT JOIN LATERAL (
            SELECT at, label FROM {s}.labels l
            WHERE l.model = r.model AND l.request_id = r.request_id
            ORDER BY at LIMIT 1
        ) l ON true;
     CREATE TABLE {s}.reports (
        model text PRIMARY KEY,
        report jsonb NOT NULL,
        at timestamptz NOT NULL,
        analyst text NOT NULL
     );
     CREATE TABLE {s}.drift (
        model text PRIMARY KEY,
        report jsonb NOT NULL,
        at timestamptz NOT NULL,
        analyst text NOT NULL
     );
     CREATE TABLE {s}.analyst (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        id text NOT NULL,
        since timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL
     );",
    // 3: rows are written once. Each row's position is the id of the transaction that wrote it
    // (`xid8`, never wraps) and a number from one sequence both tables share. The analyst reads in
    // position order only below its snapshot's xmin, where every transaction has ended, so a row
    // that commits late can never appear behind a position already read (see `analyst`). Rows from
    // before this migration read as position (0, 0): the first analyst without a checkpoint reads
    // them once, in time order. Fast defaults first, then the per-row defaults: no table rewrite.
    // `seen` stays (a replica of the previous release still marks it) but loses its indexes, which
    // every insert paid for; so does `labels_request`, which the primary key's (model, request_id,
    // at) already serves (measured: a fifth of a label's insert). `checkpoints`: the analyst's whole state with its position, in one row.
    "CREATE SEQUENCE {s}.outcome_position;
     ALTER TABLE {s}.records ADD COLUMN xid xid8 NOT NULL DEFAULT '0', ADD COLUMN position bigint NOT NULL DEFAULT 0;
     ALTER TABLE {s}.records ALTER COLUMN xid SET DEFAULT pg_current_xact_id(),
        ALTER COLUMN position SET DEFAULT nextval('{s}.outcome_position');
     ALTER TABLE {s}.labels ADD COLUMN xid xid8 NOT NULL DEFAULT '0', ADD COLUMN position bigint NOT NULL DEFAULT 0;
     ALTER TABLE {s}.labels ALTER COLUMN xid SET DEFAULT pg_current_xact_id(),
        ALTER COLUMN position SET DEFAULT nextval('{s}.outcome_position');
     CREATE INDEX records_position ON {s}.records (xid, position);
     CREATE INDEX labels_position ON {s}.labels (xid, position);
     DROP INDEX {s}.records_unseen;
     DROP INDEX {s}.labels_unseen;
     DROP INDEX {s}.labels_request;
     CREATE TABLE {s}.checkpoints (
        id bigserial PRIMARY KEY,
        written_at timestamptz NOT NULL DEFAULT now(),
        analyst text NOT NULL,
        binary_version text NOT NULL,
        format integer NOT NULL,
        xid xid8 NOT NULL,
        position bigint NOT NULL,
        rows bigint NOT NULL,
        state bytea NOT NULL
     );",
    // 4: each row's line as `json`, the text the outcome log holds, validated and kept as it is.
    // `jsonb` parsed every line into its binary form on insert and printed it back on every read:
    // measured here on 100,000 record lines, an insert took 3.9 s into `jsonb` and 1.6 s into
    // `json`, and reading them back as text 0.97 s against 0.18 s. New rows fill `line`; rows
    // written before keep `record`/`label` (now nullable: no rewrite of a retained table), and
    // readers take `coalesce(line, record)`, as the view does. The JSON operators work on both.
    "ALTER TABLE {s}.records ADD COLUMN line json, ALTER COLUMN record DROP NOT NULL;
     ALTER TABLE {s}.labels ADD COLUMN line json, ALTER COLUMN label DROP NOT NULL;
     DROP VIEW {s}.outcomes;
     CREATE VIEW {s}.outcomes AS
        SELECT r.model, r.request_id, r.at AS scored_at, r.answered_by, r.replica,
               l.at AS labelled_at, l.line -> 'truth' AS truth, coalesce(r.line, r.record::json) AS record
        FROM {s}.records r
        LEFT JOIN LATERAL (
            SELECT at, coalesce(line, label::json) AS line FROM {s}.labels l
            WHERE l.model = r.model AND l.request_id = r.request_id
            ORDER BY at LIMIT 1
        ) l ON true;",
    // 5: the comparison's history: the analyst's point per model every `history_interval_s`,
    // at most `history_points` per model (older ones deleted as new ones come).
    "CREATE TABLE {s}.history (
        model text NOT NULL,
        at timestamptz NOT NULL,
        point json NOT NULL,
        PRIMARY KEY (model, at)
     );",
];

#[derive(Debug)]
pub enum MigrateError {
    TooNew { found: i32, known: i32 },
    Sql(postgres::Error),
}

impl From<postgres::Error> for MigrateError {
    fn from(error: postgres::Error) -> Self {
        Self::Sql(error)
    }
}

/// Brings schema `s` (a checked identifier) to `SCHEMA_VERSION`.
pub fn migrate(client: &mut Client, s: &str) -> Result<(), MigrateError> {
    // Current already: one read, no lock (every reconnect comes here).
    if let Ok(row) = client.query_one(&format!("SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"), &[]) {
        let found: i32 = row.get(0);
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        if found > SCHEMA_VERSION {
            return Err(MigrateError::TooNew { found, known: SCHEMA_VERSION });
        }
    }
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("gauntlet-migrate:{s}")])?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now(),
            binary_version text NOT NULL
         );"
    ))?;
    let found: i32 = tx.query_one(&format!("SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"), &[])?.get(0);
    if found > SCHEMA_VERSION {
        return Err(MigrateError::TooNew { found, known: SCHEMA_VERSION });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(&migration.replace("{s}", s))?;
        tx.execute(
            &format!("INSERT INTO {s}.schema_migrations (version, binary_version) VALUES ($1, $2)"),
            &[&version, &env!("CARGO_PKG_VERSION")],
        )?;
        tracing::info!(schema = s, version, "cluster store migrated");
    }
    tx.commit()?;
    Ok(())
}
