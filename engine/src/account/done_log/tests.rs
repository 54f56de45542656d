use super::*;

fn debit(reply: u64) -> Done {
    Done::Debit {
        args: crate::hold::ChargeArgs::Amount(reply),
        reply,
        member: None,
    }
}

fn is_large(log: &DoneLog) -> bool {
    matches!(log.0, Repr::Large(_))
}

fn indexed(log: &DoneLog) -> bool {
    matches!(&log.0, Repr::Large(l) if l.index.is_some())
}

#[test]
fn lookups_agree_inline_with_the_filter_and_with_the_index() {
    let mut log = DoneLog::default();
    for n in 0..100u64 {
        log.push(n, &Id::new(format!("d{n}").as_bytes()), &debit(n));
        // Same id, other kind: a separate namespace.
        assert!(log.get(Kind::Hold, format!("d{n}").as_bytes()).is_none());
        assert_eq!(log.check(), Ok(()));
        assert_eq!(log.len(), n as usize + 1);
        if n == 0 {
            assert!(!is_large(&log), "one short record stays inline");
        }
    }
    assert!(indexed(&log));
    for n in 0..100u64 {
        assert_eq!(
            log.get(Kind::Debit, format!("d{n}").as_bytes()),
            Some(debit(n))
        );
    }
    for n in 0..95u64 {
        assert_eq!(log.pop_while(|finished, _| finished <= n), 1);
        assert!(log.get(Kind::Debit, format!("d{n}").as_bytes()).is_none());
        assert_eq!(log.check(), Ok(()));
        assert_eq!(log.front_finished_ms(), Some(n + 1));
    }
    assert!(!indexed(&log), "dropped when short again");
    assert_eq!(log.get(Kind::Debit, b"d99"), Some(debit(99)));
    // The filter was rebuilt from the records left: only their bits.
    let Repr::Large(large) = &log.0 else {
        panic!("five records do not fit inline")
    };
    let expected = (95..100u64).fold(0, |f, n| {
        f | filter_bit(key_hash(Kind::Debit, format!("d{n}").as_bytes()))
    });
    assert_eq!(large.filter, expected);
    // A batch leaves in one call; the cap form sees the length.
    assert_eq!(log.pop_while(|_, len| len > 2), 3);
    assert_eq!(log.len(), 2);
    let bytes = postcard::to_allocvec(&log).unwrap();
    let back: DoneLog = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, log);
    assert_eq!(back.check(), Ok(()));
    // Pruned to one record: the box stays, for the records to come.
    assert_eq!(log.pop_while(|_, len| len > 1), 1);
    assert!(is_large(&log));
    assert_eq!(log.check(), Ok(()));
    assert_eq!(log.get(Kind::Debit, b"d99"), Some(debit(99)));
    assert_eq!(log.pop_while(|_, _| true), 1);
    assert!(log.is_empty());
    assert_eq!(log.front_finished_ms(), None);
}

#[test]
fn stored_form_is_the_sequence_of_records() {
    let records: Vec<DoneRecord> = (0..30u64)
        .map(|n| DoneRecord {
            finished_ms: 1_700_000_000_000 + n,
            id: Id::new(format!("an-id-long-enough-to-be-shared-{n}").as_bytes()),
            done: debit(n << 40),
        })
        .collect();
    let mut log = DoneLog::default();
    for r in &records {
        log.push(r.finished_ms, &r.id, &r.done);
    }
    assert_eq!(
        postcard::to_allocvec(&log).unwrap(),
        postcard::to_allocvec(&records).unwrap()
    );
    let back: DoneLog = postcard::from_bytes(&postcard::to_allocvec(&records).unwrap()).unwrap();
    assert_eq!(back, log);
    assert!(indexed(&back));
}

#[test]
fn a_repeated_id_in_stored_records_is_refused_by_check() {
    let r = DoneRecord {
        finished_ms: 1,
        id: Id::new(b"d"),
        done: debit(1),
    };
    let bytes = postcard::to_allocvec(&vec![r.clone(), r]).unwrap();
    let log: DoneLog = postcard::from_bytes(&bytes).unwrap();
    assert!(log.check().is_err());
}

#[test]
fn a_long_log_pruned_short_gives_its_memory_back() {
    let mut log = DoneLog::default();
    for n in 0..10_000u64 {
        log.push(n, &Id::new(format!("d{n}").as_bytes()), &debit(n));
    }
    let capacity = |log: &DoneLog| match &log.0 {
        Repr::Large(large) => large.bytes.capacity(),
        Repr::Small { .. } => 0,
    };
    assert!(capacity(&log) > 100_000, "{}", capacity(&log));
    assert_eq!(log.pop_while(|finished_ms, _| finished_ms < 9_999), 9_999);
    assert!(
        capacity(&log) <= 4 * SHRINK_FLOOR_BYTES,
        "{}",
        capacity(&log)
    );
    assert_eq!(log.get(Kind::Debit, b"d9999"), Some(debit(9_999)));
    assert_eq!(log.check(), Ok(()));
    // Records turning over one at a time do not shrink and regrow it.
    let before = capacity(&log);
    for n in 10_000..10_100u64 {
        log.push(n, &Id::new(format!("d{n}").as_bytes()), &debit(n));
        log.pop_while(|_, len| len > 1);
        assert_eq!(capacity(&log), before);
    }
}
