//! Size limits of the contact profile (seed 002, SPEC §3.2). One place, so the API, the
//! SDK path and the importer enforce the same numbers.

/// Maximum characters of a string value, also inside lists.
pub const MAX_STRING_CHARS: usize = 512;
/// Maximum items in a List or List of number value.
pub const MAX_LIST_ITEMS: usize = 200;
/// Maximum keys in one user's profile.
pub const MAX_PROFILE_KEYS: usize = 256;
/// Maximum size of one user's whole profile, as compact JSON.
pub const MAX_PROFILE_BYTES: usize = 15 * 1024;
/// Maximum tags one SDK call may carry.
pub const MAX_TAGS_PER_SDK_CALL: usize = 10;
/// Maximum tags one Open API call may carry.
pub const MAX_TAGS_PER_API_CALL: usize = 20;
/// Maximum tags on one user.
pub const MAX_TAGS_PER_USER: usize = 200;
/// Maximum characters of one tag.
pub const MAX_TAG_CHARS: usize = 50;
/// Maximum characters of a profile key.
pub const MAX_KEY_CHARS: usize = 50;
/// Maximum characters of a `memberId`.
pub const MAX_MEMBER_ID_CHARS: usize = 256;
/// Maximum characters of a profile field's display name.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;
