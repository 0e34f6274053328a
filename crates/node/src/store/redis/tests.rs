//! Tests of the Redis store against a throwaway redis-server.

use super::*;
use crate::store::size::tests::Redis;

fn set(name: &str, value: Vec<u8>) -> WireChange {
    WireChange {
        name: name.into(),
        value: Some(Value::new(value)),
        secret: false,
        delete: false,
    }
}

/// The commit script counts bytes as sent, like the SQLite store: of seven values of
/// control characters two fit (with a 1 MiB limit here, and 64 KiB values: 384 KiB as
/// sent); an environment found over the limit (written by an older version, which kept
/// no wire sizes) can be trimmed but not grown.
#[tokio::test]
async fn the_limit_counts_bytes_as_sent() {
    let redis = Redis::start();
    let mut raw = redis.connection();
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.1)).unwrap();
    let store = RedisStore::with_limit(client, 10, false, 1 << 20);
    let ctl = vec![1u8; 64 * 1024];
    let mut refused = 0;
    for i in 0..7 {
        match store
            .commit("prod", &[set(&format!("V{i}"), ctl.clone())], None)
            .await
        {
            Ok(_) => {}
            Err(StoreError::TooLarge { size, what, .. }) => {
                assert!(size > 1 << 20 && what.contains("\"prod\""), "{what}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 5, "two fit in 1 MiB as sent, not three");

    // As an older version would have left it: over the limit, no wire sizes.
    for i in 2..4 {
        let _: () = redis::cmd("HSET")
            .arg(values_key("prod"))
            .arg(format!("V{i}"))
            .arg(ctl.as_slice())
            .query(&mut raw)
            .unwrap();
    }
    let _: () = redis::cmd("HDEL")
        .arg(meta_key("prod"))
        .arg("wire")
        .query(&mut raw)
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(wire_key("prod"))
        .query(&mut raw)
        .unwrap();
    let r = store.commit("prod", &[set("B", b"2".to_vec())], None).await;
    assert!(matches!(r, Err(StoreError::TooLarge { .. })), "{r:?}");
    let del = WireChange {
        name: "V3".into(),
        value: None,
        secret: false,
        delete: true,
    };
    store
        .commit("prod", &[del], None)
        .await
        .expect("a delete is taken over the limit");
    store
        .commit("prod", &[set("V2", b"small".to_vec())], None)
        .await
        .expect("a smaller value is taken over the limit");
    let r = store.commit("prod", &[set("B", ctl.clone())], None).await;
    assert!(matches!(r, Err(StoreError::TooLarge { .. })), "{r:?}");
}
