//! Shared by the tests against a real Kafka.

use tick_kafka::KafkaArgs;

/// Settings for the test broker at `brokers`: topics are created by the tests themselves, with
/// `partitions` partitions when they use `create_topic`'s default.
pub fn args(brokers: String, partitions: i32) -> KafkaArgs {
    KafkaArgs {
        brokers,
        properties: vec![],
        linger: Default::default(),
        create_topics: false,
        topic_partitions: partitions,
        topic_replication: 1,
    }
}
