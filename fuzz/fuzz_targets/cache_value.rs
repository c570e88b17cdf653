//! The cache's shared tier values (`cache::tier::decode`): what an instance reads back from
//! Redis for a key. Redis is shared by every instance and whoever else can write to it, and
//! a value may have been cut short or written by another version.
//!
//! Input: the value's bytes.
//!
//! Checked: no panic, no allocation beyond the input's size by much (counts are bounded);
//! a value that decodes encodes to one that decodes again to the same encoding (the
//! format is canonical once read).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some(once) = fuzzing::cache_value(data) else { return };
    let twice = fuzzing::cache_value(&once).expect("an encoded value decodes");
    assert_eq!(once, twice, "encoding is stable");
});
