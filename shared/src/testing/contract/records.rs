//! The records table: persons by id, and the consented ones read page by page.

use super::{Adapters, person, read_pages, record};
use crate::ids::ApplicationId;
use crate::ports::{Page, Person};
use crate::record::RecordId;
use serde_json::json;

scenarios![
    persons_are_read_by_id,
    consented_persons_are_each_read_once,
    consented_pages_may_be_empty_with_next,
];

async fn persons_are_read_by_id(a: Adapters) {
    let id = record("0000-0002-1825-0097");
    let josiah =
        person(json!({"firstName": "Josiah", "consents": {"app-1": ["members.read_name"]}}));
    a.harness.put_person(&id, &josiah).await;
    let mut expected = josiah.clone();
    expected.insert("id".into(), id.as_str().into());
    assert_eq!(
        a.ports.records.get_person(&id).await.unwrap(),
        Some(expected),
        "the person as written, with its id"
    );
    assert_eq!(
        a.ports
            .records
            .get_person(&record("0000-0002-1825-0098"))
            .await
            .unwrap(),
        None
    );
}

/// Every page of persons consented to `application`, `limit` records examined per page.
async fn consented(a: &Adapters, application: &str, limit: usize) -> Vec<Page<(RecordId, Person)>> {
    read_pages(30, |after| {
        let records = a.ports.records.clone();
        let application: ApplicationId = application.parse().unwrap();
        async move {
            records
                .scan_consented(&application, after.as_deref(), limit)
                .await
        }
    })
    .await
}

fn read_ids(pages: &[Page<(RecordId, Person)>]) -> Vec<String> {
    let mut ids: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|(id, _)| id.to_string()))
        .collect();
    ids.sort();
    ids
}

async fn consented_persons_are_each_read_once(a: Adapters) {
    for i in 0..7 {
        let consents = match i % 3 {
            0 => json!({"app-1": ["members.email"]}),
            1 => json!({"app-2": []}),
            _ => json!({"app-1": [], "app-2": ["members.email"]}),
        };
        let p = person(json!({"email": format!("{i}@example.org"), "consents": consents}));
        a.harness.put_person(&record(&format!("p-{i}")), &p).await;
    }
    a.harness
        .put_person(
            &record("p-none"),
            &person(json!({"email": "none@example.org"})),
        )
        .await;
    for limit in [1, 2, 3, 8, 20] {
        let pages = consented(&a, "app-1", limit).await;
        assert_eq!(
            read_ids(&pages),
            ["p-0", "p-2", "p-3", "p-5", "p-6"],
            "pages of {limit}: each consented person once, no other"
        );
        assert!(
            pages.iter().all(|p| p.items.len() <= limit),
            "pages of {limit}: a page holds at most {limit}"
        );
        // Eight records, `limit` examined per page; the last page may come back empty.
        let most = 8usize.div_ceil(limit) + 1;
        assert!(
            pages.len() <= most,
            "pages of {limit}: {} pages, at most {most}",
            pages.len()
        );
        for page in &pages {
            for (id, p) in &page.items {
                assert_eq!(
                    p.get("id").and_then(|v| v.as_str()),
                    Some(id.as_str()),
                    "the person with its id"
                );
            }
        }
    }
    assert!(read_ids(&consented(&a, "app-3", 3).await).is_empty());
}

async fn consented_pages_may_be_empty_with_next(a: Adapters) {
    for i in 0..5 {
        let consents = if i == 3 {
            json!({"app-1": ["members.email"]})
        } else {
            json!({"app-2": ["members.email"]})
        };
        let p = person(json!({"consents": consents}));
        a.harness.put_person(&record(&format!("p-{i}")), &p).await;
    }
    let pages = consented(&a, "app-1", 1).await;
    assert_eq!(read_ids(&pages), ["p-3"]);
    let empty_with_next = pages
        .iter()
        .filter(|p| p.items.is_empty() && p.next.is_some())
        .count();
    assert!(
        empty_with_next >= 3,
        "one record examined per page: the pages of the other persons are empty and go on \
         ({empty_with_next} of {} pages)",
        pages.len()
    );
}
