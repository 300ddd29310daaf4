//! Pending changes: each record of a window's shard paged once (in the store's order: key
//! order in memory and SQLite, item by item on DynamoDB); the flush cursor; the flush
//! lease; poison items.

use super::{Adapters, read_pages, record};
use crate::job::DeliveryJob;
use crate::message::Refusal;
use crate::poison::PoisonItem;
use crate::ports::LeaseHolder;
use crate::ports::{FlushCursor, Page, ShardPosition};
use crate::record::RecordId;
use crate::testing::{at_ms, lease, pending_records, records_of_shard};
use crate::window::{FlushAssignment, Shard, WindowId};

scenarios![
    shard_pages_hold_each_record_without_a_trailing_empty_page,
    shard_pages_split_a_window_by_the_records_shard,
    pending_cursor_round_trips_and_keeps_unflushed_windows,
    flush_lease_one_flush_at_a_time,
    poison_items_are_kept_until_removed,
];

fn ids(items: &[RecordId]) -> Vec<&str> {
    items.iter().map(RecordId::as_str).collect()
}

fn page_ids(pages: &[Page<RecordId>]) -> Vec<Vec<&str>> {
    pages.iter().map(|p| ids(&p.items)).collect()
}

/// The sizes of the pages and every record they hold, sorted.
fn paged(pages: &[Page<RecordId>]) -> (Vec<usize>, Vec<&str>) {
    let mut all: Vec<&str> = pages.iter().flat_map(|p| ids(&p.items)).collect();
    all.sort_unstable();
    (pages.iter().map(|p| p.items.len()).collect(), all)
}

/// A shard's pages of `limit`, read to the end.
async fn shard_pages(
    a: &Adapters,
    window: WindowId,
    shard: Shard,
    limit: usize,
) -> Vec<Page<RecordId>> {
    read_pages(20, |after| {
        let pending = a.ports.pending.clone();
        async move {
            pending
                .shard_page(window, shard, after.as_deref(), limit)
                .await
        }
    })
    .await
}

async fn shard_pages_hold_each_record_without_a_trailing_empty_page(a: Adapters) {
    let window = WindowId(42);
    let shard = Shard(1);
    // Five records of one shard, and one more marked between two pages.
    let records = records_of_shard(shard, "r", 6);
    let (five, late) = (&records[..5], &records[5]);
    for k in [2, 0, 1, 0, 3, 4] {
        a.ports.pending.mark(window, &five[k]).await.unwrap();
    }
    a.ports.pending.mark(WindowId(43), late).await.unwrap();
    let every = ids(five);
    assert_eq!(
        paged(&shard_pages(&a, window, shard, 2).await),
        (vec![2, 2, 1], every.clone()),
        "pages of two, one entry per record"
    );
    assert_eq!(
        paged(&shard_pages(&a, window, shard, 5).await),
        (vec![5], every.clone()),
        "a full page that ends the shard has no next: no trailing empty page"
    );
    assert_eq!(
        paged(&shard_pages(&a, window, shard, 1).await),
        (vec![1; 5], every.clone()),
        "pages of one: five, the last without next"
    );
    assert_eq!(
        page_ids(&shard_pages(&a, WindowId(44), shard, 3).await),
        [Vec::<&str>::new()],
        "a window with nothing pending: one empty page without next"
    );
    assert_eq!(
        page_ids(&shard_pages(&a, window, Shard(2), 3).await),
        [Vec::<&str>::new()],
        "a shard with nothing pending in a window with records in another: one empty page"
    );
    // Marked together (a stream batch), then again with others: each record once.
    let batch = WindowId(45);
    let marked = records_of_shard(shard, "b", 5);
    a.ports.pending.mark_all(batch, &marked[..4]).await.unwrap();
    a.ports.pending.mark_all(batch, &marked[..4]).await.unwrap();
    a.ports
        .pending
        .mark_all(batch, &[marked[4].clone(), marked[4].clone()])
        .await
        .unwrap();
    assert_eq!(
        paged(&shard_pages(&a, batch, shard, 10).await),
        (vec![5], ids(&marked)),
        "a batch marked again is the same entries"
    );
    // A page position from a page continues after it, whatever was marked since before
    // it: the rest holds every record the first page did not (and may hold the new one).
    let first = a
        .ports
        .pending
        .shard_page(window, shard, None, 2)
        .await
        .unwrap();
    a.ports.pending.mark(window, late).await.unwrap();
    let rest = a
        .ports
        .pending
        .shard_page(window, shard, first.next.as_deref(), 10)
        .await
        .unwrap();
    assert_eq!(rest.next, None);
    let mut seen: Vec<&str> = ids(&first.items)
        .into_iter()
        .chain(ids(&rest.items))
        .filter(|id| *id != late.as_str())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, every, "each record once across the two pages");
}

async fn shard_pages_split_a_window_by_the_records_shard(a: Adapters) {
    let window = WindowId(52);
    let marked: Vec<RecordId> = (0..40).map(|n| record(&format!("r{n:02}"))).collect();
    for batch in marked.chunks(7) {
        a.ports.pending.mark_all(window, batch).await.unwrap();
    }
    a.ports.pending.mark(window, &record("r05")).await.unwrap();
    a.ports
        .pending
        .mark(WindowId(53), &record("other"))
        .await
        .unwrap();
    let mut every = Vec::new();
    for shard in Shard::all() {
        let pages = shard_pages(&a, window, shard, 3).await;
        let (sizes, mut records) = paged(&pages);
        // DynamoDB keeps each batch's records as written: r05, marked by two batches, may
        // come twice (the flush de-duplicates).
        records.dedup();
        assert!(
            sizes.iter().rev().skip(1).all(|n| *n == 3),
            "{shard:?}: full pages but the last: {sizes:?}"
        );
        let mut expected: Vec<&str> = marked
            .iter()
            .filter(|r| Shard::of(r) == shard)
            .map(RecordId::as_str)
            .collect();
        expected.sort_unstable();
        assert_eq!(records, expected, "{shard:?}: its records, nothing else");
        every.extend(records.into_iter().map(str::to_owned));
    }
    assert_eq!(every.len(), marked.len(), "every record in one shard");
}

/// The saved cursors, in assignment-key order (stores list them in their own order).
async fn saved_cursors(a: &Adapters) -> Vec<(FlushAssignment, FlushCursor)> {
    let mut saved = a.ports.pending.cursors().await.unwrap();
    saved.sort_by_key(|(assignment, _)| assignment.key());
    saved
}

async fn pending_cursor_round_trips_and_keeps_unflushed_windows(a: Adapters) {
    let pending = &a.ports.pending;
    let all = FlushAssignment::all();
    assert_eq!(saved_cursors(&a).await, []);
    let shard = Shard(3);
    let records = records_of_shard(shard, "c", 3);
    for window in [4, 5, 6] {
        for record in &records {
            pending.mark(WindowId(window), record).await.unwrap();
        }
    }
    let first = pending
        .shard_page(WindowId(5), shard, None, 2)
        .await
        .unwrap();
    let cursor = FlushCursor {
        window: WindowId(5),
        // A position inside the whole window, as versions before the shard workers saved.
        after: Some("c7".into()),
        shards: vec![
            ShardPosition {
                shard,
                window: None,
                after: first.next.clone(),
                done: false,
            },
            ShardPosition {
                shard: Shard(5),
                window: None,
                after: None,
                done: true,
            },
            ShardPosition {
                shard: Shard(6),
                window: Some(WindowId(9)),
                after: None,
                done: false,
            },
        ],
        saved_at: Some(at_ms(1_000)),
    };
    pending.save_cursor(&all, &cursor).await.unwrap();
    assert_eq!(saved_cursors(&a).await, [(all.clone(), cursor.clone())]);
    // Windows before the cursor may be dropped (they expire); the cursor's and later stay.
    for window in [5, 6] {
        let mut kept = pending_records(pending.as_ref(), WindowId(window))
            .await
            .unwrap();
        kept.sort_unstable();
        assert_eq!(kept, records, "window {window} is kept whole");
    }
    let saved = saved_cursors(&a).await[0].1.shard(shard).after;
    let rest = pending
        .shard_page(WindowId(5), shard, saved.as_deref(), 10)
        .await
        .unwrap();
    let mut both: Vec<&str> = ids(&first.items)
        .into_iter()
        .chain(ids(&rest.items))
        .collect();
    both.sort_unstable();
    assert_eq!(
        (first.items.len(), both),
        (2, ids(&records)),
        "the saved position still continues"
    );
    // A part of the shards keeps its own cursor beside the whole flush's, and moving it
    // drops no window another part may still read.
    let part = FlushAssignment::of([shard.0.into()]).unwrap();
    let part_cursor = FlushCursor {
        saved_at: Some(at_ms(2_000)),
        ..FlushCursor::start_of(WindowId(7))
    };
    pending.save_cursor(&part, &part_cursor).await.unwrap();
    assert_eq!(
        saved_cursors(&a).await,
        [(all.clone(), cursor), (part, part_cursor)]
    );
    let mut kept = pending_records(pending.as_ref(), WindowId(5))
        .await
        .unwrap();
    kept.sort_unstable();
    assert_eq!(kept, records, "a part's cursor drops nothing");
    let moved = FlushCursor::start_of(WindowId(6));
    pending.save_cursor(&all, &moved).await.unwrap();
    assert_eq!(
        saved_cursors(&a).await.first(),
        Some(&(all, moved)),
        "replaced"
    );
}

async fn flush_lease_one_flush_at_a_time(a: Adapters) {
    let pending = &a.ports.pending;
    let all = FlushAssignment::all();
    assert!(
        pending
            .lease_flush(&all, &lease("a", 5_000), at_ms(1_000))
            .await
            .unwrap()
    );
    assert!(
        !pending
            .lease_flush(&all, &lease("b", 6_000), at_ms(2_000))
            .await
            .unwrap(),
        "held by a until 5 000"
    );
    assert!(
        !pending
            .lease_flush(&all, &lease("a", 6_000), at_ms(2_000))
            .await
            .unwrap(),
        "a held lease is not taken again, even by its holder"
    );
    pending
        .release_flush(&all, &LeaseHolder::new("b"))
        .await
        .unwrap();
    assert!(
        !pending
            .lease_flush(&all, &lease("b", 9_000), at_ms(4_999))
            .await
            .unwrap(),
        "only the holder gives it back"
    );
    assert!(
        pending
            .lease_flush(&all, &lease("b", 9_000), at_ms(5_000))
            .await
            .unwrap(),
        "expired (a crashed holder): taken over"
    );
    pending
        .release_flush(&all, &LeaseHolder::new("a"))
        .await
        .unwrap();
    assert!(
        !pending
            .lease_flush(&all, &lease("c", 10_000), at_ms(6_000))
            .await
            .unwrap(),
        "the old holder's late release leaves b's lease alone"
    );
    pending
        .release_flush(&all, &LeaseHolder::new("b"))
        .await
        .unwrap();
    assert!(
        pending
            .lease_flush(&all, &lease("c", 10_000), at_ms(6_000))
            .await
            .unwrap(),
        "released by its holder: free at once"
    );
    pending
        .save_cursor(&all, &FlushCursor::start_of(WindowId(1)))
        .await
        .unwrap();
    assert!(
        !pending
            .lease_flush(&all, &lease("d", 11_000), at_ms(7_000))
            .await
            .unwrap(),
        "saving the cursor does not free the lease"
    );
    let part = FlushAssignment::of([2, 3]).unwrap();
    assert!(
        pending
            .lease_flush(&part, &lease("e", 11_000), at_ms(7_000))
            .await
            .unwrap(),
        "a part of the shards has a lease of its own"
    );
    assert!(
        !pending
            .lease_flush(&part, &lease("f", 11_000), at_ms(7_000))
            .await
            .unwrap(),
        "held by e"
    );
    pending
        .release_flush(&all, &LeaseHolder::new("d"))
        .await
        .unwrap();
    pending
        .release_flush(&part, &LeaseHolder::new("e"))
        .await
        .unwrap();
    assert!(
        pending
            .lease_flush(&part, &lease("f", 11_000), at_ms(7_000))
            .await
            .unwrap(),
        "released by e"
    );
}

fn poison(window: u64, id: &str) -> PoisonItem {
    let person = serde_json::Map::new();
    let job = DeliveryJob::for_application(
        &"app-1".parse().unwrap(),
        &record(id),
        person,
        WindowId(window),
        crate::testing::at("2026-11-26T10:00:00.000Z"),
    );
    PoisonItem::refused(
        &record(id),
        &job,
        WindowId(window),
        Refusal::TooLarge {
            bytes: 300_000,
            limit: 262_144,
        },
        crate::testing::at("2026-11-26T10:05:00.000Z"),
    )
}

async fn poison_items_are_kept_until_removed(a: Adapters) {
    let pending = &a.ports.pending;
    assert!(pending.poison_items().await.unwrap().is_empty());
    let (late, early) = (poison(10, "r1"), poison(9, "r2"));
    pending.set_aside(&late).await.unwrap();
    pending.set_aside(&early).await.unwrap();
    pending.set_aside(&late).await.unwrap();
    assert_eq!(
        pending.poison_items().await.unwrap(),
        vec![early.clone(), late.clone()],
        "each once (set aside twice), oldest window first"
    );
    assert!(pending.remove_poison(&early.id()).await.unwrap());
    assert!(
        !pending.remove_poison(&early.id()).await.unwrap(),
        "removed already"
    );
    assert_eq!(pending.poison_items().await.unwrap(), vec![late]);
}
