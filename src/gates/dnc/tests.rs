use std::path::Path;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use secrecy::SecretString;

use super::*;
use crate::store::redis::RedisAddress;
use crate::store::redis::dnc::{RedisDnc, RedisDncSet};
use std::sync::Weak;
use std::time::Instant;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Short, so reloads are seen quickly.
const INTERVAL: Duration = Duration::from_millis(100);
/// How long a change may take to show before a test gives up.
const PATIENCE: Duration = Duration::from_secs(5);

fn number(raw: &str) -> PhoneNumber {
    PhoneNumber::parse(raw).expect("test numbers are valid")
}

/// A uniquely named temporary directory, removed when dropped (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("dnc-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `content` to `path` atomically (a new file renamed over the old one), the way
/// operators are told to edit the list.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
    std::fs::write(&tmp, content).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the list");
}

fn file_sources(path: PathBuf) -> DncSources {
    DncSources {
        file: Some(path),
        reload_interval: INTERVAL,
        shared: None,
    }
}

/// Waits until the list answers `want` for `raw`, or fails after [`PATIENCE`].
async fn eventually(list: &DncList, raw: &str, want: bool) {
    let n = number(raw);
    let deadline = Instant::now() + PATIENCE;
    loop {
        if list.contains(&n).await.expect("file lookups cannot fail") == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} still {}listed after {PATIENCE:?}",
            if want { "not " } else { "" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn listed(list: &DncList, raw: &str) -> bool {
    list.contains(&number(raw))
        .await
        .expect("lookup should succeed")
}

fn redis_settings(prefix: &str, hash_key: &str) -> RedisDnc {
    RedisDnc {
        address: RedisAddress::url(REDIS_URL),
        key_prefix: prefix.to_owned(),
        hash_key: SecretString::from(hash_key.to_owned()),
    }
}

/// The shared set on the local Redis, or a panic explaining that these tests need one.
async fn shared(settings: RedisDnc) -> Option<Arc<dyn SharedList>> {
    match RedisDncSet::connect(&settings).await {
        Ok(set) => Some(Arc::new(set)),
        Err(e) => panic!(
            "these tests need a real Redis at {REDIS_URL}; start one \
             (e.g. `redis-server --daemonize yes` or \
             `docker run -d -p 6379:6379 redis:7`): {e}"
        ),
    }
}

async fn raw_redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(REDIS_URL).expect("valid URL");
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("these tests need a real Redis at {REDIS_URL}: {e}"))
}

#[tokio::test]
async fn a_listed_number_is_found_whatever_its_spelling() {
    let dir = TempDir::new();
    let path = dir.path("dnc.txt");
    std::fs::write(
        &path,
        "# list\n+86 157-3203-6617\n\ngarbage line\n(022) 8519 6281\n",
    )
    .expect("write list");
    let list = DncList::start(file_sources(path))
        .await
        .expect("list loads");
    assert!(listed(&list, "15732036617").await);
    assert!(listed(&list, "0086 157 3203 6617").await);
    assert!(listed(&list, "02285196281").await);
    assert!(!listed(&list, "15732036618").await);
    assert!(!listed(&list, "13000000000").await);
    assert_eq!(list.file_len(), 2);
}

#[tokio::test]
async fn additions_and_removals_are_picked_up_without_a_restart() {
    let dir = TempDir::new();
    let path = dir.path("dnc.txt");
    std::fs::write(&path, "15732036617\n").expect("write list");
    let list = DncList::start(file_sources(path.clone()))
        .await
        .expect("list loads");
    assert!(!listed(&list, "13000000000").await);

    // Appending in place, as someone editing the file by hand would.
    std::fs::write(&path, "15732036617\n130-0000-0000\n").expect("append");
    eventually(&list, "13000000000", true).await;
    assert!(listed(&list, "15732036617").await);
    assert_eq!(list.file_len(), 2);

    replace_file(&path, "130 0000 0000\n");
    eventually(&list, "15732036617", false).await;
    assert!(listed(&list, "13000000000").await);
    assert_eq!(list.file_len(), 1);
}

#[cfg(unix)]
#[tokio::test]
async fn a_symlink_swap_is_picked_up() {
    let dir = TempDir::new();
    // The ConfigMap layout: list -> ..data/dnc.txt, ..data -> ..v1; an update writes ..v2
    // and renames a new symlink over ..data.
    for (version, content) in [("..v1", "15732036617\n"), ("..v2", "13000000000\n")] {
        std::fs::create_dir(dir.path(version)).expect("version dir");
        std::fs::write(dir.path(version).join("dnc.txt"), content).expect("write version");
    }
    std::os::unix::fs::symlink("..v1", dir.path("..data")).expect("data link");
    std::os::unix::fs::symlink("..data/dnc.txt", dir.path("dnc.txt")).expect("file link");

    let list = DncList::start(file_sources(dir.path("dnc.txt")))
        .await
        .expect("list loads through symlinks");
    assert!(listed(&list, "15732036617").await);
    assert!(!listed(&list, "13000000000").await);

    std::os::unix::fs::symlink("..v2", dir.path("..data_tmp")).expect("new link");
    std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).expect("swap link");
    eventually(&list, "13000000000", true).await;
    assert!(!listed(&list, "15732036617").await);
}

#[cfg(unix)]
#[tokio::test]
async fn a_swap_to_a_file_of_the_same_size_and_time_is_picked_up() {
    let dir = TempDir::new();
    let path = dir.path("dnc.txt");
    std::fs::write(&path, "15732036617\n").expect("write list");
    let list = DncList::start(file_sources(path.clone()))
        .await
        .expect("list loads");
    // Same length, same modification time: only the inode tells them apart.
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let tmp = dir.path("new.txt");
    std::fs::write(&tmp, "13000000000\n").expect("write new");
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(modified))
        .expect("set mtime");
    std::fs::rename(&tmp, &path).expect("swap");
    eventually(&list, "13000000000", true).await;
    assert!(!listed(&list, "15732036617").await);
}

#[tokio::test]
async fn a_deleted_file_keeps_the_last_good_list_until_it_returns() {
    let dir = TempDir::new();
    let path = dir.path("dnc.txt");
    std::fs::write(&path, "15732036617\n").expect("write list");
    let list = DncList::start(file_sources(path.clone()))
        .await
        .expect("list loads");
    std::fs::remove_file(&path).expect("delete list");
    // Proving that nothing happens takes some waiting: several polls' worth.
    tokio::time::sleep(INTERVAL * 5).await;
    assert!(listed(&list, "15732036617").await);
    assert_eq!(list.file_len(), 1);

    std::fs::write(&path, "13000000000\n").expect("write list again");
    eventually(&list, "13000000000", true).await;
    assert!(!listed(&list, "15732036617").await);
}

#[tokio::test]
async fn a_missing_file_at_start_up_is_an_error() {
    let dir = TempDir::new();
    let path = dir.path("missing.txt");
    let err = DncList::start(file_sources(path.clone()))
        .await
        .expect_err("missing file must fail start-up");
    assert!(
        matches!(&err, DncError::File { path: p, reason } if *p == path && reason.kind() == io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.txt"), "{err}");

    let err = DncList::start(file_sources(dir.0.clone()))
        .await
        .expect_err("a directory is not a list");
    assert!(matches!(err, DncError::File { .. }), "{err:?}");
}

#[tokio::test]
async fn a_zero_reload_interval_is_rejected() {
    let dir = TempDir::new();
    let path = dir.path("dnc.txt");
    std::fs::write(&path, "").expect("write list");
    let mut settings = file_sources(path);
    settings.reload_interval = Duration::ZERO;
    let err = DncList::start(settings).await.expect_err("zero interval");
    assert!(matches!(err, DncError::Settings(_)), "{err:?}");
}

#[tokio::test]
async fn the_empty_list_contains_nothing_and_has_no_shared_set() {
    let list = DncList::empty();
    assert!(!listed(&list, "15732036617").await);
    assert_eq!(list.file_len(), 0);
    let err = list
        .add(&number("15732036617"))
        .await
        .expect_err("no Redis");
    assert!(matches!(err, DncError::NoSharedSet), "{err:?}");
    assert!(matches!(
        list.remove(&number("15732036617")).await,
        Err(DncError::NoSharedSet)
    ));

    let nothing = DncList::start(DncSources {
        file: None,
        reload_interval: Duration::ZERO,
        shared: None,
    })
    .await
    .expect("no sources is fine");
    assert!(!listed(&nothing, "15732036617").await);
}

#[tokio::test]
async fn the_reloader_stops_when_the_last_clone_is_dropped() {
    let dir = TempDir::new();
    let path = dir.path("dnc.txt");
    std::fs::write(&path, "15732036617\n").expect("write list");
    let list = DncList::start(file_sources(path))
        .await
        .expect("list loads");
    let file: Weak<FileSet> = Arc::downgrade(list.inner.file.as_ref().expect("a file"));
    // The list and the reloader each hold the file set.
    assert_eq!(file.strong_count(), 2);

    let clone = list.clone();
    drop(list);
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(file.strong_count(), 2, "a clone still lives");
    assert!(listed(&clone, "15732036617").await);

    drop(clone);
    let deadline = Instant::now() + PATIENCE;
    while file.strong_count() > 0 {
        assert!(Instant::now() < deadline, "the reloader is still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_shared_set_holds_keyed_hashes_and_supports_add_and_remove() {
    let prefix = format!("dialex-dnc-test-{}", uuid::Uuid::new_v4());
    let key = format!("{prefix}:dnc");
    let list = DncList::start(DncSources {
        file: None,
        reload_interval: INTERVAL,
        shared: shared(redis_settings(&prefix, "test-secret")).await,
    })
    .await
    .expect("the list starts");
    let mut raw = raw_redis().await;

    let n = number("+86 157-3203-6617");
    assert!(!listed(&list, "15732036617").await);
    list.add(&n).await.expect("SADD");
    list.add(&n).await.expect("adding twice is fine");
    assert!(listed(&list, "15732036617").await);
    assert!(!listed(&list, "13000000000").await);

    // The member is the hex HMAC of the national digits under the key, nothing else.
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("SMEMBERS");
    let mut mac = Hmac::<Sha1>::new_from_slice(b"test-secret").expect("any key length");
    mac.update(b"15732036617");
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(members, [expected]);
    assert!(!members[0].contains("15732036617"));

    // Another hash key cannot see it: every reader must share the key.
    let other = DncList::start(DncSources {
        file: None,
        reload_interval: INTERVAL,
        shared: shared(redis_settings(&prefix, "another-secret")).await,
    })
    .await
    .expect("the list starts");
    assert!(!listed(&other, "15732036617").await);

    list.remove(&n).await.expect("SREM");
    list.remove(&n).await.expect("removing twice is fine");
    assert!(!listed(&list, "15732036617").await);
    let size: u64 = redis::cmd("SCARD")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("SCARD");
    assert_eq!(size, 0);

    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn the_file_and_the_shared_set_are_both_consulted() {
    let dir = TempDir::new();
    let path = dir.path("dnc.txt");
    std::fs::write(&path, "15732036617\n").expect("write list");
    let prefix = format!("dialex-dnc-test-{}", uuid::Uuid::new_v4());
    let list = DncList::start(DncSources {
        file: Some(path),
        reload_interval: INTERVAL,
        shared: shared(redis_settings(&prefix, "test-secret")).await,
    })
    .await
    .expect("the list starts");
    list.add(&number("13000000000")).await.expect("SADD");
    assert!(listed(&list, "15732036617").await, "from the file");
    assert!(listed(&list, "13000000000").await, "from Redis");
    assert!(!listed(&list, "02285196281").await);
    // Removing from Redis does not touch the file.
    list.remove(&number("15732036617")).await.expect("SREM");
    assert!(listed(&list, "15732036617").await);

    let mut raw = raw_redis().await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:dnc"))
        .query_async(&mut raw)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn a_wrong_type_key_is_an_error_not_a_no() {
    let prefix = format!("dialex-dnc-test-{}", uuid::Uuid::new_v4());
    let key = format!("{prefix}:dnc");
    let list = DncList::start(DncSources {
        file: None,
        reload_interval: INTERVAL,
        shared: shared(redis_settings(&prefix, "test-secret")).await,
    })
    .await
    .expect("the list starts");
    let mut raw = raw_redis().await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a set")
        .query_async(&mut raw)
        .await
        .expect("SET");
    let err = list
        .contains(&number("15732036617"))
        .await
        .expect_err("WRONGTYPE must not read as 'not listed'");
    assert!(matches!(err, DncError::Redis(_)), "{err:?}");
    assert!(!err.to_string().contains("15732036617"), "{err}");
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .expect("DEL");
}

/// A fake Redis that answers `:0` to every command except `SISMEMBER`, which it never
/// answers: a server that accepted the connection and then stalled.
async fn stalling_redis() -> String {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                // RESP requests: `*<n>`, then `$<len>` and the argument for each of n.
                while let Ok(Some(header)) = lines.next_line().await {
                    let count: usize = header.trim_start_matches('*').parse().unwrap_or(0);
                    let mut name = String::new();
                    for i in 0..count * 2 {
                        let Ok(Some(line)) = lines.next_line().await else {
                            return;
                        };
                        if i == 1 {
                            name = line.to_ascii_uppercase();
                        }
                    }
                    if name != "SISMEMBER" && write.write_all(b":0\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("redis://{addr}")
}

#[tokio::test]
async fn a_stalled_redis_fails_the_lookup_quickly() {
    let list = RedisDncSet::connect(&RedisDnc {
        address: RedisAddress::url(stalling_redis().await),
        key_prefix: "p".to_owned(),
        hash_key: SecretString::from("k".to_owned()),
    })
    .await
    .expect("the fake answers the start-up probe");
    let started = Instant::now();
    let err = list
        .contains(&number("15732036617"))
        .await
        .expect_err("no answer is not a 'no'");
    let took = started.elapsed();
    assert!(
        matches!(err, DncError::Timeout(t) if t == LOOKUP_TIMEOUT),
        "{err:?}"
    );
    assert!(took < LOOKUP_TIMEOUT * 3, "took {took:?}");
}

#[tokio::test]
async fn connection_errors_never_show_the_url_or_password() {
    // Port 1 on loopback refuses at once.
    let err = RedisDncSet::connect(&RedisDnc {
        address: RedisAddress::url("redis://user:s3cr%40t@127.0.0.1:1/0"),
        key_prefix: "p".to_owned(),
        hash_key: SecretString::from("k".to_owned()),
    })
    .await
    .expect_err("nothing listens on port 1");
    let message = err.to_string();
    for leak in ["s3cr", "redis://", "127.0.0.1:1"] {
        assert!(!message.contains(leak), "{message}");
    }
    assert!(!format!("{err:?}").contains("s3cr"));

    let err = RedisDncSet::connect(&RedisDnc {
        address: RedisAddress::url(REDIS_URL),
        key_prefix: "p".to_owned(),
        hash_key: SecretString::from(String::new()),
    })
    .await
    .expect_err("empty hash key");
    assert!(matches!(err, DncError::Settings(_)), "{err:?}");
}

#[test]
fn the_redis_settings_debug_hides_secrets() {
    let printed = format!("{:?}", redis_settings("p", "hush"));
    assert!(!printed.contains("hush"), "{printed}");
    assert!(!printed.contains("127.0.0.1"), "{printed}");
}
