-- 002: files attached to items.
-- A row is written only once its object is complete in S3 (object_key);
-- deleting an item deletes its rows, and the objects left without a row
-- are removed by the upload service's sweeper.

CREATE TABLE attachments (
    id           bigserial PRIMARY KEY,
    item_id      bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    owner_id     bigint NOT NULL REFERENCES users (id),
    object_key   text NOT NULL UNIQUE CHECK (octet_length(object_key) BETWEEN 1 AND 128),
    size         bigint NOT NULL CHECK (size >= 0),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    content_type text NOT NULL CHECK (octet_length(content_type) BETWEEN 1 AND 128),
    name         text NOT NULL CHECK (octet_length(name) BETWEEN 1 AND 1024),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attachments_item_idx ON attachments (item_id, id);
CREATE INDEX attachments_owner_idx ON attachments (owner_id);

-- Create one attachment, all checks and the insert in one transaction.
-- Limits depend on rows other transactions may be inserting (the item's
-- count, the owner's bytes), and a single statement would check them
-- against the snapshot it took before any lock. So the owner's row is
-- locked first and every later statement here takes a fresh snapshot
-- (READ COMMITTED): creates of one owner run one at a time and each sees
-- all earlier ones. A retry with the same key waits on that lock and then
-- finds the first row.
--
-- outcome: 'ok' (the row, new or the retried one), 'no_item', 'forbidden'
-- (the item is someone else's), 'full' (the item has p_max rows), 'quota'
-- (the owner's bytes plus p_size would pass p_quota; 0 means no quota),
-- 'key_taken' (the key names another owner's or item's row).
CREATE FUNCTION attachment_create(p_user bigint, p_item bigint, p_key text, p_size bigint,
                                  p_sha256 text, p_type text, p_name text, p_quota bigint,
                                  p_max bigint,
                                  OUT r_id bigint, OUT r_item bigint, OUT r_owner bigint,
                                  OUT r_username text, OUT r_name text, OUT r_type text,
                                  OUT r_size bigint, OUT r_sha256 text, OUT r_key text,
                                  OUT r_created_ms bigint, OUT r_outcome text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_author bigint;
    v_count  bigint;
    v_used   numeric;
BEGIN
    PERFORM 1 FROM users WHERE id = p_user FOR NO KEY UPDATE;

    SELECT a.id, a.item_id, a.owner_id INTO r_id, r_item, r_owner
      FROM attachments a WHERE a.object_key = p_key;
    IF FOUND THEN
        IF r_item <> p_item OR r_owner <> p_user THEN
            r_id := NULL; r_item := NULL; r_owner := NULL;
            r_outcome := 'key_taken';
            RETURN;
        END IF;
    ELSE
        -- a concurrent delete of the item waits for this transaction
        SELECT i.author_id INTO v_author FROM items i WHERE i.id = p_item FOR KEY SHARE;
        IF NOT FOUND THEN
            r_outcome := 'no_item';
            RETURN;
        END IF;
        IF v_author <> p_user THEN
            r_outcome := 'forbidden';
            RETURN;
        END IF;
        SELECT count(*) INTO v_count FROM attachments a WHERE a.item_id = p_item;
        IF v_count >= p_max THEN
            r_outcome := 'full';
            RETURN;
        END IF;
        IF p_quota > 0 THEN
            SELECT coalesce(sum(a.size), 0) INTO v_used FROM attachments a
             WHERE a.owner_id = p_user;
            IF v_used + p_size > p_quota THEN
                r_outcome := 'quota';
                RETURN;
            END IF;
        END IF;
        INSERT INTO attachments (item_id, owner_id, object_key, size, sha256, content_type, name)
        VALUES (p_item, p_user, p_key, p_size, p_sha256, p_type, p_name)
        RETURNING id INTO r_id;
    END IF;

    SELECT a.id, a.item_id, a.owner_id, u.username, a.name, a.content_type, a.size, a.sha256,
           a.object_key, (extract(epoch from a.created_at) * 1000)::bigint
      INTO r_id, r_item, r_owner, r_username, r_name, r_type, r_size, r_sha256, r_key,
           r_created_ms
      FROM attachments a JOIN users u ON u.id = a.owner_id
     WHERE a.id = r_id;
    r_outcome := 'ok';
END;
$$;
