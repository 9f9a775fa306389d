//! Fuzzes the archive reader: any bytes as `rimg load` input.
//!
//! Beyond "does not panic", it checks the promise a failed load makes: the
//! store is exactly as before (same index, no blob, nothing left in the
//! temporary area).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::tempdir_in(base).expect("a temp dir");
    let store = rimg::store::Store::open(dir.path().join("store")).expect("a store");
    let index_before = std::fs::read(store.root().join("index.json")).expect("an index");

    if rimg::archive::load(&store, data).is_err() {
        let index_after = std::fs::read(store.root().join("index.json")).expect("an index");
        assert_eq!(index_before, index_after, "a failed load changed index.json");
        let blobs = std::fs::read_dir(store.blobs_dir()).expect("blobs").count();
        assert_eq!(blobs, 0, "a failed load left blobs behind");
    }
    let leftovers = std::fs::read_dir(store.tmp_dir()).expect("tmp").count();
    assert_eq!(leftovers, 0, "a load left temporary files behind");
});
