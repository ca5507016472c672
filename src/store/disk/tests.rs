use super::index::STAT_FRESH;
use super::*;
use prometheus::{IntCounter, IntGauge};

fn metrics() -> StoreMetrics {
    StoreMetrics {
        bytes: IntGauge::new("b", "b").unwrap(),
        entries: IntGauge::new("e", "e").unwrap(),
        evictions: IntCounter::new("v", "v").unwrap(),
        errors: IntCounter::new("r", "r").unwrap(),
        unsynced: IntGauge::new("u", "u").unwrap(),
        index_complete: IntGauge::new("c", "c").unwrap(),
        index_bytes: IntGauge::new("i", "i").unwrap(),
    }
}

#[test]
fn put_get_and_reject() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
    c.put("mod/x.com/m/@v/list", b"v1.0.0\n").unwrap();
    let f = c.get("mod/x.com/m/@v/list").unwrap();
    assert_eq!(std::fs::read(&f.path).unwrap(), b"v1.0.0\n");
    assert!(c.get("mod/x.com/m/@v/other").is_none());
    for bad in ["../x", "a/../b", "/abs", "a//b", "", "a/./b"] {
        assert!(matches!(c.begin(bad), Err(StoreError::BadKey(_))), "{bad}");
    }
    let mut p = c.begin("mod/x.com/m/@v/v1.0.0.zip").unwrap();
    p.write(b"bad").unwrap();
    assert!(
        p.commit(|_| Err(io::Error::other("corrupt").into()))
            .is_err()
    );
    assert!(c.get("mod/x.com/m/@v/v1.0.0.zip").is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "no temp file left"
    );
}

#[test]
fn uncommitted_writes_are_never_visible_and_tmp_is_cleared_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
    let mut p = c.begin("k/a").unwrap();
    p.write(b"partial").unwrap();
    std::mem::forget(p); // as if the process died here
    assert!(c.get("k/a").is_none());
    let again = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
    assert!(again.get("k/a").is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn evicts_least_recently_used_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(DiskCache::open(dir.path(), 300, metrics()).unwrap());
    c.put("k/a", &[0; 100]).unwrap();
    c.put("k/b", &[0; 100]).unwrap();
    c.put("k/c", &[0; 100]).unwrap();
    assert!(c.get("k/a").is_some()); // a is now the most recently used
    c.put("k/d", &[0; 100]).unwrap(); // over the bound: b goes
    assert!(c.get("k/b").is_none());
    assert!(c.get("k/a").is_some() && c.get("k/c").is_some() && c.get("k/d").is_some());
    assert_eq!(c.usage(), (3, 300));
    drop(c);
    let c = DiskCache::open(dir.path(), 300, metrics()).unwrap();
    assert_eq!(c.usage(), (3, 300));
    assert!(c.get("k/a").is_some());
}

#[test]
fn not_found_entries_under_the_old_suffix_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
        c.put("k/v1.0.0-x.info.notfound", b"404\n").unwrap();
        c.put(&format!("k/v1.0.0-y.info{NOT_FOUND_SUFFIX}"), b"404\n")
            .unwrap();
        c.put("k/v1.0.0.info", b"{}").unwrap();
        c.settle();
    }
    let c = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
    assert!(c.get("k/v1.0.0-x.info.notfound").is_none());
    assert!(!dir.path().join("cache/k/v1.0.0-x.info.notfound").exists());
    assert!(
        c.get(&format!("k/v1.0.0-y.info{NOT_FOUND_SUFFIX}"))
            .is_some()
    );
    assert!(c.get("k/v1.0.0.info").is_some());
    assert_eq!(c.usage().0, 2);
}

#[test]
fn an_empty_entry_is_as_new_as_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
    let p = c.begin("k/empty").unwrap();
    // As a spare file made a while before the fill that takes it.
    let old = SystemTime::now() - Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(&p.tmp_path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    p.commit_then(|_| Ok(())).unwrap().run();
    let found = c.get("k/empty").unwrap();
    let age = SystemTime::now()
        .duration_since(fs::metadata(&found.path).unwrap().modified().unwrap())
        .unwrap_or_default();
    assert!(age < Duration::from_secs(600), "{age:?}");
}

/// Writes the horizon file as a run on `boot` would have left it, with time `at`.
fn fake_horizon(data: &Path, boot: &str, at: SystemTime, clean: bool) {
    durable::write_horizon(data, boot, clean, Some(at)).unwrap();
}

fn set_mtime(c: &DiskCache, key: &str, at: SystemTime) {
    File::options()
        .write(true)
        .open(c.file_of(key).unwrap())
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// Three entries as a run might leave them: one well before its horizon, one after it,
/// and an empty one (an inode that reached the disk without its contents).
fn entries_around_a_horizon(dir: &Path) -> SystemTime {
    let c = Arc::new(DiskCache::open(dir, 1 << 20, metrics()).unwrap());
    c.put("k/durable", b"old").unwrap();
    c.put("k/late", b"new").unwrap();
    c.put("k/empty", b"").unwrap();
    let horizon = SystemTime::now() - 4 * durable::MARGIN;
    set_mtime(&c, "k/durable", horizon - 2 * durable::MARGIN);
    set_mtime(&c, "k/late", horizon + Duration::from_secs(1));
    set_mtime(&c, "k/empty", horizon - 2 * durable::MARGIN);
    horizon
}

#[test]
fn after_an_os_restart_entries_the_last_run_may_not_have_synced_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let horizon = entries_around_a_horizon(dir.path());
    fake_horizon(dir.path(), "an-earlier-boot", horizon, false);
    let c = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
    assert!(c.get("k/durable").is_some());
    assert!(c.get("k/late").is_none(), "written after the horizon");
    assert!(c.get("k/empty").is_none(), "empty");
    assert!(!dir.path().join("cache/k/late").exists());
    assert!(!dir.path().join("cache/k/empty").exists());
    assert_eq!(c.usage(), (1, 3));
    // The new horizon belongs to this boot and is recent.
    let now = durable::read_horizon(dir.path()).unwrap().unwrap();
    assert_eq!(now.boot, durable::boot_id());
    assert!(now.at > horizon);
}

#[test]
fn on_the_same_boot_or_without_a_horizon_every_entry_is_kept() {
    for boot in [Some(durable::boot_id()), None] {
        let dir = tempfile::tempdir().unwrap();
        let horizon = entries_around_a_horizon(dir.path());
        match &boot {
            Some(b) => fake_horizon(dir.path(), b, horizon, false),
            None => fs::remove_file(dir.path().join(durable::HORIZON_FILE)).unwrap(),
        }
        let c = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
        for key in ["k/durable", "k/late", "k/empty"] {
            assert!(c.get(key).is_some(), "{key} kept ({boot:?})");
        }
        assert!(dir.path().join(durable::HORIZON_FILE).exists());
    }
}

#[tokio::test]
async fn fills_are_synced_in_the_background_and_move_the_horizon() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
    let opened = durable::read_horizon(dir.path()).unwrap().unwrap().at;
    let before = SystemTime::now();
    let mut p = c.begin("k/a").unwrap();
    p.write(b"one").unwrap();
    p.commit_then(|_| Ok(())).unwrap().run();
    assert!(c.get("k/a").is_some(), "visible at once");
    // This runtime has one thread and the test has not yielded: the fsync has not run.
    assert_eq!(c.unsynced(), 1);
    assert_eq!(c.metrics.unsynced.get(), 1, "the gauge counts it");
    // An open fill holds the horizon back to its start.
    let open = c.begin("k/b").unwrap();
    let b_began = SystemTime::now();
    let synced = async {
        while c.unsynced() > 0 || c.metrics.unsynced.get() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), synced)
        .await
        .expect("the background fsync ran");
    let moved = async {
        loop {
            let at = durable::read_horizon(dir.path()).unwrap().unwrap().at;
            if at > opened {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let at = tokio::time::timeout(Duration::from_secs(30), moved)
        .await
        .expect("the horizon moved after the fsync");
    assert!(at >= before, "past the synced fill");
    assert!(at <= b_began, "not past the open one");
    drop(open);
    c.settle();
    let settled = durable::read_horizon(dir.path()).unwrap().unwrap();
    assert!(settled.clean, "nothing open or unsynced: a clean stop");
    assert!(settled.at >= at);
    // After the stop is recorded, fills are fsynced before their rename.
    c.put("k/c", b"late").unwrap();
    assert_eq!(c.unsynced(), 0, "not queued");
    assert!(c.get("k/c").is_some());
}

#[test]
fn after_a_clean_stop_even_another_boot_keeps_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let horizon = entries_around_a_horizon(dir.path());
    fake_horizon(dir.path(), "an-earlier-boot", horizon, true);
    let c = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
    for key in ["k/durable", "k/late", "k/empty"] {
        assert!(c.get(key).is_some(), "{key} kept");
    }
    assert!(
        !durable::read_horizon(dir.path()).unwrap().unwrap().clean,
        "running again"
    );
}

#[tokio::test]
async fn fills_take_spare_files_made_ahead_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
    let names = || -> Vec<PathBuf> {
        fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    assert!(names().is_empty(), "no spares before the first fill");
    // The first fill makes its own file and starts the refill.
    c.put("k/a", b"one").unwrap();
    let made = async {
        while names().len() < SPARE_FILES {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), made)
        .await
        .expect("spare files are made after a fill");
    let spares = names();
    assert_eq!(spares.len(), SPARE_FILES);
    assert!(spares.iter().all(|p| fs::metadata(p).unwrap().len() == 0));
    let mut p = c.begin("k/b").unwrap();
    assert!(spares.contains(&p.tmp_path), "a spare file is used");
    p.write(b"two").unwrap();
    p.commit(|_| Ok(())).unwrap();
    assert_eq!(fs::read(dir.path().join("cache/k/b")).unwrap(), b"two");
    // Spares are temporary files: a restart clears them.
    let refilled = async {
        while c.refilling.load(Ordering::Acquire) || names().len() < SPARE_FILES {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), refilled)
        .await
        .expect("the spare taken is replaced");
    drop(c);
    DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
    assert!(names().is_empty());
}

#[test]
fn commits_are_seen_at_once_and_outside_removals_within_stat_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
    c.put("k/a", b"one").unwrap();
    assert_eq!(c.get("k/a").unwrap().len, 3);
    c.put("k/a", b"three!").unwrap();
    assert_eq!(
        c.get("k/a").unwrap().len,
        6,
        "a new version needs no stat delay"
    );
    // Another process (`modgate cache verify`) removes the file.
    std::fs::remove_file(dir.path().join("cache/k/a")).unwrap();
    std::thread::sleep(STAT_FRESH + Duration::from_millis(50));
    assert!(c.get("k/a").is_none(), "the removal is noticed");
    assert_eq!(c.usage(), (0, 0));
}

/// A gateway's cache as it is between opening and the end of its index build.
fn opened_unindexed(dir: &Path, max: u64) -> Arc<DiskCache> {
    Arc::new(DiskCache::open_inner(dir, max, metrics(), true).unwrap())
}

#[test]
fn hits_are_served_while_the_index_is_built_and_eviction_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
        for i in 0..10 {
            c.put(&format!("k/{i}"), &[0; 100]).unwrap();
        }
        c.settle();
    }
    let c = opened_unindexed(dir.path(), 500);
    assert!(c.indexing().entries == 0 && !c.indexing().complete);
    assert_eq!(c.get("k/3").unwrap().len, 100, "found on disk");
    assert!(c.get("k/missing").is_none());
    assert_eq!(c.usage(), (1, 100));
    c.put("k/new", &[0; 100]).unwrap();
    assert_eq!(c.usage(), (2, 200));
    assert_eq!(
        c.metrics.evictions.get(),
        0,
        "nothing evicted before every entry is counted"
    );
    assert_eq!(c.metrics.index_complete.get(), 0);
    c.build_index().unwrap();
    assert!(c.indexing().complete);
    assert_eq!(c.metrics.index_complete.get(), 1);
    assert_eq!(
        c.usage(),
        (5, 500),
        "11 entries found, evicted down to the bound"
    );
    assert_eq!(c.metrics.evictions.get(), 6);
    // The entries used in this run were the newest: they stay.
    assert!(c.get("k/3").is_some() && c.get("k/new").is_some());
}

#[test]
fn entries_an_os_crash_may_have_left_are_dealt_with_before_they_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let horizon = entries_around_a_horizon(dir.path());
    fake_horizon(dir.path(), "an-earlier-boot", horizon, false);
    let c = opened_unindexed(dir.path(), 1 << 20);
    // Asked for before the walk reaches it: removed, not served.
    assert!(c.get("k/late").is_none(), "written after the horizon");
    assert!(!dir.path().join("cache/k/late").exists());
    assert!(c.get("k/durable").is_some());
    // This run writes entries newer than the old horizon; they are not taken for the last
    // run's, and the old horizon (and boot) stays in force until the walk is done.
    c.put("k/mine", b"new").unwrap();
    c.put("k/mine-empty", b"").unwrap();
    let kept = durable::read_horizon(dir.path()).unwrap().unwrap();
    assert_eq!(kept.boot, "an-earlier-boot");
    c.build_index().unwrap();
    assert!(
        !dir.path().join("cache/k/empty").exists(),
        "the walk removed it"
    );
    for key in ["k/durable", "k/mine", "k/mine-empty"] {
        assert!(c.get(key).is_some(), "{key} kept");
    }
    assert_eq!(c.usage().0, 3);
    let now = durable::read_horizon(dir.path()).unwrap().unwrap();
    assert_eq!(now.boot, durable::boot_id());
    assert!(now.at > horizon);
}

#[test]
fn the_gateway_opens_at_once_and_builds_its_index_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Arc::new(DiskCache::open(dir.path(), 1 << 30, metrics()).unwrap());
        for i in 0..2000 {
            c.put(
                &format!("mod/example.com/m{}/@v/v1.0.{i}.info", i % 7),
                b"{}",
            )
            .unwrap();
        }
        c.settle();
    }
    let c = DiskCache::open_indexing(dir.path(), 1 << 30, metrics()).unwrap();
    assert!(c.get("mod/example.com/m3/@v/v1.0.3.info").is_some());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.indexing().complete {
        assert!(Instant::now() < deadline, "the index build ends");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(c.indexing().entries, 2000);
    let mut n = 0;
    c.for_each_entry(|k, size, _| {
        assert!(k.starts_with("mod/example.com/m") && size == 2, "{k}");
        n += 1;
    });
    assert_eq!(n, 2000);
}
