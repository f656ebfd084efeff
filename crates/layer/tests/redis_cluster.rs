//! The conformance suite, and replicas sharing groups and channels, on a Redis Cluster of three
//! masters (sharded pub/sub), started once for this test binary.

#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
    // One message per group, on three masters: b reads each master on its own connection, so
    // the groups' messages may arrive in any order (each group's own order is kept).
    let mut seen = Vec::new();
    for _ in 0..12 {
        seen.push(recv(&mut on_b).await.get("n").and_then(|v| v.as_i64()));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..12).map(Some).collect::<Vec<_>>());
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

/// A master restarts (its clients' connections die) right after a presence command used a
/// pooled connection to it: the next presence command there answers, on a new connection,
/// instead of failing on the dead one ("broken pipe"). The subscriber's lost link tells the
/// node's pool. A cluster of its own: the restart would disturb the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_node_restart_pooled_commands_do_not_fail_on_dead_connections() {
    let mut cluster = tokio::task::block_in_place(|| Cluster::start_with(0));
    let mut c = RedisPubSubConfig::new(vec![cluster.url()]);
    c.prefix = unique_prefix();
    let channel =
        channels_layer::redis::group_channel(&c.prefix, &GroupName::new("restarted").unwrap());
    let layer = RedisClusterChannelLayer::connect(c).await.unwrap();
    let g = GroupName::new("restarted").unwrap();
    // A member, so the layer holds a subscriber on the node of the group's slot.
    let inbox = layer.new_channel().await.unwrap();
    layer.group_add(&g, inbox.name()).await.unwrap();
    test_support::eventually("ready", || layer.is_ready()).await;
    let member = channels_layer::PresenceMember {
        user: "u".to_owned(),
        name: "U".to_owned(),
        channel: inbox.name().to_string(),
        replica: "a".to_owned(),
        joined_at: channels_layer::presence::unix_now(),
    };
    let ttl = Duration::from_secs(60);
    layer.presence_add(&g, &member, ttl).await.unwrap();
    // Reads at once: the node's pool holds several connections, so the maintenance loop (which
    // may take one for its own commands after the link loss) cannot sweep them all.
    let reads = tokio::join!(
        layer.presence(&g),
        layer.presence(&g),
        layer.presence(&g),
        layer.presence(&g)
    );
    for read in [reads.0, reads.1, reads.2, reads.3] {
        assert_eq!(read.unwrap().members.len(), 1);
    }

    let node = cluster.owner(cluster.keyslot(&channel));
    tokio::task::block_in_place(|| cluster.node_mut(node).restart());
    test_support::eventually("the link loss seen", || layer.stats().disconnects >= 1).await;
    // Read at once, within the two seconds in which a pooled connection is trusted without a
    // PING. Until it has heard from the other masters the node answers CLUSTERDOWN, its own
    // word, which is fine; failing on the connection that died with the old process is not.
    let deadline = Instant::now() + Duration::from_secs(15);
    let presence = loop {
        match layer.presence(&g).await {
            Ok(presence) => break presence,
            Err(error) if error.to_string().contains("CLUSTERDOWN") => {
                assert!(Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the read after the restart failed: {error}"),
        }
    };
    // The restarted node has no data: the read answers, with nobody.
    assert_eq!(presence.members.len(), 0);
    layer.presence_add(&g, &member, ttl).await.unwrap();
    assert_eq!(layer.presence(&g).await.unwrap().members.len(), 1);
    layer.close().await.unwrap();
}
