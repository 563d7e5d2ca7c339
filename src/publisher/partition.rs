//! The partitioner: librdkafka's default (`consistent_random`: CRC-32 of the
//! key modulo the partition count), with the last answer kept.
//!
//! Every record of a container carries the same key (its container id, up
//! to 128 bytes), and the publisher sends a container's records in runs, so
//! nearly every call asks what the call before it asked. librdkafka hashes
//! the key byte by byte for each record: 2.5% of the whole pipeline's CPU
//! at full speed (perf). Here a repeat costs one comparison, and any other
//! question goes to librdkafka's own function, so the partition of every
//! record is exactly the one the default partitioner would choose.
//!
//! Installed only when the operator sets no `kafka.partitioner`.

use rdkafka::bindings as rdsys;
use std::cell::RefCell;
use std::ffi::c_void;

/// The last key and partition count asked about, and the answer.
struct Last {
    key: Vec<u8>,
    count: i32,
    partition: i32,
}

thread_local! {
    // Per thread: librdkafka calls the partitioner on the thread that sends
    // and, for records queued before the topic's metadata was known, on one
    // of its own threads.
    static LAST: RefCell<Option<Last>> = const { RefCell::new(None) };
}

/// A topic configuration for `rd_kafka_topic_new`: the client's default
/// topic settings (what a NULL configuration would give), with this
/// partitioner. The caller passes it on (librdkafka takes ownership).
///
/// # Safety
/// `rk` is a live client.
pub unsafe fn topic_conf(rk: *mut rdsys::rd_kafka_t) -> *mut rdsys::rd_kafka_topic_conf_t {
    // SAFETY: a live client (the caller's promise); the copy is ours.
    let conf = unsafe { rdsys::rd_kafka_default_topic_conf_dup(rk) };
    if !conf.is_null() {
        // SAFETY: a topic configuration we own; the function is 'static.
        unsafe { rdsys::rd_kafka_topic_conf_set_partitioner_cb(conf, Some(partition)) };
    }
    conf
}

/// librdkafka's `consistent_random`, remembered for the last key.
unsafe extern "C" fn partition(
    rkt: *const rdsys::rd_kafka_topic_t,
    key: *const c_void,
    keylen: usize,
    partition_cnt: i32,
    rkt_opaque: *mut c_void,
    msg_opaque: *mut c_void,
) -> i32 {
    let ask = || {
        // SAFETY: librdkafka's arguments, passed on unchanged.
        unsafe {
            rdsys::rd_kafka_msg_partitioner_consistent_random(
                rkt,
                key,
                keylen,
                partition_cnt,
                rkt_opaque,
                msg_opaque,
            )
        }
    };
    if key.is_null() || keylen == 0 {
        return ask(); // random: nothing to remember
    }
    // SAFETY: librdkafka passes the record's key, `keylen` bytes.
    let k = unsafe { std::slice::from_raw_parts(key as *const u8, keylen) };
    // No panic may cross into C: a failed borrow, or a thread-local
    // already gone at thread exit, just asks librdkafka.
    LAST.try_with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return ask();
        };
        if let Some(l) = last.as_ref() {
            if l.count == partition_cnt && l.key == k {
                return l.partition;
            }
        }
        let p = ask();
        *last = Some(Last {
            key: k.to_vec(),
            count: partition_cnt,
            partition: p,
        });
        p
    })
    .unwrap_or_else(|_| ask())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Partitioner = unsafe extern "C" fn(
        *const rdsys::rd_kafka_topic_t,
        *const c_void,
        usize,
        i32,
        *mut c_void,
        *mut c_void,
    ) -> i32;

    fn ask(f: Partitioner, key: &[u8], count: i32) -> i32 {
        // SAFETY: a non-empty key: consistent_random (ours asks it) hashes
        // it and does not look at the (absent) topic.
        unsafe {
            f(
                std::ptr::null(),
                key.as_ptr() as *const c_void,
                key.len(),
                count,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        }
    }

    fn librdkafka(key: &[u8], count: i32) -> i32 {
        ask(
            rdsys::rd_kafka_msg_partitioner_consistent_random,
            key,
            count,
        )
    }

    fn ours(key: &[u8], count: i32) -> i32 {
        ask(partition, key, count)
    }

    #[test]
    fn every_answer_is_librdkafkas_repeats_and_changes_alike() {
        let keys: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("c{i}-8d2b7a2e-1f4c-4b8e-9a51-{i:012}").into_bytes())
            .chain([vec![0u8], vec![0xff; 128], b"a".to_vec()])
            .collect();
        let mut differ = 0;
        // Runs of one key, keys in turn, a key seen before, the partition
        // count changing under the same key.
        for count in [1, 2, 3, 12, 7, 12] {
            for k in &keys {
                for _ in 0..3 {
                    assert_eq!(ours(k, count), librdkafka(k, count), "{k:?} of {count}");
                }
            }
            for k in keys.iter().rev() {
                assert_eq!(ours(k, count), librdkafka(k, count), "{k:?} of {count}");
                differ += (ours(k, count) != ours(&keys[0], count)) as usize;
            }
        }
        assert!(differ > 0, "the keys spread over the partitions");
        // The cache keys on the whole key, not a prefix.
        let long = b"c1-8d2b7a2e".to_vec();
        for cut in 1..long.len() {
            assert_eq!(ours(&long[..cut], 12), librdkafka(&long[..cut], 12));
            assert_eq!(ours(&long, 12), librdkafka(&long, 12));
        }
    }
}
