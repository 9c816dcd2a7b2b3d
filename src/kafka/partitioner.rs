//! Which requests partition a user's requests land on: the producers' partitioner applied to the
//! message key (the user id). The API needs it to answer for a user from the limiter that the
//! stream uses for that user (`POST /v1/decide`, `GET /v1/users/{user_id}`).
//!
//! The hash functions are librdkafka's own partitioners, called directly, so the answer is the
//! one a librdkafka producer (kcat, confluent-kafka, rdkafka) configured the same way computes.
//! `murmur2_random` is also what the Java client's default partitioner does with a key. The
//! enum itself is configuration (`api.partitioner`, in `config::service`); this file is its
//! librdkafka call.

pub use crate::config::service::Partitioner;

impl Partitioner {
    /// The partition of `partitions` (> 0) that a record keyed `key` goes to; `None` when there
    /// are no partitions.
    pub fn partition(self, key: &[u8], partitions: i32) -> Option<i32> {
        use rdkafka::bindings as rd;
        if partitions <= 0 {
            return None;
        }
        let f = match self {
            Partitioner::ConsistentRandom | Partitioner::Consistent => rd::rd_kafka_msg_partitioner_consistent,
            Partitioner::Murmur2Random | Partitioner::Murmur2 => rd::rd_kafka_msg_partitioner_murmur2,
            Partitioner::Fnv1aRandom | Partitioner::Fnv1a => rd::rd_kafka_msg_partitioner_fnv1a,
        };
        // SAFETY: these three partitioners only read `keylen` bytes at `key` (a live slice) and
        // use neither the topic handle nor the opaques (librdkafka's rdkafka_msg.c), so null
        // pointers are fine there. Their result is in 0..partitions.
        let p = unsafe { f(std::ptr::null(), key.as_ptr().cast(), key.len(), partitions, std::ptr::null_mut(), std::ptr::null_mut()) };
        (0..partitions).contains(&p).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_murmur2_vectors() {
        // Kafka's own test vectors for Utils.murmur2 (UtilsTest.testMurmur2), through the
        // partitioner: (murmur2(key) & 0x7fffffff) % n.
        let cases: [(&[u8], i32); 3] = [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536)];
        for (key, hash) in cases {
            let n = 1_000_003;
            assert_eq!(Partitioner::Murmur2.partition(key, n), Some((hash & 0x7fff_ffff) % n), "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn crc32_of_the_key() {
        // CRC-32 (IEEE) of "123456789" is 0xCBF43926.
        let n = 1_000_003;
        assert_eq!(Partitioner::ConsistentRandom.partition(b"123456789", n), Some((0xCBF4_3926u32 % n as u32) as i32));
    }

    #[test]
    fn no_partitions_no_answer_and_always_in_range() {
        assert_eq!(Partitioner::Fnv1a.partition(b"u1", 0), None);
        for p in [Partitioner::Consistent, Partitioner::Murmur2, Partitioner::Fnv1a] {
            for i in 0..500 {
                let k = format!("user-{i}");
                let got = p.partition(k.as_bytes(), 7).unwrap();
                assert!((0..7).contains(&got));
            }
        }
    }
}
