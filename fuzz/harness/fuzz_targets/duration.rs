#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| multinode_fuzz::targets::duration::check(data));
