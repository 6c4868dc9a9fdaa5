-- Activity-only changes. Events move a user's lastSeenAt (and createdAt, updatedAt) many
-- times a second; a follower of the change sequence should not re-read the whole row for
-- each. The activity update records its own number in light_seq and, in full_seq, the
-- number of the row's last whole write; whole writes clear light_seq. A row whose seq
-- equals its light_seq changed only by activity since full_seq.
ALTER TABLE users ADD COLUMN light_seq BIGINT;
ALTER TABLE users ADD COLUMN full_seq BIGINT;
