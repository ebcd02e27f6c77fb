-- The online service's tables (SPEC §7, and §2 for exposure_events), as recsys-assets expects
-- them. Applied by `recsys_assets.postgres.migrate`; every statement is idempotent and none
-- drops anything, so it is safe against a live database that already has the tables.

CREATE TABLE IF NOT EXISTS tenants (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id text UNIQUE,
    name text,
    status text NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS item_popularity_daily (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    namespace text NOT NULL DEFAULT 'default',
    item_id text NOT NULL,
    day date NOT NULL,
    score numeric(18, 6) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, namespace, item_id, day)
);

-- A day is replaced as a whole: without this the delete would scan every day of the namespace.
CREATE INDEX IF NOT EXISTS item_popularity_daily_day
    ON item_popularity_daily (tenant_id, namespace, day);

CREATE TABLE IF NOT EXISTS item_covisit_daily (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    namespace text NOT NULL DEFAULT 'default',
    item_id text NOT NULL,
    neighbor_id text NOT NULL,
    day date NOT NULL,
    score numeric(18, 6) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, namespace, item_id, neighbor_id, day)
);

CREATE INDEX IF NOT EXISTS item_covisit_daily_day
    ON item_covisit_daily (tenant_id, namespace, day);

CREATE TABLE IF NOT EXISTS item_tags (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    namespace text NOT NULL DEFAULT 'default',
    item_id text NOT NULL,
    tags text[],
    price numeric(18, 6),
    created_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, namespace, item_id)
);

-- Written by the online service; recsys-assets only reads it (raw_source.type "postgres").
CREATE TABLE IF NOT EXISTS exposure_events (
    id bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id),
    occurred_at timestamptz NOT NULL,
    request_id uuid,
    surface text NOT NULL,
    segment text,
    session_id text,
    user_key bytea,
    response jsonb
);

CREATE INDEX IF NOT EXISTS exposure_events_partition
    ON exposure_events (tenant_id, surface, occurred_at);
