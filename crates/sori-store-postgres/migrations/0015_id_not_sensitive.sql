-- `id` cannot be sensitive any more: masked, the console's user list offered nothing to
-- open a user with. A flag stored by an earlier version could not be cleared through the
-- API once it refused the field, so it goes here.
DELETE FROM builtin_field_settings WHERE key = 'id';
