-- Two rules changed on 2026-11-30 (docs/events.md): `sessionsCount` is the sum of the web
-- and app sessions (before, events could keep the total's session alive while the
-- platform's started anew, so the total could fall below `web.sessionsCount`), and a
-- language is stored as its primary subtag (`ko-KR` → `ko`; the SDK stored tags as sent).
-- Rows written before are brought to the new rules, so filters see one form.
UPDATE users
SET sessions_count = COALESCE((web->>'sessionsCount')::bigint, 0)
                   + COALESCE((mobile->>'sessionsCount')::bigint, 0)
WHERE sessions_count <> COALESCE((web->>'sessionsCount')::bigint, 0)
                      + COALESCE((mobile->>'sessionsCount')::bigint, 0);
UPDATE users
SET language = CASE
    WHEN lower(split_part(replace(language, '_', '-'), '-', 1)) ~ '^[a-z]{2,3}$'
    THEN lower(split_part(replace(language, '_', '-'), '-', 1))
    END
WHERE language IS NOT NULL
  AND language IS DISTINCT FROM CASE
    WHEN lower(split_part(replace(language, '_', '-'), '-', 1)) ~ '^[a-z]{2,3}$'
    THEN lower(split_part(replace(language, '_', '-'), '-', 1))
    END;
