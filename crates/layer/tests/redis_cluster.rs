//! The conformance suite, and replicas sharing groups and channels, on a Redis Cluster of three
//! masters (sharded pub/sub), started once for this test binary.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::sync::{Arc, OnceLock};

use channels_layer::testing::{LayerFuture, assert_empty, recv};
use channels_layer::{
    ChannelLayer, ChannelName, GroupName, LayerConfig, Message, RedisClusterChannelLayer,
    RedisPubSubConfig,
};
use test_support::redis_ha::Cluster;
use test_support::redis_server::unique_prefix;

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start_with(0))
}

fn config(local: LayerConfig) -> RedisPubSubConfig {
    let mut config = RedisPubSubConfig::new(vec![cluster().url()]);
    config.prefix = unique_prefix();
    config.local = local;
    config
}

fn make(local: LayerConfig) -> LayerFuture {
    let config = config(local);
    Box::pin(async move {
        Arc::new(RedisClusterChannelLayer::connect(config).await.unwrap()) as Arc<dyn ChannelLayer>
    })
}

channels_layer::conformance_suite!(make, without_history);

#[tokio::test]
async fn history_is_refused_with_what_to_do() {
    let local = LayerConfig {
        history_size: 10,
        ..LayerConfig::default()
    };
    let error = RedisClusterChannelLayer::connect(config(local))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("not available on a Redis Cluster"),
        "{error}"
    );
    assert!(error.contains("turn history off"), "{error}");
}

/// Two replicas of one deployment: same prefix, own replica ids.
async fn two_replicas() -> (RedisClusterChannelLayer, RedisClusterChannelLayer) {
    let prefix = unique_prefix();
    let mk = |replica: &str| {
        let mut c = config(LayerConfig::default());
        c.prefix = prefix.clone();
        c.replica_id = Some(replica.to_owned());
        c
    };
    let a = RedisClusterChannelLayer::connect(mk("a")).await.unwrap();
    let b = RedisClusterChannelLayer::connect(mk("b")).await.unwrap();
    assert!(a.is_ready() && b.is_ready(), "{:?}", a.not_ready_reason());
    (a, b)
}

#[tokio::test]
async fn groups_on_every_master_reach_members_on_other_replicas() {
    let (a, b) = two_replicas().await;
    // Twelve groups: their channels land in slots of all three masters.
    let groups: Vec<GroupName> = (0..12)
        .map(|i| GroupName::new(&format!("room{i}")).unwrap())
        .collect();
    let mut on_b = b.new_channel().await.unwrap();
    for g in &groups {
        b.group_add(g, on_b.name()).await.unwrap();
    }
    for (i, g) in groups.iter().enumerate() {
        let n = i64::try_from(i).unwrap();
        a.group_send(g, Message::new("chat.message").with("n", n))
            .await
            .unwrap();
    }
    for i in 0..12 {
        let msg = recv(&mut on_b).await;
        assert_eq!(msg.get("n").and_then(|v| v.as_i64()), Some(i));
    }
    assert_empty(&mut on_b).await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn send_reaches_a_channel_of_another_replica_through_its_shard_channel() {
    let (a, b) = two_replicas().await;
    let mut on_b = b.new_channel().await.unwrap();
    let name: ChannelName = on_b.name().clone();
    a.send(&name, Message::new("direct").with("text", "hi"))
        .await
        .unwrap();
    let msg = recv(&mut on_b).await;
    assert_eq!(msg.message_type(), Some("direct"));
    assert_eq!(msg.get("text").and_then(|v| v.as_str()), Some("hi"));
    assert!(
        msg.get("__asgi_channel__").is_none(),
        "the routing key is taken out"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}
